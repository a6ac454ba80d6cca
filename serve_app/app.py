"""The application builder: binds Ingress, Pipeline, Preprocessor, Housekeeping and one
Separator per routed model (stem models and trained preprocessing models alike) into one
Serve application. A Serve config file names
`serve_app.app:build_app` as its import path and passes `args` (serve_app/settings.py).

The routing is read here, once, and handed to the deployments that use it; each
deployment gets the settings it uses. The Separators come from the routing itself, all
with the `separators` options, so a model added to the routing needs no new block in a
config file (a `deployments` entry named `Separator_<model>` still overrides them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from ray.serve import Application, Deployment

from models.stems.routing import load_routing
from serve_app.deployments.housekeeping import Housekeeping
from serve_app.deployments.ingress import Ingress
from serve_app.deployments.pipeline import Pipeline
from serve_app.deployments.preprocessor import Preprocessor
from serve_app.deployments.separator import Separator, separator_name
from serve_app.settings import AppArgs

__all__ = ["build_app", "deployment", "deployment_names", "separator_name"]

FIXED_DEPLOYMENTS = ("Ingress", "Pipeline", "Preprocessor", "Housekeeping")


def deployment_names(args: AppArgs) -> tuple[str, ...]:
    """Every deployment `build_app(args)` binds."""
    routing = load_routing(args.routing)
    return (*FIXED_DEPLOYMENTS, *(separator_name(model) for model in routing.all_models()))


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """The stem-extraction application for these settings."""
    settings = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    # Resolve relative paths once, here, so every replica uses the same ones whatever its
    # working directory (the routing file's also appears in GET /stems' fetch commands).
    settings = settings.model_copy(
        update={
            "data_dir": str(settings.data_path()),
            "routing": str(Path(settings.routing).resolve()),
            "model_dir": str(Path(settings.model_dir).resolve()) if settings.model_dir else None,
        }
    )
    settings.data_path().mkdir(parents=True, exist_ok=True)
    routing = load_routing(settings.routing)
    options = settings.separators.options()
    separators = {
        model: deployment(Separator)
        .options(name=separator_name(model), **options)
        .bind(
            entry,
            settings.engine,
            model_dir=settings.model_dir,
            use_hub=settings.use_hub,
        )
        for model, entry in routing.all_models().items()
    }
    preprocessor = deployment(Preprocessor).bind(settings.engine)
    housekeeping = deployment(Housekeeping).bind(settings)
    pipeline = deployment(Pipeline).bind(settings, routing, separators, preprocessor, housekeeping)
    return deployment(Ingress).bind(settings, routing, pipeline, separators)


def deployment(decorated: object) -> Deployment:
    """A class under `@serve.deployment`, typed as the Deployment it is at runtime."""
    return cast(Deployment, decorated)
