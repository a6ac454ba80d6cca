"""k8s/migrate-job.yaml: the schema migration Job runs `python -m serve_app migrate` on the
Serve config the Dockerfile puts in the image, in the RayService's image, as a non-root
user, with the database URL from the same Secret the RayService reads it from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from serve_app.settings import AppArgs
from tests.k8s.test_manifests import CLUSTER_CONFIG, DOCKERFILE, ray_containers

ROOT = Path(__file__).resolve().parents[2]
MIGRATE_JOB = ROOT / "k8s" / "migrate-job.yaml"


def job() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(MIGRATE_JOB.read_text())
    return document


def container() -> dict[str, Any]:
    (only,) = job()["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = only
    return found


def image_config_path() -> str:
    """Where the Dockerfile copies configs/cluster.yaml in the image."""
    copied = re.search(r"^COPY .*configs/cluster\.yaml (\S+)$", DOCKERFILE.read_text(), re.M)
    assert copied, "the Dockerfile does not put configs/cluster.yaml in the image"
    return copied.group(1)


def test_the_job_migrates_with_the_image_config_in_the_rayservice_image() -> None:
    assert job()["apiVersion"] == "batch/v1" and job()["kind"] == "Job"
    assert container()["command"] == [
        "python",
        "-m",
        "serve_app",
        "migrate",
        image_config_path(),
    ]
    assert {each["image"] for each in ray_containers()} == {container()["image"]}


def test_the_database_url_comes_from_the_rayservice_secret() -> None:
    (application,) = yaml.safe_load(CLUSTER_CONFIG.read_text())["applications"]
    variable = AppArgs.model_validate(application["args"]).database_url_env
    assert variable
    env = {each["name"]: each for each in container()["env"]}
    assert "value" not in env[variable]
    reference = env[variable]["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "stemsplit-secrets", "key": "database-url"}
    for ray_container in ray_containers():
        ray_env = {each["name"]: each for each in ray_container["env"]}
        assert ray_env[variable]["valueFrom"]["secretKeyRef"] == reference


def test_the_job_is_bounded_and_runs_as_a_non_root_user() -> None:
    spec = job()["spec"]
    assert 0 < spec["backoffLimit"] <= 6
    assert spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False
    assert container()["securityContext"]["capabilities"] == {"drop": ["ALL"]}
