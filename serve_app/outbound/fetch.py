"""Downloading the audio a caller names by `audio_url`, within limits on time, size and hops.

`fetch_audio` streams an http(s) response to a file, counting bytes as they arrive, so a
huge or endless body is refused without filling memory or disk, and one deadline covers
the whole download however slowly the server sends. Redirects are followed by hand so
that every hop's URL passes `check_target`, and the session is a guarded one
(serve_app.outbound.netguard), so no hop reaches an address the `OutboundPolicy` refuses. Failures
raise FetchError with a message the caller can act on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin

import aiohttp

from serve_app.outbound.netguard import (
    DEFAULT_POLICY,
    OutboundError,
    OutboundPolicy,
    check_url,
    guarded_session,
    refusal,
)

# Re-exported: the form reader checks a URL's syntax with it before any task exists.
from serve_app.outbound.netguard import url_problem as url_problem

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one download; `timeout_s` covers every hop and the whole body."""

    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    max_bytes: int = 500 * 1024**2
    max_redirects: int = 3

    def __post_init__(self) -> None:
        """Refuse limits that would let no download through."""
        if min(self.timeout_s, self.connect_timeout_s, self.max_bytes) <= 0:
            raise ValueError("fetch timeouts and max_bytes must be positive")
        if self.max_redirects < 0:
            raise ValueError("max_redirects must not be negative")


class FetchError(Exception):
    """The audio could not be downloaded; the message says why in the caller's terms."""


def describe_size(size: int) -> str:
    """Write a byte count as people read it: "500 MB", "64 KB", "900 bytes"."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            return f"{round(size / scale, 1):g} {unit}"
    return f"{size} bytes"


def check_target(
    url: str, policy: OutboundPolicy = DEFAULT_POLICY, *, what: str = "audio_url"
) -> None:
    """Refuse a URL the service must not fetch (its syntax, port, or a literal IP host the
    policy refuses); called for the first URL and every redirect. A host name's addresses
    are checked when the guarded session resolves it."""
    try:
        check_url(url, policy, what=what)
    except OutboundError as exc:
        raise FetchError(str(exc)) from None


async def fetch_audio(
    url: str,
    dest: Path,
    limits: FetchLimits = FetchLimits(),
    *,
    session: aiohttp.ClientSession | None = None,
    policy: OutboundPolicy = DEFAULT_POLICY,
) -> int:
    """Download `url` into `dest` and return the bytes written; on any failure remove `dest`.

    `policy` says where the download and its redirects may connect; the default refuses
    private and local addresses. A given `session` is used and left open; it must come from
    `netguard.guarded_session` with the same policy, since only a guarded session checks the
    addresses a host name resolves to. Without one a guarded session lives for this call.
    """
    try:
        async with asyncio.timeout(limits.timeout_s):
            if session is not None:
                return await _follow(session, url, dest, limits, policy)
            async with guarded_session(policy) as own:
                return await _follow(own, url, dest, limits, policy)
    except BaseException as exc:
        dest.unlink(missing_ok=True)
        # aiohttp's own timeouts are turned into FetchError inside, so a bare TimeoutError
        # here can only be the overall deadline.
        if isinstance(exc, TimeoutError):
            raise FetchError(f"audio_url took longer than {limits.timeout_s:g} s") from exc
        raise


async def _follow(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    limits: FetchLimits,
    policy: OutboundPolicy,
) -> int:
    """GET `url`, following redirects by hand up to the limit, and save the final body."""
    what = "audio_url"
    check_target(url, policy, what=what)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=limits.connect_timeout_s)
    for _ in range(limits.max_redirects + 1):
        try:
            async with session.get(url, allow_redirects=False, timeout=timeout) as response:
                if response.status not in _REDIRECTS:
                    _check_response(response, limits.max_bytes)
                    return await _save(response, dest, limits.max_bytes)
                url = _redirect_target(response)
        except aiohttp.ClientError as exc:
            raise _client_failure(exc, limits, what) from exc
        what = "a redirect from audio_url"
        check_target(url, policy, what=what)
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


def _client_failure(exc: aiohttp.ClientError, limits: FetchLimits, what: str) -> FetchError:
    """Translate an aiohttp error into a message about audio_url, without internals; `what`
    names the URL that was being fetched ("a redirect from audio_url")."""
    refused = refusal(exc)
    if refused is not None:
        return FetchError(f"{what} {refused.reason}")
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
