"""The HTTP API, compatible with MusicGPT's Extraction endpoints: the FastAPI app and its
routes.

`POST /api/public/v1/Extraction` creates a task, `GET /byId` reports one, `GET
/files/{task_id}/{file}` serves its stems (serve_app/http/extraction.py does the work),
`GET /stems` lists the catalogue and each stem's status (models/stems/status.py), `GET
/healthz` and `GET /readyz` answer the probes (serve_app/http/probes.py). Routes only
translate HTTP; every failure they raise is answered from the one table in
serve_app/http/errors.py. `build_api` makes the app for one Ingress replica, which hands
it what the routes use.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from models.audio.encode import FORMATS
from models.preprocess.catalogue import STEPS
from models.stems.catalogue import ALL_STEMS, DEFAULT_STEMS, STEM_GROUPS
from models.stems.status import stem_statuses
from serve_app.http import errors
from serve_app.http.extraction import ExtractionApi
from serve_app.http.probes import Probes
from serve_app.http.unreadbody import CloseUnreadBody

PREFIX = "/api/public/v1"

EXTRACTION_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "audio_url": {"type": "string", "description": "http(s) link; '' = absent"},
                        "audio_file": {"type": "string", "format": "binary"},
                        "stems": {
                            "type": "string",
                            "description": "JSON list of stems; default "
                            + ", ".join(DEFAULT_STEMS),
                        },
                        "preprocessing_options": {
                            "type": "string",
                            "description": "JSON list from " + ", ".join(STEPS),
                        },
                        "webhook_url": {"type": "string"},
                        "output_format": {"type": "string", "enum": list(FORMATS)},
                    },
                }
            }
        },
    }
}


def build_api(extractions: ExtractionApi, probes: Probes) -> FastAPI:
    """The FastAPI app whose routes call `extractions` and `probes`."""
    api = FastAPI(
        title="stemsplit",
        version="0.1.0",
        description=(
            "Self-hosted stem extraction with MusicGPT's Extraction API. Send "
            "`Authorization: <key>` on every call when auth is on."
        ),
    )
    api.add_middleware(CloseUnreadBody)
    errors.install(api, retry_after_s=extractions.args.limits.busy_retry_after_s)

    @api.post(f"{PREFIX}/Extraction", openapi_extra=EXTRACTION_BODY)
    async def extraction(request: Request) -> JSONResponse:
        """Create an extraction task; answers before any processing. With an
        `Idempotency-Key` header, a repeated request returns the first task."""
        return await extractions.create(request)

    @api.get(f"{PREFIX}/byId")
    async def by_id(
        request: Request,
        conversionType: str = "EXTRACTION",
        task_id: str | None = None,
        conversion_id: str | None = None,
    ) -> JSONResponse:
        """A task's conversion object, by task_id or conversion_id."""
        return await extractions.report(request, conversionType, task_id, conversion_id)

    @api.get(f"{PREFIX}/files/{{task_id}}/{{name}}")
    async def file(request: Request, task_id: str, name: str) -> Response:
        """A stem's audio file; only for the key that created the task."""
        return await extractions.stem_file(request, task_id, name)

    @api.get(f"{PREFIX}/stems")
    async def stems() -> JSONResponse:
        """The stem catalogue, which stems this deployment serves, and each stem's status:
        what produces it, or what is missing and where to get it."""
        settings = extractions.args
        # Looks at the model folder: a few stat calls, off the event loop all the same.
        catalogue = await asyncio.to_thread(
            stem_statuses,
            extractions.routing,
            model_dir=settings.model_dir,
            routing_file=settings.routing,
        )
        return JSONResponse(
            {
                "success": True,
                "stems": list(ALL_STEMS),
                "groups": {group: list(names) for group, names in STEM_GROUPS.items()},
                "served": list(extractions.routing.served_stems()),
                "default": list(DEFAULT_STEMS),
                "preprocessing_options": list(STEPS),
                "output_formats": list(FORMATS),
                "catalogue": [status.as_json() for status in catalogue],
            }
        )

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness: the database and every deployment are up, else 503 naming what is
        down; a data folder below its free-space reserve is reported under `warnings`."""
        return await probes.healthz()

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: the database answers, every deployment runs and every running
        Separator has loaded its model; else 503 naming what is not ready and why."""
        return await probes.readyz()

    return api
