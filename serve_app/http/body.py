"""The body of an Extraction request, read within limits: multipart/form-data streamed
through python-multipart (the file part straight to a spool file, text fields kept in
memory), or application/x-www-form-urlencoded when there is no file.

python-multipart is driven directly rather than through starlette's MultiPartParser:
starlette spools files to a SpooledTemporaryFile of its own choosing (in memory up to
1 MB, then the system temp folder), which would cost a second copy into the spool folder,
and it reads an unknown part before any caller could refuse it by name. Here an unknown
or repeated field is refused as soon as its headers arrive, and malformed bodies (long
preambles, header floods, missing closing boundaries) are refused as they stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.requests import Request

from serve_app.outbound.fetch import describe_size

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

AUDIO_FILE = "audio_file"
MULTIPART = b"multipart/form-data"
URLENCODED = b"application/x-www-form-urlencoded"
FIELDS = (
    "audio_url",
    AUDIO_FILE,
    "stems",
    "preprocessing_options",
    "webhook_url",
    "output_format",
)


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on one request body; fields are the non-file parts."""

    max_body_bytes: int = 500 * 1024**2
    max_fields: int = 16
    max_files: int = 1
    max_field_bytes: int = 64 * 1024
    # Malformed-multipart guards: what a well-formed form never comes near.
    max_preamble_bytes: int = 64 * 1024  # bytes before the first part
    max_part_headers: int = 8  # header lines per part
    max_header_bytes: int = 8 * 1024  # one header line, name and value
    # A body that stops arriving for this long is refused (408): a client that sends a
    # byte now and then would otherwise hold one of the Ingress's request slots for ever.
    body_idle_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        """Refuse limits that would let no form through (`max_files` 0 refuses files)."""
        positive = (
            self.max_body_bytes,
            self.max_fields,
            self.max_field_bytes,
            self.max_preamble_bytes,
            self.max_part_headers,
            self.max_header_bytes,
            self.body_idle_timeout_s,
        )
        if min(positive) <= 0:
            raise ValueError("upload limits must be positive")
        if self.max_files < 0:
            raise ValueError("max_files must not be negative")


DEFAULT_LIMITS = UploadLimits()


class FormError(Exception):
    """A refused request: `status` is its HTTP code, `field` the field to fix, if one is."""

    def __init__(self, message: str, *, status: int = 422, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


async def read_urlencoded(request: Request, reader: PartReader, limits: UploadLimits) -> None:
    """Read a form sent as application/x-www-form-urlencoded (what `requests.post(data=...)`
    sends when there is no file): only text fields, within the same limits."""
    # Percent-encoding at most triples a field; names and separators add a little.
    cap = min(limits.max_body_bytes, limits.max_fields * (3 * limits.max_field_bytes + 64))
    body = bytearray()
    async with aclosing(body_chunks(request, limits.body_idle_timeout_s)) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > cap:
                raise _too_large(cap)
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            max_num_fields=limits.max_fields,
        )
    except UnicodeDecodeError as exc:
        raise FormError("the urlencoded body is not ASCII", status=400) from exc
    except ValueError as exc:
        raise FormError(
            f"the form is not valid urlencoded data or has more than {limits.max_fields} fields",
            status=400,
        ) from exc
    for name, value in pairs:
        reader.add_field(name, value)


async def body_chunks(request: Request, idle_timeout_s: float) -> AsyncGenerator[bytes, None]:
    """The request body's chunks as they arrive; FormError (408) when none arrives for
    `idle_timeout_s`."""
    async with aclosing(request.stream()) as chunks:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(chunks), idle_timeout_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise FormError(
                    f"the request body stalled: nothing arrived for {idle_timeout_s:g} seconds",
                    status=408,
                ) from None
            yield chunk


