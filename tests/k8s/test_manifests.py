"""The Kubernetes manifests in k8s/: the RayService validates against KubeRay v1.7.0's own
schema with unknown fields refused, holds exactly configs/cluster.yaml as a valid Serve
config, takes secrets only from Secrets, and pins the Ray of the image and of pyproject.

The Redis objects (PersistentVolumeClaim, Deployment, Service) are checked here for what
the RayService relies on; test_core_objects.py validates them against Kubernetes' schemas.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from ray.serve.schema import DeploymentSchema, ServeDeploySchema

from serve_app.settings import AppArgs
from tests.k8s.crd import RAYSERVICE_CRD, node_groups, schema_errors

ROOT = Path(__file__).resolve().parents[2]
RAYSERVICE = ROOT / "k8s" / "rayservice.yaml"
REDIS = ROOT / "k8s" / "redis.yaml"
CLUSTER_CONFIG = ROOT / "configs" / "cluster.yaml"
DOCKERFILE = ROOT / "Dockerfile"

# RayServiceUpgradeType in KubeRay's Go API; the CRD declares the field a plain string.
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}
# Secrets the application reads from the environment besides those named in `args`:
# S3 credentials, as any AWS client reads them.
AWS_SECRETS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
GPU_DEPLOYMENTS = {"Preprocessor"}


def rayservice() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RAYSERVICE.read_text())
    return document


def cluster_spec() -> dict[str, Any]:
    spec: dict[str, Any] = rayservice()["spec"]["rayClusterConfig"]
    return spec


def groups() -> dict[str, dict[str, Any]]:
    """Every node group by name, the head as `head`."""
    return node_groups(cluster_spec())


def ray_containers() -> list[dict[str, Any]]:
    """The Ray container of every group (the first, as KubeRay takes it)."""
    return [group["template"]["spec"]["containers"][0] for group in groups().values()]


def serve_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    return config


def errors(document: dict[str, Any], *, strict_fields: bool = True) -> list[str]:
    return schema_errors(RAYSERVICE_CRD, document, strict_fields=strict_fields)


def test_rayservice_is_valid_for_kuberay_strictly() -> None:
    document = rayservice()
    assert (document["apiVersion"], document["kind"]) == ("ray.io/v1", "RayService")
    assert errors(document) == []


@pytest.mark.parametrize(
    ("path", "misspelled"),
    [
        (("spec",), "upgradeStratgy"),
        (("spec", "rayClusterConfig"), "enableInTreeAutoscalling"),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 1), "minReplica"),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 1, "template", "spec"), "toleration"),
        (
            ("spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0),
            "envv",
        ),
    ],
)
def test_a_misspelled_field_fails_only_in_strict_validation(
    path: tuple[str | int, ...], misspelled: str
) -> None:
    document = copy.deepcopy(rayservice())
    parent: Any = document
    for step in path:
        parent = parent[step]
    parent[misspelled] = parent.get(misspelled[:-1], 1)
    assert errors(document, strict_fields=False) == []  # what a plain `kubectl apply` lets by
    (error,) = errors(document)
    assert misspelled in error


def test_upgrade_strategy_is_one_kuberay_knows() -> None:
    assert rayservice()["spec"]["upgradeStrategy"]["type"] in UPGRADE_TYPES


def test_ray_token_auth_is_on_with_the_token_kuberay_makes() -> None:
    """Ray 2.60 asks for a token by default; KubeRay must then hold it too, or it cannot
    submit the Serve config. No container sets the mode or token itself."""
    assert cluster_spec()["authOptions"] == {"mode": "token"}
    for name, group in groups().items():
        for container in group["template"]["spec"]["containers"]:
            variables = {variable["name"] for variable in container.get("env", [])}
            assert not variables & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, name


def test_head_takes_no_work_and_every_group_writes_its_start_params() -> None:
    every = groups()
    assert every["head"]["rayStartParams"] == {"num-cpus": "0"}
    for name, group in every.items():
        assert isinstance(group.get("rayStartParams"), dict), name


def test_gpu_group_scales_to_zero_on_gpu_nodes_and_cpu_group_has_none() -> None:
    spec = cluster_spec()
    assert spec["enableInTreeAutoscaling"] is True
    gpu, cpu = groups()["gpu"], groups()["cpu"]
    assert gpu["minReplicas"] == 0
    pod = gpu["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_workers_have_time_to_drain_on_sigterm() -> None:
    """Ray drains a node on SIGTERM; Serve's replicas get graceful_shutdown_timeout_s
    (20 s by default) and the pod must outlive that with room for the drain itself."""
    shutdown = max(
        deployment.get("graceful_shutdown_timeout_s", 20.0)
        for deployment in serve_config()["applications"][0]["deployments"]
    )
    for name, group in groups().items():
        if name != "head":
            assert group["template"]["spec"]["terminationGracePeriodSeconds"] >= 3 * shutdown


def test_serve_config_is_exactly_the_cluster_config() -> None:
    assert serve_config() == yaml.safe_load(CLUSTER_CONFIG.read_text())


def test_serve_config_is_valid_for_ray_serve_and_the_application() -> None:
    schema = ServeDeploySchema.model_validate(serve_config())
    (application,) = schema.applications
    AppArgs.model_validate(application.args)


def test_every_deployment_key_is_a_serve_option() -> None:
    """ServeDeploySchema ignores unknown deployment keys: a typo would pass silently."""
    known = set(DeploymentSchema.model_fields)
    for application in serve_config()["applications"]:
        for deployment in application["deployments"]:
            assert set(deployment) <= known, deployment["name"]
        assert set(application["args"].get("separators", {})) <= known


def test_a_misspelled_deployment_key_is_caught() -> None:
    config = serve_config()
    config["applications"][0]["deployments"][0]["autoscalling_config"] = {}
    ServeDeploySchema.model_validate(config)  # Serve's own schema lets it by
    (deployment,) = [
        each for each in config["applications"][0]["deployments"] if "autoscalling_config" in each
    ]
    assert not set(deployment) <= set(DeploymentSchema.model_fields)


def test_gpu_deployments_scale_to_zero() -> None:
    (application,) = serve_config()["applications"]
    assert application["args"]["separators"]["autoscaling_config"]["min_replicas"] == 0
    for deployment in application["deployments"]:
        if deployment["name"] in GPU_DEPLOYMENTS or deployment["name"].startswith("Separator_"):
            assert deployment["autoscaling_config"]["min_replicas"] == 0, deployment["name"]


def secret_variables() -> set[str]:
    """The environment variables the application reads secrets from."""
    (application,) = serve_config()["applications"]
    args = AppArgs.model_validate(application["args"])
    named = {args.auth.keys_env, args.webhooks.secret_env, args.database_url_env}
    assert None not in named, "a secret is not read from the environment"
    return {name for name in named if name} | AWS_SECRETS


def test_secrets_come_only_from_kubernetes_secrets() -> None:
    (application,) = serve_config()["applications"]
    args = application["args"]
    assert "database_url" not in args
    assert "secret" not in args.get("webhooks", {})
    assert "keys" not in args.get("auth", {})
    for container in ray_containers():
        env = {variable["name"]: variable for variable in container["env"]}
        for name in secret_variables():
            assert "value" not in env[name], name
            assert env[name]["valueFrom"]["secretKeyRef"]["name"], name
    password = cluster_spec()["gcsFaultToleranceOptions"]["redisPassword"]
    assert set(password) == {"valueFrom"}
    assert set(password["valueFrom"]) == {"secretKeyRef"}


def redis_objects() -> dict[str, dict[str, Any]]:
    return {document["kind"]: document for document in yaml.safe_load_all(REDIS.read_text())}


def test_redis_is_where_the_gcs_looks_with_the_same_password() -> None:
    objects = redis_objects()
    assert set(objects) == {"PersistentVolumeClaim", "Deployment", "Service"}
    service, deployment = objects["Service"], objects["Deployment"]
    options = cluster_spec()["gcsFaultToleranceOptions"]
    host, _, port = options["redisAddress"].partition(":")
    assert host == service["metadata"]["name"]
    assert int(port) in {each["port"] for each in service["spec"]["ports"]}
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= labels
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels
    (container,) = pod["spec"]["containers"]
    (password,) = [each for each in container["env"] if each["name"] == "REDIS_PASSWORD"]
    assert password["valueFrom"] == options["redisPassword"]["valueFrom"]
    assert "$(REDIS_PASSWORD)" in container["args"]
    (claim,) = pod["spec"]["volumes"]
    assert (
        claim["persistentVolumeClaim"]["claimName"]
        == objects["PersistentVolumeClaim"]["metadata"]["name"]
    )


def dockerfile_args() -> dict[str, str]:
    """The default of every `ARG NAME=value` in the Dockerfile."""
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE))


def test_image_ray_and_rayservice_ray_and_pyproject_ray_agree() -> None:
    ray_version = cluster_spec()["rayVersion"]
    arguments = dockerfile_args()
    assert arguments["RAY_VERSION"] == ray_version
    assert re.search(
        r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py\$\{PYTHON_TAG\}-gpu",
        DOCKERFILE.read_text(),
        flags=re.MULTILINE,
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (ray,) = [
        Requirement(each) for each in project["dependencies"] if Requirement(each).name == "ray"
    ]
    assert ray.specifier.contains(ray_version)
    # The pin is one minor series (>=2.60,<2.61): the image's release is that series.
    (lower,) = [each.version for each in ray.specifier if each.operator == ">="]
    assert Version(ray_version).release[:2] == Version(lower).release[:2]
    python = arguments["PYTHON_TAG"]  # "311": the image's Python, one the project supports
    assert SpecifierSet(project["requires-python"]).contains(f"{python[0]}.{python[1:]}")
