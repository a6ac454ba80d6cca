"""Tests of serve_app.http.form: real multipart parsing through a tiny Starlette app."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message

from models.stems.catalogue import ALL_STEMS, DEFAULT_STEMS
from models.stems.planner import make_plan
from models.stems.routing import Routing, load_routing
from serve_app.http.errors import answer
from serve_app.http.form import FormError, UploadLimits, read_extraction_form

PATH = "/api/public/v1/Extraction"
BOUNDARY = "stemsplit-test-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
ROUTING: Routing = load_routing()
DEFAULTS = UploadLimits()
SERVED = ("vocals", "guitar", "drums", "piano", "bass", "instrumental")

# A part is (name, value, filename); a filename makes it a file part.
Part = tuple[str, str | bytes, str | None]


def encode(parts: list[Part]) -> bytes:
    """Encode parts as a multipart/form-data body with BOUNDARY."""
    body = bytearray()
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + (value.encode() if isinstance(value, str) else value) + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return bytes(body)


def make_app(spool_dir: Path, limits: UploadLimits) -> Starlette:
    """An app whose one route returns the parsed form as JSON, or the form error."""

    async def extraction(request: Request) -> Response:
        try:
            form = await read_extraction_form(request, ROUTING, spool_dir, limits)
        except FormError as error:
            return answer(error)
        fields = asdict(form)
        assert form.plan == make_plan(form.stems, ROUTING)  # planned once, here
        fields["stems"] = fields.pop("plan")["stems"]
        fields["upload"] = None if form.upload is None else str(form.upload)
        return JSONResponse(fields)

    return Starlette(routes=[Route(PATH, extraction, methods=["POST"])])


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


def post(spool_dir: Path, parts: list[Part], limits: UploadLimits = DEFAULTS) -> Any:
    """POST the parts and return the httpx response."""
    client = TestClient(make_app(spool_dir, limits))
    return client.post(PATH, content=encode(parts), headers={"content-type": CONTENT_TYPE})


def test_musicgpt_sample_shape_parses(spool_dir: Path) -> None:
    audio = b"ID3 not really an mp3"
    response = post(
        spool_dir,
        [
            ("audio_url", "", None),
            ("stems", '["vocals", "instrumental"]', None),
            ("preprocessing_options", '["Denoise"]', None),
            ("audio_file", audio, "song.mp3"),
        ],
    )
    assert response.status_code == 200, response.text
    form = response.json()
    assert form["stems"] == ["vocals", "instrumental"]
    assert form["preprocessing"] == ["Denoise"]
    assert form["output_format"] == "wav"
    assert form["audio_url"] is None
    assert form["webhook_url"] is None
    assert form["filename"] == "song.mp3"
    upload = Path(form["upload"])
    assert upload.parent == spool_dir
    assert upload.read_bytes() == audio


def test_file_is_spooled_with_exact_bytes(spool_dir: Path) -> None:
    audio = os.urandom(300_000) + b"\r\n--" + BOUNDARY.encode()[:-1] + b"\r\n"
    response = post(spool_dir, [("audio_file", audio, "take 1.wav")])
    assert response.status_code == 200, response.text
    assert [path.read_bytes() for path in spool_dir.iterdir()] == [audio]
    assert response.json()["filename"] == "take 1.wav"


@pytest.mark.parametrize("stems", [None, "", "[]", "  "])
def test_defaults(spool_dir: Path, stems: str | None) -> None:
    parts: list[Part] = [("audio_url", "https://example.com/song.mp3", None)]
    if stems is not None:
        parts.append(("stems", stems, None))
    response = post(spool_dir, parts)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "stems": list(DEFAULT_STEMS),
        "preprocessing": [],
        "output_format": "wav",
        "audio_url": "https://example.com/song.mp3",
        "upload": None,
        "filename": None,
        "webhook_url": None,
    }
    assert list(spool_dir.iterdir()) == []


def test_options_are_normalised(spool_dir: Path) -> None:
    response = post(
        spool_dir,
        [
            ("audio_url", "http://example.com/a.wav", None),
            ("stems", '["drums", "bass", "drums"]', None),
            ("preprocessing_options", '["dereverb", "DENOISE"]', None),
            ("output_format", "FLAC", None),
            ("webhook_url", "https://hooks.example.com/done", None),
            # What a browser sends for a file input left empty: no bytes, no filename.
            ("audio_file", b"", ""),
        ],
    )
    assert response.status_code == 200, response.text
    form = response.json()
    assert form["stems"] == ["drums", "bass"]
    assert form["preprocessing"] == ["Denoise", "Dereverb"]
    assert form["output_format"] == "flac"
    assert form["webhook_url"] == "https://hooks.example.com/done"
    assert form["upload"] is None


AUDIO: Part = ("audio_file", b"RIFF....WAVE", "a.wav")

REFUSED: list[tuple[list[Part], str | None, list[str]]] = [
    ([("stems", "[drums", None), AUDIO], "stems", ["not valid JSON", *SERVED]),
    ([("stems", "[" * 5000 + "]" * 5000, None), AUDIO], "stems", ["not valid JSON"]),
    ([("stems", '{"drums": 1}', None), AUDIO], "stems", ["JSON list"]),
    ([("stems", '["drums", 2]', None), AUDIO], "stems", ["JSON list"]),
    ([AUDIO, ("stems", '["kazoo"]', None)], "stems", ["'kazoo'", *ALL_STEMS]),
    ([AUDIO, ("stems", '["keys"]', None)], "stems", ["'keys'", "serves: " + ", ".join(SERVED)]),
    (
        [AUDIO, ("preprocessing_options", '["Autotune"]', None)],
        "preprocessing_options",
        ["'Autotune'", "Denoise, Deecho, Dereverb"],
    ),
    (
        [AUDIO, ("preprocessing_options", '"Denoise"', None)],
        "preprocessing_options",
        ["JSON list"],
    ),
    ([AUDIO, ("output_format", "ogg", None)], "output_format", ["'ogg'", "wav, flac, mp3"]),
    ([("audio_url", "ftp://example.com/a.mp3", None)], "audio_url", ["http or https"]),
    ([("audio_url", "https://user:pw@example.com/a", None)], "audio_url", ["user name"]),
    ([("audio_url", "example.com/a.mp3", None)], "audio_url", ["http://"]),
    ([("audio_url", "https:///a.mp3", None)], "audio_url", ["host"]),
    ([("audio_url", "https://example.com/" + "a" * 2048, None)], "audio_url", ["2048"]),
    ([AUDIO, ("webhook_url", "file:///etc/passwd", None)], "webhook_url", ["http or https"]),
    (
        [("audio_url", "http://[::1]:8000/a.mp3", None)],
        "audio_url",
        ["audio_url points to ::1, a loopback address, which this service does not reach"],
    ),
    (
        [AUDIO, ("webhook_url", "http://169.254.169.254/hook", None)],
        "webhook_url",
        ["points to 169.254.169.254, a link-local address, which this service does not reach"],
    ),
    ([("audio_url", "https://example.com/a.mp3", None), AUDIO], None, ["only one"]),
    ([("stems", '["drums"]', None)], None, ["audio_url or audio_file"]),
    ([("audio_file", b"", "empty.wav")], "audio_file", ["audio_file is empty"]),
    (
        [AUDIO, ("prompt", "make it louder", None)],
        "prompt",
        ["unknown field 'prompt'", "audio_url, audio_file, stems, preprocessing_options"],
    ),
    ([AUDIO, ("stems", "[]", None), ("stems", "[]", None)], "stems", ["more than once"]),
    ([AUDIO, AUDIO], "audio_file", ["more than once"]),
    ([AUDIO, ("stems", b"\xff\xfe", None)], "stems", ["UTF-8"]),
]


@pytest.mark.parametrize(("parts", "field", "phrases"), REFUSED)
def test_refused_with_422_naming_the_field(
    spool_dir: Path, parts: list[Part], field: str | None, phrases: list[str]
) -> None:
    response = post(spool_dir, parts)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["success"] is False
    assert body["field"] == field
    for phrase in phrases:
        assert phrase in body["error"]
    assert list(spool_dir.iterdir()) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no body, no Content-Type: what `requests.post(url)` sends
        {"content-length": "0"},
        {"content-length": "0", "content-type": CONTENT_TYPE},
        {"content-length": "0", "content-type": "application/x-www-form-urlencoded"},
        {"content-length": "0", "content-type": "application/json"},
    ],
)
def test_empty_body_is_422_like_a_form_without_audio(
    spool_dir: Path, headers: dict[str, str]
) -> None:
    """MusicGPT answers 422 when neither audio_url nor audio_file is given, however the
    empty request is sent."""
    client = TestClient(make_app(spool_dir, DEFAULTS))
    empty = client.post(PATH, headers=headers)
    without_audio = post(spool_dir, [("stems", '["drums"]', None)])
    assert empty.status_code == without_audio.status_code == 422, empty.text
    assert empty.json() == without_audio.json()
    assert "audio_url or audio_file" in empty.json()["error"]


def test_a_body_without_a_content_type_is_400(spool_dir: Path) -> None:
    client = TestClient(make_app(spool_dir, DEFAULTS))
    response = client.post(PATH, content=b"audio_url=https://example.com/a.mp3")
    assert response.status_code == 400
    assert "multipart/form-data" in response.json()["error"]


def test_body_that_is_not_multipart_is_400(spool_dir: Path) -> None:
    client = TestClient(make_app(spool_dir, DEFAULTS))
    response = client.post(PATH, json={"audio_url": "https://example.com/a.mp3"})
    assert response.status_code == 400
    assert "multipart/form-data" in response.json()["error"]


def test_truncated_body_is_400_and_spools_nothing(spool_dir: Path) -> None:
    body = encode([AUDIO])
    client = TestClient(make_app(spool_dir, DEFAULTS))
    cut = body[: body.index(b"RIFF") + 6]
    response = client.post(PATH, content=cut, headers={"content-type": CONTENT_TYPE})
    assert response.status_code == 400
    assert "closing boundary" in response.json()["error"]
    assert list(spool_dir.iterdir()) == []


def test_too_many_fields_is_413(spool_dir: Path) -> None:
    parts: list[Part] = [
        ("audio_url", "https://example.com/a.mp3", None),
        ("stems", "[]", None),
        ("output_format", "wav", None),
    ]
    response = post(spool_dir, parts, UploadLimits(max_fields=2))
    assert response.status_code == 413
    assert "more than 2 fields" in response.json()["error"]
    assert post(spool_dir, parts[:2], UploadLimits(max_fields=2)).status_code == 200


def test_uploads_can_be_turned_off_with_max_files(spool_dir: Path) -> None:
    response = post(spool_dir, [AUDIO], UploadLimits(max_files=0))
    assert response.status_code == 413
    assert list(spool_dir.iterdir()) == []


def test_field_over_max_field_bytes_is_413(spool_dir: Path) -> None:
    stems = json.dumps(["drums"] * 20)
    assert 100 < len(stems) < 1000
    parts: list[Part] = [AUDIO, ("stems", stems, None)]
    response = post(spool_dir, parts, UploadLimits(max_field_bytes=100))
    assert response.status_code == 413
    assert response.json() == {
        "success": False,
        "error": "stems is larger than 100 bytes",
        "field": "stems",
    }
    assert list(spool_dir.iterdir()) == []
    assert post(spool_dir, parts, UploadLimits(max_field_bytes=1000)).status_code == 200


def post_scope(headers: dict[str, str]) -> dict[str, Any]:
    """The ASGI scope of a POST to the Extraction path with these headers."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(key.encode(), value.encode()) for key, value in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def call_app(
    app: Starlette, headers: dict[str, str], chunks: Iterator[bytes]
) -> tuple[int, dict[str, Any], int]:
    """Call the app over ASGI, sending `chunks` one message each as it asks for them.

    Returns the status, the JSON body and how many chunks the app asked for.
    """
    pulled = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(post_scope(headers), receive, send)
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return sent[0]["status"], json.loads(body), pulled


