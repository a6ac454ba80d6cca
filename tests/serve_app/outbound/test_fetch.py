"""Tests of serve_app.outbound.fetch against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from serve_app.outbound.fetch import (
    FetchError,
    FetchLimits,
    check_target,
    describe_size,
    fetch_audio,
)
from serve_app.outbound.netguard import OutboundPolicy, guarded_session
from tests.serve_app.loopback import serve_on_loopback

BODY = os.urandom(300_000)
DEFAULTS = FetchLimits()
# The servers here are on loopback, which the default policy refuses (test_netguard.py).
LOOPBACK = OutboundPolicy(allowed_networks=("127.0.0.0/8", "::1/128"))
IPV4_LOOPBACK = OutboundPolicy(allowed_networks=("127.0.0.0/8",))
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AudioServer:
    """Routes that misbehave in the ways fetch_audio must survive; records the paths asked for."""

    def __init__(self) -> None:
        self.requested: list[str] = []
        # Handlers that would stream forever wait on this; it is set before shutdown.
        self.stop = asyncio.Event()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/song", self.song),
            web.get("/missing", self.missing),
            web.get("/declared-huge", self.declared_huge),
            web.get("/chunked-huge", self.chunked_huge),
            web.get("/trickle", self.trickle),
            web.get("/hop/{left}", self.hop),
            web.get("/to-ftp", self.to_ftp),
            web.get("/redirect", self.redirect),
            web.get("/echo", self.echo),
        ]

    @web.middleware
    async def record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requested.append(request.path)
        return await handler(request)

    async def song(self, request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="audio/wav")

    async def missing(self, request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    async def declared_huge(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 10 * 1024**2
        await response.prepare(request)
        await response.write(b"\x00" * 1000)
        await self.stop.wait()
        return response

    async def chunked_huge(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(10):
            await response.write(b"\x00" * 1000)
        await self.stop.wait()
        return response

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        while not self.stop.is_set():
            await response.write(b"\x00")
            # The slowness is the behaviour under test, not a wait for another task.
            await asyncio.sleep(0.02)
        return response

    async def hop(self, request: web.Request) -> web.Response:
        left = int(request.match_info["left"])
        if left == 0:
            return web.Response(body=BODY)
        raise web.HTTPFound(f"/hop/{left - 1}")

    async def to_ftp(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("ftp://127.0.0.1/song.wav")

    async def redirect(self, request: web.Request) -> web.Response:
        """A redirect to the decoded `to` parameter, written as given."""
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def echo(self, request: web.Request) -> web.Response:
        """A redirect to the raw query string, as a server that echoes it back sends: the
        client percent-encoded it, brackets included."""
        return web.Response(status=302, headers={"Location": request.raw_path.split("?", 1)[1]})


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[str, AudioServer]]:
    """Run an AudioServer on a free loopback port; yield its base URL and itself."""
    server = AudioServer()
    app = web.Application(middlewares=[server.record])
    app.add_routes(server.routes())
    async with serve_on_loopback(app) as url:
        try:
            yield url, server
        finally:
            server.stop.set()  # ends the handlers that wait, so the server can stop


async def fetch_from(path: str, dest: Path, limits: FetchLimits) -> tuple[int, AudioServer]:
    """Serve, fetch `path` into `dest`, and return the byte count and the server."""
    async with serving() as (base, server):
        return await fetch_audio(base + path, dest, limits, policy=LOOPBACK), server


def refused(path: str, dest: Path, limits: FetchLimits = DEFAULTS) -> str:
    """Fetch `path`, expect FetchError, check `dest` is gone and return the message."""
    with pytest.raises(FetchError) as caught:
        asyncio.run(fetch_from(path, dest, limits))
    assert not dest.exists()
    return str(caught.value)


def test_body_is_saved_exactly(tmp_path: Path) -> None:
    dest = tmp_path / "song.wav"
    written, _ = asyncio.run(fetch_from("/song", dest, DEFAULTS))
    assert written == len(BODY)
    assert dest.read_bytes() == BODY


def test_given_session_is_used_and_left_open(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, bool]:
        async with serving() as (base, _), guarded_session(LOOPBACK) as session:
            written = await fetch_audio(
                base + "/song", tmp_path / "a.wav", session=session, policy=LOOPBACK
            )
            return written, session.closed

    assert asyncio.run(scenario()) == (len(BODY), False)
    assert (tmp_path / "a.wav").read_bytes() == BODY


def test_error_status_is_refused(tmp_path: Path) -> None:
    assert refused("/missing", tmp_path / "a.wav") == "audio_url answered HTTP 404"


def test_declared_length_over_cap_is_refused_before_reading(tmp_path: Path) -> None:
    # The server never finishes this body, so reading it would end in the timeout instead.
    limits = FetchLimits(max_bytes=5000, timeout_s=2.0)
    message = refused("/declared-huge", tmp_path / "a.wav", limits)
    assert message == "audio_url is larger than 4.9 KB"


def test_chunked_body_over_cap_is_refused_mid_stream(tmp_path: Path) -> None:
    limits = FetchLimits(max_bytes=5000, timeout_s=2.0)
    message = refused("/chunked-huge", tmp_path / "a.wav", limits)
    assert message == "audio_url is larger than 4.9 KB"


def test_endless_trickle_stops_at_the_total_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    message = refused("/trickle", tmp_path / "a.wav", FetchLimits(timeout_s=0.5))
    assert message == "audio_url took longer than 0.5 s"
    assert time.monotonic() - started < 5.0


def test_redirects_are_followed_up_to_the_cap(tmp_path: Path) -> None:
    dest = tmp_path / "a.wav"
    written, server = asyncio.run(fetch_from("/hop/3", dest, FetchLimits(max_redirects=3)))
    assert written == len(BODY)
    assert server.requested == ["/hop/3", "/hop/2", "/hop/1", "/hop/0"]


def test_redirects_past_the_cap_are_refused(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, list[str]]:
        async with serving() as (base, server):
            with pytest.raises(FetchError) as caught:
                await fetch_audio(
                    base + "/hop/4",
                    tmp_path / "a.wav",
                    FetchLimits(max_redirects=3),
                    policy=LOOPBACK,
                )
            return str(caught.value), server.requested

    message, requested = asyncio.run(scenario())
    assert message == "audio_url redirected more than 3 times"
    assert requested == ["/hop/4", "/hop/3", "/hop/2", "/hop/1"]
    assert not (tmp_path / "a.wav").exists()


def test_redirect_to_ftp_is_refused(tmp_path: Path) -> None:
    message = refused("/to-ftp", tmp_path / "a.wav")
    assert message == "a redirect from audio_url must use http or https, not 'ftp'"


def test_a_redirect_to_a_refused_ipv6_literal_names_the_address(tmp_path: Path) -> None:
    # ::1 is loopback like the server, but outside the one network this policy allows.
    path = "/redirect?to=http://[::1]:8000/song.wav"

    async def scenario() -> str:
        async with serving() as (base, _):
            with pytest.raises(FetchError) as caught:
                await fetch_audio(base + path, tmp_path / "a.wav", policy=IPV4_LOOPBACK)
            return str(caught.value)

    assert asyncio.run(scenario()) == (
        "a redirect from audio_url points to ::1, a loopback address, "
        "which this service does not reach"
    )
    assert not (tmp_path / "a.wav").exists()


def test_a_redirect_with_percent_encoded_ipv6_brackets_says_so(tmp_path: Path) -> None:
    # The client sends "[" and "]" of the query as %5B and %5D (RFC 3986); the server echoes
    # them into its Location, where "%5B::1%5D" is no address.
    async def scenario() -> tuple[str, list[str]]:
        async with serving() as (base, server):
            with pytest.raises(FetchError) as caught:
                await fetch_audio(
                    base + "/echo?http://[::1]:8000/song.wav",
                    tmp_path / "a.wav",
                    policy=IPV4_LOOPBACK,
                )
            return str(caught.value), server.requested

    message, requested = asyncio.run(scenario())
    assert message == (
        "a redirect from audio_url writes the brackets of its IPv6 host percent-encoded "
        "('%5B::1%5D:8000'), which no URL parser reads as an address; write them plainly, "
        "as in http://[::1]/"
    )
    assert requested == ["/echo"]


def test_refused_connection_is_reported(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dest = tmp_path / "a.wav"
    with pytest.raises(FetchError, match=r"^could not connect to audio_url host$"):
        asyncio.run(fetch_audio(f"http://127.0.0.1:{port}/song", dest, policy=LOOPBACK))
    assert not dest.exists()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/a.mp3", "must use http or https, not 'ftp'"),
        ("https://user@example.com/a.mp3", "must not contain a user name or password"),
        ("http:///a.mp3", "must name a host"),
        ("http://example.com:99999/", "is not a valid URL"),
        ("http://example.com/a b.mp3", "contains spaces or control characters"),
    ],
)
def test_check_target_refuses_bad_urls(url: str, problem: str) -> None:
    with pytest.raises(FetchError) as caught:
        check_target(url)
    assert str(caught.value) == f"audio_url {problem}"


def test_check_target_accepts_http_and_https() -> None:
    check_target("https://example.com/a.mp3")
    check_target("HTTP://127.0.0.1:8080/a.mp3?x=1", LOOPBACK)


def test_check_target_refuses_what_the_policy_refuses() -> None:
    with pytest.raises(FetchError) as caught:
        check_target("http://169.254.169.254/latest/meta-data/")
    assert str(caught.value) == (
        "audio_url points to 169.254.169.254, a link-local address, "
        "which this service does not reach"
    )
    with pytest.raises(FetchError) as caught:
        check_target("https://example.com:22/", OutboundPolicy(allowed_ports=(443,)), what="X")
    assert str(caught.value) == "X uses port 22, which this service does not connect to"


@pytest.mark.parametrize(
    ("size", "words"),
    [(500 * 1024**2, "500 MB"), (64 * 1024, "64 KB"), (5000, "4.9 KB"), (900, "900 bytes")],
)
def test_describe_size(size: int, words: str) -> None:
    assert describe_size(size) == words
