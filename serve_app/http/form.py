"""Reading the Extraction request into a checked form.

`read_extraction_form` reads the body of `POST /api/public/v1/Extraction` within its
limits (serve_app/http/body.py: the file part goes straight to the spool folder), then
checks every field: the stems against the stem catalogue and this deployment's routing,
planning them once for the whole request; the preprocessing steps, the output formats and
the outbound URL policy. Anything it refuses raises FormError, which carries its status
(serve_app/http/errors.py answers it).
"""

from __future__ import annotations

import json
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from models.audio.encode import FORMATS
from models.errors import PreprocessError, StemError
from models.preprocess.catalogue import STEPS, parse_steps
from models.stems.planner import Plan, make_plan
from models.stems.routing import Routing
from serve_app.http.body import (
    AUDIO_FILE,
    DEFAULT_LIMITS,
    URLENCODED,
    FormError,
    PartReader,
    UploadLimits,
    body_chunks,
    content_type,
    multipart_boundary,
    read_multipart,
    read_urlencoded,
)
from serve_app.outbound.netguard import DEFAULT_POLICY, OutboundError, OutboundPolicy, check_url

DEFAULT_FORMAT = "wav"


@dataclass(frozen=True)
class ExtractionForm:
    """A checked Extraction request; exactly one of `audio_url` and `upload` is set. Its
    stems are planned here, once per task: the plan says which models the task needs."""

    plan: Plan
    preprocessing: tuple[str, ...]
    output_format: str
    audio_url: str | None
    upload: Path | None  # the spooled audio_file, owned by the caller from here on
    filename: str | None
    webhook_url: str | None

    @property
    def stems(self) -> tuple[str, ...]:
        """The stems asked for (the defaults when none were), in the order they were asked."""
        return self.plan.stems


async def read_extraction_form(
    request: Request,
    routing: Routing,
    spool_dir: Path,
    limits: UploadLimits = DEFAULT_LIMITS,
    policy: OutboundPolicy = DEFAULT_POLICY,
) -> ExtractionForm:
    """Parse and check an Extraction request, spooling its audio_file into `spool_dir`.
    URLs are checked against the outbound `policy` as far as that needs no DNS lookup
    (literal private addresses are refused here; names when they are resolved).
    Raises FormError; whatever the error, nothing is left in `spool_dir`. A request with
    no body at all is a form with no fields (422: no audio), as MusicGPT answers it.
    """
    reader = PartReader(limits)
    if request.headers.get("content-length", "").strip() == "0" or (
        "content-type" not in request.headers
        and await _body_is_empty(request, limits.body_idle_timeout_s)
    ):
        return _check_form(reader, None, routing, policy)
    media_type = content_type(request.headers, limits.max_body_bytes)
    if media_type == URLENCODED:
        await read_urlencoded(request, reader, limits)
        return _check_form(reader, None, routing, policy)
    boundary = multipart_boundary(request.headers)
    upload = spool_dir / f"upload-{uuid.uuid4().hex}"
    try:
        await read_multipart(request, boundary, reader, upload, limits.max_body_bytes)
        return _check_form(reader, upload, routing, policy)
    except BaseException:
        upload.unlink(missing_ok=True)
        raise


async def _body_is_empty(request: Request, idle_timeout_s: float) -> bool:
    """Whether the body has no bytes; reads no further than its first non-empty chunk (a
    body without a Content-Type is then refused, unread)."""
    async with aclosing(body_chunks(request, idle_timeout_s)) as chunks:
        async for chunk in chunks:
            if chunk:
                return False
    return True


def _check_form(
    reader: PartReader, upload: Path | None, routing: Routing, policy: OutboundPolicy
) -> ExtractionForm:
    """Check every field of a fully read form and build the ExtractionForm."""
    fields = reader.fields
    audio_url = _url(fields, "audio_url", policy)
    webhook_url = _url(fields, "webhook_url", policy)
    # An empty part with no filename is what a form with no file chosen sends.
    has_file = reader.file_bytes > 0 or reader.filename is not None
    if has_file and reader.file_bytes == 0:
        raise FormError("audio_file is empty", field=AUDIO_FILE)
    if has_file and audio_url is not None:
        raise FormError("send only one of audio_url and audio_file, not both")
    if not has_file and audio_url is None:
        raise FormError("send the audio as audio_url or audio_file")
    return ExtractionForm(
        plan=_plan(fields, routing),
        preprocessing=_preprocessing(fields),
        output_format=_output_format(fields),
        audio_url=audio_url,
        upload=upload if has_file else None,
        filename=reader.filename,
        webhook_url=webhook_url,
    )


def _url(fields: dict[str, str], name: str, policy: OutboundPolicy) -> str | None:
    """Return the field's URL, None when absent or empty, refusing anything but http(s)
    and literal addresses the policy refuses."""
    value = fields.get(name, "").strip()
    if not value:
        return None
    try:
        check_url(value, policy, what=name)
    except OutboundError as exc:
        raise FormError(str(exc), field=name) from None
    return value


def _json_names(fields: dict[str, str], name: str, allowed: tuple[str, ...]) -> list[str]:
    """Parse a field holding a JSON list of names; absent or empty means an empty list."""
    text = fields.get(name, "").strip()
    if not text:
        return []
    expected = f'a JSON list such as ["{allowed[0]}"] of: {", ".join(allowed)}'
    try:
        value = json.loads(text)
    # Deeply nested JSON overflows the decoder's recursion, which is the caller's mistake too.
    except (json.JSONDecodeError, RecursionError):
        raise FormError(f"{name} is not valid JSON; send {expected}", field=name) from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FormError(f"{name} must be {expected}", field=name)
    return value


def _plan(fields: dict[str, str], routing: Routing) -> Plan:
    """Plan the requested stems (none: the defaults), refusing any the routing cannot serve."""
    names = _json_names(fields, "stems", routing.served_stems())
    try:
        return make_plan(names, routing)
    except StemError as exc:
        raise FormError(f"stems: {exc}", field="stems") from None


def _preprocessing(fields: dict[str, str]) -> tuple[str, ...]:
    """Return the preprocessing steps in the order they run."""
    names = _json_names(fields, "preprocessing_options", STEPS)
    try:
        return parse_steps(names)
    except PreprocessError as exc:
        raise FormError(f"preprocessing_options: {exc}", field="preprocessing_options") from None


def _output_format(fields: dict[str, str]) -> str:
    """Return the output format, wav when absent."""
    value = fields.get("output_format", "").strip().lower() or DEFAULT_FORMAT
    if value not in FORMATS:
        raise FormError(
            f"output_format must be one of {', '.join(FORMATS)}, not {value[:20]!r}",
            field="output_format",
        )
    return value