def content_type(headers: Headers, max_body_bytes: int) -> bytes:
    """The form's media type, refusing a declared size over the cap before any read."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise FormError("the Content-Length header is not a number", status=400)
        if int(declared) > max_body_bytes:
            raise _too_large(max_body_bytes)
    content_type, _ = parse_options_header(headers.get("content-type"))
    if content_type not in (MULTIPART, URLENCODED):
        raise FormError(
            "the request body must be multipart/form-data "
            "(or application/x-www-form-urlencoded without a file)",
            status=400,
        )
    return content_type


def multipart_boundary(headers: Headers) -> bytes:
    """The multipart boundary."""
    _, options = parse_options_header(headers.get("content-type"))
    boundary = options.get(b"boundary")
    if not boundary:
        raise FormError("the multipart/form-data Content-Type has no boundary", status=400)
    return boundary


def _too_large(max_body_bytes: int) -> FormError:
    """The error for a body over the cap, whether declared or counted."""
    return FormError(f"the request body is larger than {describe_size(max_body_bytes)}", status=413)


class PartReader:
    """python-multipart callbacks: text fields kept in memory, file bytes queued for disk."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.fields: dict[str, str] = {}
        self.has_file_part = False
        self.filename: str | None = None
        self.file_bytes = 0
        self.pending = bytearray()  # file bytes parsed but not yet written to the spool
        self.ended = False
        self.parts = 0  # parts begun so far
        self._headers = 0  # header lines of the current part
        self._files = 0
        self._name = ""
        self._in_file = False
        self._value = bytearray()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""

    def callbacks(self) -> MultipartCallbacks:
        """The callback table MultipartParser calls as it parses."""
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        self._headers = 0
        self._disposition = b""
        self._value.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        self._check_header_size()

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._check_header_size()

    def _check_header_size(self) -> None:
        if len(self._header_name) + len(self._header_value) > self.limits.max_header_bytes:
            raise FormError(
                f"a multipart part header is longer than "
                f"{describe_size(self.limits.max_header_bytes)}",
                status=400,
            )

    def on_header_end(self) -> None:
        self._headers += 1
        if self._headers > self.limits.max_part_headers:
            raise FormError(
                f"a multipart part has more than {self.limits.max_part_headers} headers", status=400
            )
        if self._header_name.lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def add_field(self, name: str, value: str) -> None:
        """A text field read whole (urlencoded forms), under the same rules as a part."""
        self._check_name(name)
        if name == AUDIO_FILE:
            raise FormError("audio_file must be sent as a file in multipart/form-data", field=name)
        if len(self.fields) + 1 > self.limits.max_fields:
            raise FormError(f"the form has more than {self.limits.max_fields} fields", status=413)
        if len(value.encode()) > self.limits.max_field_bytes:
            raise FormError(
                f"{name} is larger than {describe_size(self.limits.max_field_bytes)}",
                status=413,
                field=name,
            )
        self.fields[name] = value

    def _check_name(self, name: str) -> None:
        if name not in FIELDS:
            raise FormError(
                f"unknown field {name[:64]!r}; allowed fields: {', '.join(FIELDS)}", field=name
            )
        if name in self.fields or (name == AUDIO_FILE and self.has_file_part):
            raise FormError(f"{name} was sent more than once", field=name)

    def on_headers_finished(self) -> None:
        """Refuse the part by its name before any of its data is read."""
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise FormError("a multipart part has no name in Content-Disposition", status=400)
        # parse_options_header decodes as latin-1; clients send UTF-8 names.
        name = options[b"name"].decode("utf-8", "replace")
        self._check_name(name)
        self._name = name
        self._in_file = name == AUDIO_FILE
        if self._in_file:
            self._files += 1
            if self._files > self.limits.max_files:
                raise FormError(
                    f"the form has more than {self.limits.max_files} file(s)", status=413
                )
            self.has_file_part = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace") or None
        elif len(self.fields) + 1 > self.limits.max_fields:
            raise FormError(f"the form has more than {self.limits.max_fields} fields", status=413)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.pending += data[start:end]
            self.file_bytes += end - start
            return
        if len(self._value) + end - start > self.limits.max_field_bytes:
            raise FormError(
                f"{self._name} is larger than {describe_size(self.limits.max_field_bytes)}",
                status=413,
                field=self._name,
            )
        self._value += data[start:end]

    def on_part_end(self) -> None:
        if self._in_file:
            return
        try:
            self.fields[self._name] = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise FormError(f"{self._name} is not valid UTF-8", field=self._name) from None

    def on_end(self) -> None:
        self.ended = True


async def read_multipart(
    request: Request, boundary: bytes, reader: PartReader, upload: Path, max_body_bytes: int
) -> None:
    """Feed the body to the parser, counting bytes, and append file bytes to `upload`."""
    try:
        parser = MultipartParser(boundary, reader.callbacks())
    except FormParserError as exc:
        raise FormError("the multipart boundary is too long", status=400) from exc
    received = 0
    spool: anyio.AsyncFile[bytes] | None = None
    try:
        idle_timeout_s = reader.limits.body_idle_timeout_s
        async with aclosing(body_chunks(request, idle_timeout_s)) as body:
            async for chunk in body:
                # Counted here, not trusted from Content-Length, so chunked bodies are capped.
                received += len(chunk)
                if received > max_body_bytes:
                    raise _too_large(max_body_bytes)
                _parse(parser, chunk)
                if not reader.parts and received > reader.limits.max_preamble_bytes:
                    raise FormError(
                        "no multipart part begins in the first "
                        f"{describe_size(reader.limits.max_preamble_bytes)} of the body",
                        status=400,
                    )
                if reader.pending:
                    if spool is None:
                        spool = await anyio.open_file(upload, "xb")
                    await spool.write(bytes(reader.pending))
                    reader.pending.clear()
    finally:
        if spool is not None:
            await spool.aclose()
    if not reader.ended:
        raise FormError("the multipart body ended before its closing boundary", status=400)


def _parse(parser: MultipartParser, chunk: bytes) -> None:
    """Feed one chunk to the parser; its own errors mean the body is malformed."""
    try:
        parser.write(chunk)
    except FormParserError as exc:
        raise FormError("the body is not valid multipart/form-data", status=400) from exc