async def call_stalling(app: Starlette, headers: dict[str, str], first: bytes) -> tuple[int, str]:
    """Call the app over ASGI with a body that sends `first`, then nothing, never ending
    (a client gone quiet); the status and the error."""
    stalled = asyncio.Event()  # never set: the rest of the body never comes
    sent: list[Message] = []
    given = False

    async def receive() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": first, "more_body": True}
        await stalled.wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(post_scope(headers), receive, send), 10)
    body = json.loads(b"".join(message.get("body", b"") for message in sent[1:]))
    return sent[0]["status"], body["error"]


@pytest.mark.parametrize(
    ("headers", "first"),
    [
        ({"content-type": CONTENT_TYPE}, encode([AUDIO])[:60]),
        ({"content-type": "application/x-www-form-urlencoded"}, b"audio_url=http"),
        ({}, b""),  # no Content-Type: the reader waits to see whether a body comes
    ],
)
def test_a_body_that_stops_arriving_is_408(
    spool_dir: Path, headers: dict[str, str], first: bytes
) -> None:
    app = make_app(spool_dir, UploadLimits(body_idle_timeout_s=0.2))
    status, message = asyncio.run(call_stalling(app, headers, first))
    assert status == 408
    assert message == "the request body stalled: nothing arrived for 0.2 seconds"
    assert list(spool_dir.iterdir()) == []


