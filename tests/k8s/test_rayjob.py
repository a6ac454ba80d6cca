"""k8s/rayjob-batch.yaml, the batch run as a KubeRay RayJob: valid against KubeRay v1.7.0's
RayJob schema with unknown fields refused, retried safely and cleaned up after, on the
RayService's image and Ray, secrets only from Secrets, a GPU group from zero, and an
entrypoint that runs `python -m serve_app.batch` with what the cluster provides.

Its pod templates are validated as core/v1 PodTemplateSpecs with every other KubeRay
object's in test_core_objects.py; the last test here checks that they are among them.
"""

from __future__ import annotations

import argparse
import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.batch.cli import build_parser
from tests.k8s.crd import RAYJOB_CRD, node_groups, schema_errors
from tests.k8s.test_core_objects import as_pod_template, problems, ray_pod_templates
from tests.k8s.test_manifests import cluster_spec as rayservice_cluster_spec

ROOT = Path(__file__).resolve().parents[2]
RAYJOB = ROOT / "k8s" / "rayjob-batch.yaml"

# RayJobSubmissionMode in KubeRay's Go API; the CRD declares the field a plain string.
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
# Fields of K8sJobMode's submitter Job, which SidecarMode has no use for.
SUBMITTER_FIELDS = {"submitterPodTemplate", "submitterConfig"}
# S3 credentials, as any AWS client reads them, and the Secret keys README step 2 creates.
AWS_SECRETS = {
    "AWS_ACCESS_KEY_ID": ("stemsplit-secrets", "aws-access-key-id"),
    "AWS_SECRET_ACCESS_KEY": ("stemsplit-secrets", "aws-secret-access-key"),
}
# An environment variable so named holds a secret and must come from a Secret.
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|DATABASE_URL")
BATCH_COMMAND = ["python", "-m", "serve_app.batch"]


def rayjob() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RAYJOB.read_text())
    return document


def cluster_spec() -> dict[str, Any]:
    spec: dict[str, Any] = rayjob()["spec"]["rayClusterSpec"]
    return spec


def groups() -> dict[str, dict[str, Any]]:
    """Every node group by name, the head as `head`."""
    return node_groups(cluster_spec())


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container and init container of every node group of a RayCluster spec."""
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", ())]
    return [
        container
        for group in groups
        for kind in ("initContainers", "containers")
        for container in group["template"]["spec"].get(kind, ())
    ]


def errors(document: dict[str, Any], *, strict_fields: bool = True) -> list[str]:
    return schema_errors(RAYJOB_CRD, document, strict_fields=strict_fields)


def test_rayjob_is_valid_for_kuberay_strictly() -> None:
    document = rayjob()
    assert (document["apiVersion"], document["kind"]) == ("ray.io/v1", "RayJob")
    assert errors(document) == []


@pytest.mark.parametrize(
    ("path", "misspelled"),
    [
        (("spec",), "ttlSecondAfterFinished"),
        (("spec",), "backofLimit"),
        (("spec", "rayClusterSpec"), "enableInTreeAutoscalling"),
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0), "minReplica"),
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec"), "toleration"),
        (("spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0), "envv"),
    ],
)
def test_a_misspelled_field_fails_only_in_strict_validation(
    path: tuple[str | int, ...], misspelled: str
) -> None:
    document = copy.deepcopy(rayjob())
    parent: Any = document
    for step in path:
        parent = parent[step]
    parent[misspelled] = parent.get(misspelled[:-1], 1)
    assert errors(document, strict_fields=False) == []  # what a plain `kubectl apply` lets by
    (error,) = errors(document)
    assert misspelled in error


def test_sidecar_submission_with_a_head_that_is_not_restarted() -> None:
    """SidecarMode runs the submitter in the head pod; KubeRay wants that pod's
    restartPolicy Never, and the submitter Job's fields would have no effect."""
    spec = rayjob()["spec"]
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert spec["submissionMode"] == "SidecarMode"
    assert groups()["head"]["template"]["spec"]["restartPolicy"] == "Never"
    assert not set(spec) & SUBMITTER_FIELDS
    assert "clusterSelector" not in spec  # the job starts its own cluster


def test_a_failed_attempt_is_retried_and_the_cluster_goes_when_the_job_ends() -> None:
    """Retries are safe because the command resumes from its done markers; the deadline
    and the cluster's deletion keep a stuck or finished job from holding GPU nodes."""
    spec = rayjob()["spec"]
    assert spec["backoffLimit"] > 0
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0


