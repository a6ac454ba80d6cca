"""The Ingress deployment: the HTTP API, compatible with MusicGPT's Extraction endpoints.

`POST /api/public/v1/Extraction` authenticates, reads the multipart body within its
limits (serve_app/http/form.py), moves the upload into the blob store, creates the task and
answers at once with its ids, eta and credit estimate; a Pipeline replica picks the task
up from the database. `GET /byId` reports a task, `GET /files/{task_id}/{file}` serves
its stems, `GET /stems` the catalogue, `GET /healthz` liveness and `GET /readyz` readiness
(serve_app/deployments/health.py). A request that needs a model which failed to load answers 503.
Errors map to status codes here, in one place; a task and its files are visible only to
its owner.
"""

# No `from __future__ import annotations` here: Serve's ingress rebuilds the route
# methods, and FastAPI must see `Request` as a class, not a string, to inject it.
import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from pathlib import PurePosixPath
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from sqlalchemy.exc import OperationalError

from models.audio.decode import probe_duration
from models.audio.encode import FORMATS
from models.errors import AudioError
from models.preprocess.catalogue import STEPS
from models.stems.catalogue import ALL_STEMS, DEFAULT_STEMS, STEM_GROUPS
from models.stems.planner import Plan
from models.stems.routing import load_routing
from serve_app.deployments.health import deployment_states, model_state
from serve_app.deployments.separator import ModelState, ModelStatus, separator_name
from serve_app.http.auth import Authenticator, AuthError
from serve_app.http.bodyqueue import pace_replica
from serve_app.http.form import ExtractionForm, FormError, form_error_response, read_extraction_form
from serve_app.http.unreadbody import CloseUnreadBody
from serve_app.http.wire import conversion, credits, eta_s, stem_file
from serve_app.settings import AppArgs
from serve_app.store.admission import RateLimiter, Refusal, Slot
from serve_app.store.blobs import LocalBlobStore
from serve_app.store.faults import space_short, storage_fault
from serve_app.store.records import Delivery, Status, TaskRecord, TaskSpec
from serve_app.store.tasks import (
    IdempotencyConflictError,
    IdempotencyKeyError,
    TaskStore,
    check_idempotency_key,
)

logger = logging.getLogger("ray.serve")

PREFIX = "/api/public/v1"
READY_TRUSTED_S = 30.0
INPUT_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".mp4", ".webm"})

api = FastAPI(
    title="stemsplit",
    version="0.1.0",
    description=(
        "Self-hosted stem extraction with MusicGPT's Extraction API. Send "
        "`Authorization: <key>` on every call when auth is on."
    ),
)

api.add_middleware(CloseUnreadBody)

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


