"""The core Kubernetes objects of k8s/ against Kubernetes' own JSON schemas, with unknown
fields refused (kubernetes-validate's bundled `-strict` schemas, as `kubectl apply
--validate=strict` refuses them): every document of every k8s/*.yaml that is not a KubeRay
object, and the pod templates of every KubeRay node group as core/v1 PodTemplateSpecs
(the CRD carries no strict pod schema of its own). The KubeRay objects themselves are
validated against their CRDs in test_manifests.py and test_rayjob.py.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "k8s").glob("*.yaml"))
README = ROOT / "README.md"
# The newest Kubernetes whose schemas kubernetes-validate 1.37 bundles: the manifests are
# meant for a current cluster, so an API version or field a current API server has
# removed must fail here. (A field only newer clusters know would pass: the manifests
# keep to long-stable ones.)
KUBERNETES_VERSION = "1.37"
KUBERAY_GROUP = "ray.io"
# The KubeRay kinds whose CRD the tests hold (tests/k8s/crds) and validate.
KUBERAY_KINDS = {"RayService", "RayJob"}


def manifest_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every document of every k8s/*.yaml with a name `file:Kind/name`."""
    documents = []
    for manifest in MANIFESTS:
        for document in yaml.safe_load_all(manifest.read_text()):
            if document:
                name = f"{manifest.name}:{document['kind']}/{document['metadata']['name']}"
                documents.append((name, document))
    return documents


def is_kuberay(document: dict[str, Any]) -> bool:
    group, _, _ = document["apiVersion"].rpartition("/")
    return bool(group == KUBERAY_GROUP)


CORE_OBJECTS = [(name, each) for name, each in manifest_documents() if not is_kuberay(each)]
KUBERAY_OBJECTS = [(name, each) for name, each in manifest_documents() if is_kuberay(each)]