def test_image_and_ray_version_are_the_rayservices() -> None:
    service = rayservice_cluster_spec()
    (image,) = {container["image"] for container in containers(service)}
    assert {container["image"] for container in containers(cluster_spec())} == {image}
    assert cluster_spec()["rayVersion"] == service["rayVersion"]


def test_ray_token_auth_is_on_with_the_token_kuberay_makes() -> None:
    assert cluster_spec()["authOptions"] == {"mode": "token"}
    for container in containers(cluster_spec()):
        variables = {variable["name"] for variable in container.get("env", [])}
        assert not variables & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, container["name"]


def environment_variables(node: Any) -> list[dict[str, Any]]:
    """Every `env` entry anywhere under `node`."""
    if isinstance(node, list):
        return [variable for each in node for variable in environment_variables(each)]
    if not isinstance(node, dict):
        return []
    found = [variable for each in node.values() for variable in environment_variables(each)]
    return found + list(node.get("env", ()))


def test_secrets_come_only_from_secret_key_refs() -> None:
    document = rayjob()
    for variable in environment_variables(document):
        if SECRET_NAME.search(variable["name"]):
            assert set(variable) == {"name", "valueFrom"}, variable["name"]
            assert set(variable["valueFrom"]) == {"secretKeyRef"}, variable["name"]
    assert "runtimeEnvYAML" not in document["spec"]  # env_vars there would be inline
    for name, group in groups().items():
        (ray_container, *_) = group["template"]["spec"]["containers"]
        env = {variable["name"]: variable for variable in ray_container["env"]}
        for aws_name, (secret, key) in AWS_SECRETS.items():
            reference = env[aws_name]["valueFrom"]["secretKeyRef"]
            assert (reference["name"], reference["key"]) == (secret, key), name


def test_head_takes_no_work_and_every_group_writes_its_start_params() -> None:
    every = groups()
    assert every["head"]["rayStartParams"] == {"num-cpus": "0"}
    for name, group in every.items():
        assert isinstance(group.get("rayStartParams"), dict), name


def test_gpu_group_scales_from_zero_on_gpu_nodes() -> None:
    spec = cluster_spec()
    assert spec["enableInTreeAutoscaling"] is True
    assert set(groups()) == {"head", "gpu"}
    gpu = groups()["gpu"]
    assert gpu["minReplicas"] == 0
    assert gpu["replicas"] == 0
    assert gpu["maxReplicas"] > 0
    pod = gpu["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]


def batch_command() -> argparse.Namespace:
    """The entrypoint's arguments, as the batch command itself parses them."""
    argv = shlex.split(rayjob()["spec"]["entrypoint"])
    assert argv[: len(BATCH_COMMAND)] == BATCH_COMMAND
    return build_parser().parse_args(argv[len(BATCH_COMMAND) :])


def test_entrypoint_runs_the_batch_command_on_s3() -> None:
    args = batch_command()
    assert args.input.startswith("s3://")
    assert str(args.output).startswith("s3://")
    assert str(args.output).rstrip("/") != args.input.rstrip("/")
    assert args.stems


def test_entrypoint_asks_for_what_the_gpu_group_holds() -> None:
    """The actor pool starts with one actor (`initial_size` is MIN, at least 1), whose GPU
    request makes Ray's autoscaler add the first GPU pod, and grows to one actor per GPU
    of the group at most; `--model-dir` is the folder the init container fills and the
    worker mounts."""
    args = batch_command()
    gpu = groups()["gpu"]
    pod = gpu["template"]["spec"]
    pod_gpus = int(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert args.gpus_per_worker == 1
    assert args.workers.min_size == 1
    assert args.workers.max_size == gpu["maxReplicas"] * pod_gpus
    (mount,) = [each for each in pod["containers"][0]["volumeMounts"] if each["name"] == "models"]
    assert mount["mountPath"] == str(args.model_dir)
    (fetch,) = pod["initContainers"]
    command = fetch["command"]
    assert command[command.index("--model-dir") + 1] == str(args.model_dir)


def test_the_rayjobs_pod_templates_are_valid_pod_template_specs() -> None:
    """test_core_objects validates every KubeRay pod template; these are among them."""
    name = f"{RAYJOB.name}:RayJob/{rayjob()['metadata']['name']}"
    templates = dict(ray_pod_templates())
    assert {f"{name}/{group}" for group in groups()} <= set(templates)
    for group in groups():
        assert problems(as_pod_template(templates[f"{name}/{group}"])) == []