def request_fingerprint(form: ExtractionForm) -> str:
    """What makes two Extraction requests the same request: every field, and the bytes
    of the upload."""
    digest = hashlib.sha256()
    fields = {
        "stems": form.stems,
        "preprocessing": form.preprocessing,
        "output_format": form.output_format,
        "audio_url": form.audio_url,
        "webhook_url": form.webhook_url,
    }
    digest.update(json.dumps(fields, sort_keys=True).encode())
    if form.upload is not None:
        with form.upload.open("rb") as upload:
            for block in iter(lambda: upload.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def webhook_report(delivery: Delivery) -> dict[str, Any]:
    """A webhook delivery and its attempts, as byId shows them (never the payload)."""
    return {
        "webhook_id": delivery.delivery_id,
        "state": delivery.state.value,
        "attempts": [
            {
                "at": attempt.at.isoformat(),
                "outcome": attempt.outcome,
                "status_code": attempt.status_code,
                "error": attempt.error,
            }
            for attempt in delivery.attempts
        ],
    }


def error(
    status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """An error body shaped like MusicGPT's."""
    return JSONResponse(
        {"success": False, "error": message, **extra}, status_code=status, headers=headers
    )


@api.exception_handler(AuthError)
async def _auth_failed(_request: Request, failure: AuthError) -> JSONResponse:
    return error(401, str(failure))


@api.exception_handler(FormError)
async def _form_refused(_request: Request, failure: FormError) -> JSONResponse:
    return form_error_response(failure)


@api.exception_handler(OSError)
@api.exception_handler(OperationalError)
async def _storage_failed(request: Request, failure: Exception) -> JSONResponse:
    reason = storage_fault(failure)
    if reason is None:
        return await _internal(request, failure)
    logger.warning("storage fault in the ingress: %s (%s)", reason, failure)
    return error(503, f"the service cannot use its storage right now: {reason}")


@api.exception_handler(Exception)
async def _internal(_request: Request, failure: Exception) -> JSONResponse:
    logger.exception("unhandled error in the ingress", exc_info=failure)
    return error(500, "internal error; it has been logged")


# A POST is short (parse, spool, one insert): 64 at once keep the disk busy without starving
# /healthz; 256 more may wait (a few seconds of backlog). Past that Serve answers 503 at once
# instead of letting latency grow.
@serve.deployment(
    ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_queued_requests=256
)
@serve.ingress(api)
class Ingress:
    """The public HTTP API."""

    def __init__(
        self,
        args: AppArgs,
        pipeline: DeploymentHandle,
        separators: dict[str, DeploymentHandle],
    ) -> None:
        self.args = args
        self.pipeline = pipeline
        self.separators = separators
        self.ready_at: dict[str, float] = {}  # when each model was last seen ready
        self.routing = load_routing(args.routing)
        self.store = TaskStore(args.db_url(), max_claims=args.pipeline.max_claims)
        self.limiter = RateLimiter(self.store.engine, args.limits.conversions_per_minute)
        self.blobs = LocalBlobStore(args.data_path() / "blobs")
        self.auth = Authenticator(args.auth.all_keys(), enabled=args.auth.enabled)
        self.app_name = serve.get_replica_context().app_name
        pace_replica()  # request bodies reach this replica only as fast as it reads them

    @api.post(f"{PREFIX}/Extraction", openapi_extra=EXTRACTION_BODY)
    async def extraction(self, request: Request) -> JSONResponse:
        """Create an extraction task; answers before any processing. With an
        `Idempotency-Key` header, a repeated request returns the first task."""
        try:
            return await self._extraction(request)
        except (OSError, OperationalError) as failure:
            reason = storage_fault(failure)
            if reason is None:
                raise
            logger.warning("storage fault while creating a task: %s (%s)", reason, failure)
            return self._unavailable(reason)

    def _unavailable(self, reason: str) -> JSONResponse:
        """503 when the task or its upload cannot be stored: nothing was kept, so the
        caller may simply retry after Retry-After."""
        return error(
            503,
            f"the service cannot store new work right now: {reason}; try again later",
            headers={"Retry-After": str(self.args.limits.busy_retry_after_s)},
        )

    async def _extraction(self, request: Request) -> JSONResponse:
        owner = self.auth.owner(request.headers.get("authorization"))
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None:
            try:
                check_idempotency_key(idempotency_key)
            except IdempotencyKeyError as failure:
                return error(400, str(failure), field="Idempotency-Key")
        slot = await asyncio.to_thread(self.limiter.take, owner)
        if isinstance(slot, Refusal):
            return error(
                429,
                f"more than {self.limiter.per_window} conversions a minute",
                headers={"Retry-After": str(slot.retry_after_s)},
            )
        created = False
        try:
            response, created = await self._admitted(request, owner, idempotency_key)
            return response
        finally:
            if not created:
                await asyncio.to_thread(self._release, slot)

    def _release(self, slot: Slot) -> None:
        """Give back the rate-limit slot of a request that made no task. Should the
        database refuse, the slot leaves with the window instead."""
        try:
            self.limiter.release(slot)
        except (OSError, OperationalError) as failure:
            logger.warning("could not release a rate-limit slot of %s: %s", slot.owner, failure)

    async def _admitted(
        self, request: Request, owner: str, idempotency_key: str | None
    ) -> tuple[JSONResponse, bool]:
        """The answer to a request that holds a rate-limit slot, and whether it created a
        task (else the slot is given back)."""
        counts = await asyncio.to_thread(self.store.counts)
        speed = await asyncio.to_thread(self.store.recent_speed)
        queued = counts[Status.IN_QUEUE]
        if queued >= self.args.limits.max_queued_tasks:
            busy = error(
                503,
                f"the service is busy ({queued} tasks waiting); try again later",
                headers={"Retry-After": str(self.args.limits.busy_retry_after_s)},
            )
            return busy, False
        short = await asyncio.to_thread(self._space_short)
        if short is not None:
            return self._unavailable(short), False
        spool = self.blobs.spool_dir()
        form = await read_extraction_form(
            request, self.routing, spool, self.args.uploads.limits(), self.args.outbound.policy()
        )
        try:
            missing = await self._unavailable_model(form.plan)
            if missing is not None:
                retry = str(math.ceil(self.args.engine.model_retry_s))
                return error(503, missing, headers={"Retry-After": retry}), False
            # Hashing reads the whole upload: only a request that may be a repeat pays.
            fingerprint = (
                None
                if idempotency_key is None
                else await asyncio.to_thread(request_fingerprint, form)
            )
            ahead = queued + counts[Status.PROCESSING]
            spec = await asyncio.to_thread(self._spec, owner, form, ahead, speed)
        finally:
            if form.upload is not None:
                form.upload.unlink(missing_ok=True)
        try:
            record, created = await asyncio.to_thread(
                self._create, spec, idempotency_key, fingerprint
            )
        except IdempotencyConflictError as failure:
            await asyncio.to_thread(self._discard_upload, spec)
            return error(422, str(failure), field="Idempotency-Key"), False
        except BaseException:
            # No task holds the upload (the database may be full): keep nothing.
            await asyncio.to_thread(self._discard_upload, spec)
            raise
        if not created:
            await asyncio.to_thread(self._discard_upload, spec)
        else:
            logger.info(
                "task %s: created by %s", record.task_id, owner, extra={"task_id": record.task_id}
            )
            self.pipeline.wake.remote()
        answer = JSONResponse(
            {
                "success": True,
                "task_id": record.task_id,
                "conversion_id": record.conversion_id,
                "eta": record.spec.eta_s,
                "credit_estimate": record.spec.credit_estimate,
            }
        )
        return answer, created

    async def _unavailable_model(self, plan: Plan) -> str | None:
        """Why a model the plan needs cannot serve, if one cannot. A model still loading,
        or whose replica has not answered yet, can: the task waits for it."""
        models = sorted({step.model for step in plan.passes})
        states = await asyncio.gather(*(self._model_state(model) for model in models))
        failed = [state.reason for state in states if state.status == ModelStatus.FAILED]
        return failed[0] if failed else None

    async def _model_state(self, model: str) -> ModelState:
        """The model's state; one seen ready is trusted for READY_TRUSTED_S, so that a busy
        Separator's queue does not delay every POST (a loaded model rarely goes away)."""
        seen = self.ready_at.get(model)
        if seen is not None and time.monotonic() - seen < READY_TRUSTED_S:
            return ModelState(model, ModelStatus.READY)
        state = await model_state(self.separators[model], model)
        if state.status == ModelStatus.READY:
            self.ready_at[model] = time.monotonic()
        return state

    def _space_short(self) -> str | None:
        """Why the data folder cannot take new work (below its free-space reserve)."""
        return space_short(self.args.data_path(), self.args.limits.min_free_bytes)

    def _discard_upload(self, spec: TaskSpec) -> None:
        """Delete the upload of a request that made no task (a repeat, or refused)."""
        if spec.input_key is not None:
            self.blobs.delete_prefix(spec.input_key)

    def _create(
        self, spec: TaskSpec, idempotency_key: str | None, fingerprint: str | None
    ) -> tuple[TaskRecord, bool]:
        if idempotency_key is None:
            return self.store.create(spec), True
        return self.store.create_once(spec, idempotency_key, fingerprint)

    def _spec(self, owner: str, form: ExtractionForm, ahead: int, speed: float | None) -> TaskSpec:
        """The task to create: the upload moved into the blob store, the estimates made
        (`ahead`: tasks queued or running before it; `speed`: recent seconds of work per
        second of audio, if any). Reads no database, so nothing fails after the move."""
        duration: float | None = None
        input_key: str | None = None
        if form.upload is not None:
            # None: the file declares no length (a stream recorded as it was made); the
            # limit is then enforced while decoding, and the estimates are unknown.
            try:
                duration = probe_duration(form.upload, name="audio_file")
            except AudioError as failure:
                raise FormError(str(failure), field="audio_file") from failure
            limit = self.args.decode.max_duration_s
            if duration is not None and duration > limit:
                raise FormError(
                    f"audio_file is {duration:.0f} seconds long; the limit is {limit:g} seconds",
                    field="audio_file",
                )
            suffix = PurePosixPath(form.filename or "").suffix.lower()
            name = "audio" + (suffix if suffix in INPUT_SUFFIXES else "")
            input_key = f"inputs/{uuid.uuid4().hex}/{name}"
            self.blobs.put_file(input_key, form.upload)
        passes = len(form.plan.passes)
        return TaskSpec(
            owner=owner,
            stems=form.stems,
            preprocessing=form.preprocessing,
            output_format=form.output_format,
            audio_url=form.audio_url,
            input_key=input_key,
            webhook_url=form.webhook_url,
            duration_s=duration,
            eta_s=eta_s(
                duration,
                passes,
                seconds_per_audio_second=speed or self.args.pricing.seconds_per_audio_second,
                queued_ahead=ahead,
                parallel_tasks=self.args.pipeline.tasks_per_replica,
            ),
            credit_estimate=credits(duration, self.args.pricing.credits_per_minute),
        )

    @api.get(f"{PREFIX}/byId")
    async def by_id(
        self,
        request: Request,
        conversionType: str = "EXTRACTION",
        task_id: str | None = None,
        conversion_id: str | None = None,
    ) -> JSONResponse:
        """A task's conversion object, by task_id or conversion_id."""
        owner = self.auth.owner(request.headers.get("authorization"))
        if conversionType.upper() != "EXTRACTION":
            return error(422, "conversionType must be EXTRACTION", field="conversionType")
        if not task_id and not conversion_id:
            return error(422, "give task_id or conversion_id", field="task_id")
        record = await asyncio.to_thread(self._owned, owner, task_id, conversion_id)
        if record is None:
            return error(404, "no such task")
        deliveries = await asyncio.to_thread(self.store.deliveries, record.task_id)
        body = conversion(record, self.args.public_url)
        body["files_expired"] = record.files_expired_at is not None
        body["webhook"] = [webhook_report(delivery) for delivery in deliveries]
        return JSONResponse({"success": True, "conversion": body})

    def _owned(
        self, owner: str, task_id: str | None, conversion_id: str | None
    ) -> TaskRecord | None:
        if task_id:
            record = self.store.get(task_id)
        else:
            record = self.store.get_by_conversion(conversion_id or "")
        return record if record is not None and record.spec.owner == owner else None

    @api.get(f"{PREFIX}/files/{{task_id}}/{{name}}")
    async def file(self, request: Request, task_id: str, name: str) -> Any:
        """A stem's audio file; only for the key that created the task."""
        owner = self.auth.owner(request.headers.get("authorization"))
        record = await asyncio.to_thread(self._owned, owner, task_id, None)
        if record is None:
            return error(404, "no such file")
        if record.files_expired_at is not None:
            return error(410, "the files of this task were deleted after the retention time")
        for stem, key in record.results.items():
            if stem_file(stem, record.spec.output_format) == name and self.blobs.exists(key):
                return FileResponse(self.blobs.path(key), filename=name)
        return error(404, "no such file")

    @api.get(f"{PREFIX}/stems")
    async def stems(self) -> JSONResponse:
        """The stem catalogue, and which stems this deployment serves."""
        return JSONResponse(
            {
                "success": True,
                "stems": list(ALL_STEMS),
                "groups": {group: list(names) for group, names in STEM_GROUPS.items()},
                "served": list(self.routing.served_stems()),
                "default": list(DEFAULT_STEMS),
                "preprocessing_options": list(STEPS),
                "output_formats": list(FORMATS),
            }
        )

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """Liveness: the database and every deployment of this application are up (200),
        else 503 naming what is down, in one line each. A data folder below its free-space
        reserve is reported under `warnings` (the service still serves status and files)."""
        tasks, down = await self._database()
        down.update((await asyncio.to_thread(deployment_states, self.app_name)).down)
        warnings = {}
        short = await asyncio.to_thread(self._space_short)
        if short is not None:
            warnings["storage"] = short
        if down:
            return JSONResponse(
                {"status": "unhealthy", "down": down, "warnings": warnings}, status_code=503
            )
        return JSONResponse({"status": "ok", "tasks": tasks, "warnings": warnings})

    async def _database(self) -> tuple[dict[str, int], dict[str, str]]:
        """Tasks by status, and {"database": why} when the task database does not answer."""
        try:
            counts = await asyncio.to_thread(self.store.counts)
        except Exception as failure:
            logger.exception("health check: the task database does not answer")
            return {}, {"database": f"does not answer ({type(failure).__name__})"}
        return {status.value: count for status, count in counts.items()}, {}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Readiness: 200 once the database answers, every deployment has a running
        replica (or is scaled to zero) and every running Separator has loaded its model;
        else 503 naming what is not ready and why, one line each."""
        _, waiting = await self._database()
        deployments = await asyncio.to_thread(deployment_states, self.app_name)
        waiting.update(deployments.waiting())
        asked = [m for m in self.separators if separator_name(m) in deployments.running]
        states = await asyncio.gather(
            *(model_state(self.separators[model], model) for model in asked)
        )
        for state in states:
            if state.status != ModelStatus.READY:
                waiting[separator_name(state.model)] = state.reason or state.status.value
        if waiting:
            return JSONResponse({"status": "not ready", "waiting": waiting}, status_code=503)
        return JSONResponse({"status": "ready"})