def ray_cluster_spec(document: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec inside a RayService, a RayJob or a RayCluster."""
    spec: dict[str, Any] = document["spec"]
    kind = document["kind"]
    if kind == "RayService":
        spec = spec["rayClusterConfig"]
    elif kind == "RayJob":
        spec = spec["rayClusterSpec"]
    return spec


def ray_pod_templates() -> list[tuple[str, dict[str, Any]]]:
    """The pod template of every node group of every KubeRay object, by `object/group`."""
    templates = []
    for name, document in KUBERAY_OBJECTS:
        spec = ray_cluster_spec(document)
        templates.append((f"{name}/head", spec["headGroupSpec"]["template"]))
        for group in spec.get("workerGroupSpecs", ()):
            templates.append((f"{name}/{group['groupName']}", group["template"]))
    return templates


def problems(document: dict[str, Any], *, strict: bool = True) -> list[str]:
    """What Kubernetes' schema for the document's kind finds wrong with it (the first)."""
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=strict)
    except kubernetes_validate.ValidationError as error:
        return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"]
    return []


def as_pod_template(template: dict[str, Any]) -> dict[str, Any]:
    """A core/v1 PodTemplate holding `template`: the kind whose schema is a PodTemplateSpec."""
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "t"},
        "template": template,
    }


def test_the_manifests_hold_core_objects_and_kuberay_objects_the_tests_know() -> None:
    assert {each["kind"] for _, each in CORE_OBJECTS} >= {
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
    }
    assert {each["kind"] for _, each in KUBERAY_OBJECTS} <= KUBERAY_KINDS


@pytest.mark.parametrize(
    "document", [each for _, each in CORE_OBJECTS], ids=[name for name, _ in CORE_OBJECTS]
)
def test_every_core_object_is_valid_for_kubernetes_strictly(document: dict[str, Any]) -> None:
    assert problems(document) == []


@pytest.mark.parametrize(
    "template",
    [each for _, each in ray_pod_templates()],
    ids=[name for name, _ in ray_pod_templates()],
)
def test_every_ray_pod_template_is_a_valid_pod_template_spec(template: dict[str, Any]) -> None:
    assert problems(as_pod_template(template)) == []


def misspelled(document: dict[str, Any], path: tuple[str | int, ...], field: str) -> dict[str, Any]:
    """A copy of `document` with `field`, a misspelling, added where `path` leads."""
    changed = copy.deepcopy(document)
    parent: Any = changed
    for step in path:
        parent = parent[step]
    parent[field] = "x"
    return changed


def assert_only_strict_refuses(document: dict[str, Any], field: str) -> None:
    assert problems(document, strict=False) == []  # what a plain `kubectl apply` lets by
    (problem,) = problems(document)
    assert field in problem


@pytest.mark.parametrize(
    "document", [each for _, each in CORE_OBJECTS], ids=[name for name, _ in CORE_OBJECTS]
)
def test_a_misspelled_field_fails_in_every_core_object(document: dict[str, Any]) -> None:
    assert_only_strict_refuses(misspelled(document, ("metadata",), "lables"), "lables")
    if "containers" in document.get("spec", {}).get("template", {}).get("spec", {}):
        container = ("spec", "template", "spec", "containers", 0)
        assert_only_strict_refuses(
            misspelled(document, container, "imagePulPolicy"), "imagePulPolicy"
        )


def redis_deployment() -> dict[str, Any]:
    (deployment,) = [each for name, each in CORE_OBJECTS if each["kind"] == "Deployment"]
    return deployment


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("spec",), "replica"),
        (("spec", "template", "spec"), "securityContex"),
        (("spec", "template", "spec", "containers", 0), "envv"),
        (("spec", "template", "spec", "containers", 0, "resources"), "limit"),
    ],
)
def test_a_misspelled_field_fails_in_a_deployment(path: tuple[str | int, ...], field: str) -> None:
    assert_only_strict_refuses(misspelled(redis_deployment(), path, field), field)


def job_around_a_manifest_pod() -> dict[str, Any]:
    """A batch/v1 Job running the Redis Deployment's pod once: Job's own fields tested
    with a pod the manifests hold."""
    template = copy.deepcopy(redis_deployment()["spec"]["template"])
    template["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": template},
    }


def test_a_misspelled_field_fails_in_a_job() -> None:
    job = job_around_a_manifest_pod()
    assert problems(job) == []
    assert_only_strict_refuses(misspelled(job, ("spec",), "backofLimit"), "backofLimit")
    container = ("spec", "template", "spec", "containers", 0)
    assert_only_strict_refuses(misspelled(job, container, "comand"), "comand")


def test_a_misspelled_field_fails_in_a_ray_pod_template() -> None:
    (_, template), *_ = ray_pod_templates()
    field = "terminationGracePeriodSecond"
    assert_only_strict_refuses(as_pod_template(misspelled(template, ("spec",), field)), field)


def secret_references(node: Any) -> set[tuple[str, str]]:
    """Every (Secret, key) a `secretKeyRef` under `node` names."""
    if isinstance(node, list):
        return set().union(*map(secret_references, node))
    if not isinstance(node, dict):
        return set()
    found = set().union(*map(secret_references, node.values()))
    if "secretKeyRef" in node:
        found.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
    return found


def documented_secrets() -> set[tuple[str, str]]:
    """Every (Secret, key) the README's `kubectl create secret generic` commands create."""
    created = set()
    for command in README.read_text().split("kubectl create secret generic ")[1:]:
        command = command.split("kubectl ")[0]
        name = command.split()[0]
        created |= {(name, key) for key in re.findall(r"--from-literal=([\w.-]+)=", command)}
    return created


def test_every_secret_the_manifests_read_is_one_the_readme_creates() -> None:
    """The Secrets are created with kubectl (README, "Deploy on Kubernetes"), never kept in
    k8s/: a key named in a manifest and missing there leaves a pod that cannot start."""
    assert {each["kind"] for _, each in CORE_OBJECTS}.isdisjoint({"Secret"})
    read = set().union(*(secret_references(each) for _, each in manifest_documents()))
    assert read
    assert read <= documented_secrets()
