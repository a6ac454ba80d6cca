"""Connection limits for the HTTP server inside Serve's proxy (uvicorn with httptools).

uvicorn closes an idle connection only after a response (its keep-alive timeout): a
client that opens a connection and sends nothing, or sends its request headers a byte
at a time, holds a socket and a task for as long as it likes, and nothing bounds how
many connections one client opens. `GuardedHttpToolsProtocol` adds what uvicorn lacks:

- a header timeout: a request's headers must be complete within `header_timeout_s` of
  the connection opening (the first request) or of the request's first byte (later
  ones), else the server answers 408 and closes the connection;
- a bound on open connections, in all and per client address: a connection over either
  is answered 503 and closed at once, before anything is read from it.

Written for uvicorn 0.54's HttpToolsProtocol (serve_app/http/proxyguard.py checks the version
before installing it as uvicorn's "auto" protocol).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


@dataclass(frozen=True)
class ConnectionLimits:
    """Bounds on the connections one HTTP server accepts."""

    header_timeout_s: float = 10.0
    max_connections: int = 4096
    # 0: no bound. Behind a load balancer every connection comes from its few addresses.
    max_connections_per_client: int = 64


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and connection bounds; make a
    class per server with `guarded_protocol`."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    # Open connections per client address, shared by every connection of one server.
    per_client: ClassVar[Counter[str]] = Counter()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._counted_as: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "the server has too many open connections; try again later")
            return
        if self.client is not None:
            self._counted_as = self.client[0]
            self.per_client[self._counted_as] += 1
            bound = self.limits.max_connections_per_client
            if bound and self.per_client[self._counted_as] > bound:
                self._refuse(503, f"more than {bound} open connections from one address")
                return
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        self._uncount()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The websocket protocol takes the transport; this one hears no more of it.
        self._stop_header_timer()
        self._uncount()
        super().handle_websocket_upgrade()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_timer()  # a later request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._headers_timed_out
            )

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still being written (the slow headers are a pipelined next
            # request): a 408 would land inside it, so only close.
            self.transport.close()
            return
        self._refuse(408, "the request headers took too long")

    def _refuse(self, status: int, reason: str) -> None:
        """Answer `status` with `reason` and close, whatever the client has sent."""
        body = reason.encode()
        head = b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        length = b"content-length: %d\r\n\r\n" % len(body)
        self.transport.write(STATUS_LINE[status] + head + length + body)
        self.transport.close()

    def _uncount(self) -> None:
        if self._counted_as is not None:
            self.per_client[self._counted_as] -= 1
            if self.per_client[self._counted_as] <= 0:
                del self.per_client[self._counted_as]
            self._counted_as = None


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for one server: these limits, and its own per-client counts."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"limits": limits, "per_client": Counter()},
    )
