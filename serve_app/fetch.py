"""Downloading the audio a caller names by `audio_url`, within limits on time, size and hops.

`fetch_audio` streams an http(s) response to a file, counting bytes as they arrive, so a
huge or endless body is refused without filling memory or disk, and one deadline covers
the whole download however slowly the server sends. Redirects are followed by hand so
that every hop's URL passes `check_target`, the one place that decides where the
service may connect. Failures raise FetchError with a message the caller can act on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import aiohttp

MAX_URL_LENGTH = 2048

_SCHEMES = frozenset({"http", "https"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one download; `timeout_s` covers every hop and the whole body."""

    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    max_bytes: int = 500 * 1024**2
    max_redirects: int = 3


class FetchError(Exception):
    """The audio could not be downloaded; the message says why in the caller's terms."""


def describe_size(size: int) -> str:
    """Write a byte count as people read it: "500 MB", "64 KB", "900 bytes"."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            return f"{round(size / scale, 1):g} {unit}"
    return f"{size} bytes"


def url_problem(url: str) -> str | None:
    """Say what is wrong with `url` as an http(s) target (e.g. "must name a host"), or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        return "contains spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    if not parts.scheme:
        return "must start with http:// or https://"
    if parts.scheme.lower() not in _SCHEMES:
        return f"must use http or https, not {parts.scheme[:20]!r}"
    if "@" in parts.netloc:
        return "must not contain a user name or password"
    if not parts.hostname:
        return "must name a host"
    if port == 0:
        return "must not use port 0"
    return None


def check_target(url: str, *, what: str = "audio_url") -> None:
    """Refuse a URL the service must not fetch; called for the first URL and every redirect."""
    problem = url_problem(url)
    if problem is not None:
        raise FetchError(f"{what} {problem}")


async def fetch_audio(
    url: str,
    dest: Path,
    limits: FetchLimits = FetchLimits(),
    *,
    session: aiohttp.ClientSession | None = None,
) -> int:
    """Download `url` into `dest` and return the bytes written; on any failure remove `dest`.

    A given `session` is used and left open; without one a session lives for this call.
    """
    try:
        async with asyncio.timeout(limits.timeout_s):
            if session is not None:
                return await _follow(session, url, dest, limits)
            async with aiohttp.ClientSession() as own:
                return await _follow(own, url, dest, limits)
    except BaseException as exc:
        dest.unlink(missing_ok=True)
        # aiohttp's own timeouts are turned into FetchError inside, so a bare TimeoutError
        # here can only be the overall deadline.
        if isinstance(exc, TimeoutError):
            raise FetchError(f"audio_url took longer than {limits.timeout_s:g} s") from exc
        raise


async def _follow(session: aiohttp.ClientSession, url: str, dest: Path, limits: FetchLimits) -> int:
    """GET `url`, following redirects by hand up to the limit, and save the final body."""
    check_target(url)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=limits.connect_timeout_s)
    for _ in range(limits.max_redirects + 1):
        try:
            async with session.get(url, allow_redirects=False, timeout=timeout) as response:
                if response.status not in _REDIRECTS:
                    _check_response(response, limits.max_bytes)
                    return await _save(response, dest, limits.max_bytes)
                url = _redirect_target(response)
        except aiohttp.ClientError as exc:
            raise _client_failure(exc, limits) from exc
        check_target(url, what="a redirect from audio_url")
    raise FetchError(f"audio_url redirected more than {limits.max_redirects} times")


def _redirect_target(response: aiohttp.ClientResponse) -> str:
    """Return the absolute URL a redirect response points at."""
    location = response.headers.get("Location")
    if not location:
        raise FetchError(f"audio_url answered HTTP {response.status} without a Location")
    return urljoin(str(response.url), location)


def _check_response(response: aiohttp.ClientResponse, max_bytes: int) -> None:
    """Refuse an error status, or a declared size over the cap, before reading the body."""
    if response.status != 200:
        raise FetchError(f"audio_url answered HTTP {response.status}")
    if response.content_length is not None and response.content_length > max_bytes:
        raise FetchError(f"audio_url is larger than {describe_size(max_bytes)}")


async def _save(response: aiohttp.ClientResponse, dest: Path, max_bytes: int) -> int:
    """Stream the body to `dest`, refusing it as soon as it passes `max_bytes`."""
    written = 0
    # The file is written in a worker thread so a slow disk never stalls the event loop.
    handle: BinaryIO = await asyncio.to_thread(dest.open, "wb")
    try:
        async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
            written += len(chunk)
            if written > max_bytes:
                raise FetchError(f"audio_url is larger than {describe_size(max_bytes)}")
            await asyncio.to_thread(handle.write, chunk)
    finally:
        await asyncio.to_thread(handle.close)
    return written


def _client_failure(exc: aiohttp.ClientError, limits: FetchLimits) -> FetchError:
    """Translate an aiohttp error into a message about audio_url, without internals."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return FetchError(
            f"could not connect to audio_url host within {limits.connect_timeout_s:g} s"
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return FetchError("could not connect to audio_url host: its TLS certificate is invalid")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return FetchError("could not connect to audio_url host")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return FetchError("audio_url closed the connection before the whole file arrived")
    return FetchError("audio_url could not be downloaded: the HTTP exchange failed")