def test_declared_length_over_cap_is_413_without_reading(spool_dir: Path) -> None:
    def unread() -> Iterator[bytes]:
        raise AssertionError("the body was read")
        yield b""

    app = make_app(spool_dir, UploadLimits(max_body_bytes=1024))
    headers = {"content-type": CONTENT_TYPE, "content-length": "1025"}
    status, body, _ = asyncio.run(call_app(app, headers, unread()))
    assert status == 413
    assert body == {
        "success": False,
        "error": "the request body is larger than 1 KB",
        "field": None,
    }


def test_chunked_body_over_cap_is_refused_as_it_streams(spool_dir: Path) -> None:
    head = encode([("audio_file", b"", "big.wav")]).split(b"\r\n--" + BOUNDARY.encode() + b"--")[0]

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(1000):
            yield b"\x01" * 1024

    app = make_app(spool_dir, UploadLimits(max_body_bytes=8 * 1024))
    status, body, pulled = asyncio.run(call_app(app, {"content-type": CONTENT_TYPE}, chunks()))
    assert status == 413
    assert body["error"] == "the request body is larger than 8 KB"
    assert pulled <= 9
    assert list(spool_dir.iterdir()) == []


def test_urlencoded_form_without_a_file_parses(spool_dir: Path) -> None:
    """`requests.post(url, data={...})` with no file sends a urlencoded body."""
    client = TestClient(make_app(spool_dir, DEFAULTS))
    response = client.post(
        PATH,
        data={"audio_url": "https://example.com/a.mp3", "stems": '["vocals"]', "webhook_url": ""},
    )
    assert response.status_code == 200, response.text
    form = response.json()
    assert form["audio_url"] == "https://example.com/a.mp3"
    assert form["stems"] == ["vocals"]
    assert form["webhook_url"] is None
    assert list(spool_dir.iterdir()) == []


