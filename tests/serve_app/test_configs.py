"""The Serve config files: valid for Ray Serve's own schema, naming only deployments that
`build_app` binds, with settings `AppArgs` accepts; `build_app` binds one Separator per
routed model with the `separators` options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve import Deployment
from ray.serve._private.build_app import build_app as build_serve_app
from ray.serve.schema import ServeDeploySchema

from models.audio.decode import DecodeLimits
from models.stems.routing import DEFAULT_ROUTING_PATH
from serve_app.app import FIXED_DEPLOYMENTS, build_app, deployment_names
from serve_app.http.body import UploadLimits
from serve_app.outbound.fetch import FetchLimits
from serve_app.outbound.netguard import OutboundPolicy
from serve_app.outbound.webhooks import RetrySchedule
from serve_app.settings import AppArgs

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def load(name: str) -> tuple[ServeDeploySchema, dict[str, Any]]:
    document = yaml.safe_load((CONFIGS / name).read_text())
    return ServeDeploySchema.model_validate(document), document


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml"])
def test_config_names_every_fixed_deployment_and_nothing_else(name: str) -> None:
    """The Separators need no entries: `args.separators` configures them all."""
    schema, _ = load(name)
    (application,) = schema.applications
    assert application.import_path == "serve_app.app:build_app"
    args = AppArgs.model_validate(application.args)
    named = {deployment.name for deployment in application.deployments}
    assert named <= set(deployment_names(args))
    assert set(FIXED_DEPLOYMENTS) <= named


def test_build_app_binds_a_separator_per_routed_model_with_the_shared_options(
    tmp_path: Path,
) -> None:
    routing = tmp_path / "routing.yaml"
    document = yaml.safe_load(DEFAULT_ROUTING_PATH.read_text())
    # A second model, added to the routing only.
    second = {**document["models"]["htdemucs_6s"], "outputs": {"kick_drum": "drums"}}
    document["models"]["second"] = second
    routing.write_text(yaml.safe_dump(document))
    options = {
        "ray_actor_options": {"num_cpus": 2, "num_gpus": 1},
        "user_config": {"max_batch_size": 16, "batch_wait_timeout_s": 0.02},
    }
    args = AppArgs.model_validate(
        {"data_dir": str(tmp_path / "data"), "routing": str(routing), "separators": options}
    )
    built = {deployment.name: deployment for deployment in bound_deployments(args)}
    assert set(built) == set(deployment_names(args))
    separators = {name for name in built if name.startswith("Separator_")}
    assert separators == {"Separator_htdemucs_6s", "Separator_second"}
    for name in separators:
        assert built[name].ray_actor_options == options["ray_actor_options"]
        assert built[name].user_config == options["user_config"]
    assert not (built["Pipeline"].ray_actor_options or {}).get("num_gpus")


def bound_deployments(args: AppArgs) -> list[Deployment]:
    """The deployments `build_app(args)` binds, as Serve builds them."""
    return build_serve_app(build_app(args), name="under-test").deployments


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
    assert args.separators.num_replicas == 1
    assert not (args.separators.ray_actor_options or {}).get("num_gpus")


def test_cluster_profile_uses_gpus_autoscaling_and_auth() -> None:
    schema, _ = load("cluster.yaml")
    (application,) = schema.applications
    args = AppArgs.model_validate(application.args)
    assert args.auth.enabled is True and args.auth.keys_env
    assert args.webhooks.secret_env
    by_name = {deployment.name: deployment for deployment in application.deployments}
    assert by_name.pop("Housekeeping").num_replicas == 1  # one sweeper, one supervisor
    for name, deployment in by_name.items():
        assert deployment.autoscaling_config is not None, name
        if name == "Preprocessor":
            assert deployment.ray_actor_options.num_gpus, name
    assert args.separators.autoscaling_config is not None
    assert (args.separators.ray_actor_options or {}).get("num_gpus")


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        AppArgs.model_validate({"pipeline": {"lease_seconds": 3}})


@pytest.mark.parametrize(
    "section", ["uploads", "fetch", "decode", "webhooks", "outbound", "pipeline"]
)
def test_unknown_keys_are_refused_inside_every_section(section: str) -> None:
    with pytest.raises(ValidationError, match="lease_seconds"):
        AppArgs.model_validate({section: {"lease_seconds": 3}})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"uploads": {"max_fields": 0}}, "upload limits must be positive"),
        ({"fetch": {"max_redirects": -1}}, "max_redirects must not be negative"),
        ({"decode": {"max_channels": 0}}, "decode limits must be positive"),
        ({"webhooks": {"jitter": 1}}, "jitter must be at least 0 and below 1"),
        ({"webhooks": {"poll_s": 0}}, "poll_s must be positive"),
        ({"outbound": {"allowed_networks": ["10.0.0.0/33"]}}, "allowed_networks must be CIDRs"),
    ],
)
def test_values_are_checked_by_the_core_limits(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AppArgs.model_validate(args)


def test_sections_are_the_core_limits_with_their_defaults() -> None:
    args = AppArgs.model_validate({"uploads": {"max_fields": 3}, "webhooks": {"jitter": 0.5}})
    assert args.uploads == UploadLimits(max_fields=3)
    assert args.fetch == FetchLimits()
    assert args.decode == DecodeLimits()
    assert args.outbound == OutboundPolicy()
    assert isinstance(args.webhooks, RetrySchedule)
    assert args.webhooks.jitter == 0.5
    assert args.webhooks.delays_s == RetrySchedule().delays_s
