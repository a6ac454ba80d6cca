"""The Serve config files: valid for Ray Serve's own schema, naming only deployments that
`build_app` binds, with settings `AppArgs` accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import deployment_names
from serve_app.settings import AppArgs

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def load(name: str) -> tuple[ServeDeploySchema, dict[str, Any]]:
    document = yaml.safe_load((CONFIGS / name).read_text())
    return ServeDeploySchema.model_validate(document), document


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml"])
def test_config_names_every_deployment_and_nothing_else(name: str) -> None:
    schema, _ = load(name)
    (application,) = schema.applications
    assert application.import_path == "serve_app.app:build_app"
    args = AppArgs.model_validate(application.args)
    assert {deployment.name for deployment in application.deployments} == set(
        deployment_names(args)
    )


def test_local_profile_is_loopback_cpu_and_open() -> None:
    schema, _ = load("local.yaml")
    assert schema.http_options.host == "127.0.0.1"
    assert schema.http_options.port == 8000
    (application,) = schema.applications
    args = AppArgs.model_validate(application.args)
    assert args.auth.enabled is False
    assert args.engine.device == "cpu"
    assert args.db_url().startswith("sqlite:///")
    for deployment in application.deployments:
        assert deployment.num_replicas == 1
        assert not deployment.ray_actor_options.num_gpus


def test_cluster_profile_uses_gpus_autoscaling_and_auth() -> None:
    schema, _ = load("cluster.yaml")
    (application,) = schema.applications
    args = AppArgs.model_validate(application.args)
    assert args.auth.enabled is True and args.auth.keys_env
    assert args.webhooks.secret_env
    by_name = {deployment.name: deployment for deployment in application.deployments}
    for name, deployment in by_name.items():
        assert deployment.autoscaling_config is not None, name
        if name.startswith("Separator_") or name == "Preprocessor":
            assert deployment.ray_actor_options.num_gpus, name


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        AppArgs.model_validate({"pipeline": {"lease_seconds": 3}})