def test_urlencoded_form_keeps_the_limits(spool_dir: Path) -> None:
    client = TestClient(make_app(spool_dir, UploadLimits(max_fields=2, max_field_bytes=100)))
    unknown = client.post(PATH, data={"audio_url": "https://example.com/a.mp3", "vox": "1"})
    assert unknown.status_code == 422 and unknown.json()["field"] == "vox"
    big = client.post(PATH, data={"audio_url": "https://example.com/a.mp3", "stems": "x" * 101})
    assert big.status_code == 413
    many = client.post(
        PATH, data={"audio_url": "https://a.example/b.mp3", "stems": "[]", "webhook_url": ""}
    )
    assert many.status_code in (400, 413)
    over_cap = client.post(
        PATH,
        content=b"stems=" + b"x" * 1000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert over_cap.status_code == 413


@pytest.mark.parametrize(
    ("limits", "body", "phrase"),
    [
        # python-multipart skips leading CRLFs itself (the CVE-2024-53981 flood): our cap.
        (UploadLimits(max_preamble_bytes=100), b"\r\n" * 100 + b"--" + BOUNDARY.encode(), "first"),
        (
            UploadLimits(max_part_headers=2),
            f"--{BOUNDARY}\r\n".encode() + b"X-A: 1\r\nX-B: 2\r\nX-C: 3\r\n\r\n",
            "more than 2 headers",
        ),
        (
            UploadLimits(max_header_bytes=64),
            f"--{BOUNDARY}\r\n".encode() + b"X-Long: " + b"y" * 100 + b"\r\n\r\n",
            "header is longer than 64 bytes",
        ),
    ],
    ids=["preamble", "part headers", "header line"],
)
def test_malformed_multipart_limits_are_400(
    spool_dir: Path, limits: UploadLimits, body: bytes, phrase: str
) -> None:
    client = TestClient(make_app(spool_dir, limits))
    response = client.post(PATH, content=body, headers={"content-type": CONTENT_TYPE})
    assert response.status_code == 400, response.text
    assert phrase in response.json()["error"]
    assert list(spool_dir.iterdir()) == []
