"""The header timeout and connection bounds of serve_app/http/connguard.py, on a real uvicorn
server on loopback, driven by raw sockets."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, ExitStack

from starlette.types import Receive, Scope, Send

from serve_app.http.connguard import ConnectionLimits, GuardedHttpToolsProtocol, guarded_protocol
from tests.serve_app.loopback import uvicorn_on_loopback
from tests.serve_app.rawhttp import (
    ENDLESS_HEADERS,
    connect,
    get,
    read_until_closed,
    status_of,
    trickle_until_closed,
)
from tests.waiting import wait_until

# Slack for a loaded machine: how much later than its limit a timer may fire.
LATE_S = 3.0


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """A one-line answer to any request."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def serving(
    protocol: type[GuardedHttpToolsProtocol], keep_alive_s: int = 5
) -> AbstractContextManager[int]:
    """uvicorn with a guarded protocol, answering every request; yields the port."""
    return uvicorn_on_loopback(
        hello, http=protocol, timeout_keep_alive=keep_alive_s, access_log=False
    )


def test_headers_slower_than_the_timeout_get_408_and_a_closed_connection() -> None:
    limits = ConnectionLimits(header_timeout_s=1.5)
    with serving(guarded_protocol(limits)) as port, connect(port) as silent, connect(port) as slow:
        took, answer = trickle_until_closed(slow, ENDLESS_HEADERS, 0.1, timeout_s=30)
        assert status_of(answer) == 408
        assert 1.5 - 0.1 <= took < 1.5 + LATE_S, took
        # A connection that never sends a byte is closed by the same timer.
        assert status_of(read_until_closed(silent, timeout_s=LATE_S)) == 408


def test_headers_within_the_timeout_are_answered() -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    protocol = guarded_protocol(ConnectionLimits(header_timeout_s=4.0))
    with serving(protocol) as port, connect(port) as client:
        for piece in (request[:10], request[10:20], request[20:]):
            client.sendall(piece)
            time.sleep(0.2)  # the client's own pace: headers spread over 0.4 s
        assert status_of(read_until_closed(client)) == 200


def test_a_kept_alive_connection_is_timed_out_on_slow_headers_and_idle() -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    protocol = guarded_protocol(ConnectionLimits(header_timeout_s=1.5))
    with serving(protocol, keep_alive_s=3) as port, connect(port) as slow, connect(port) as idle:
        for client in (slow, idle):
            client.sendall(request)
            assert client.recv(65536).endswith(b"ok")
        # The next request's headers get the header timeout from their first byte.
        took, answer = trickle_until_closed(slow, ENDLESS_HEADERS, 0.1, timeout_s=30)
        assert status_of(answer) == 408
        assert 1.5 - 0.1 <= took < 1.5 + LATE_S, took
        # uvicorn's keep-alive timeout closes the idle one, without an answer.
        assert read_until_closed(idle, timeout_s=3 + LATE_S) == b""


def test_connections_over_the_bound_per_client_are_refused_at_once() -> None:
    protocol = guarded_protocol(ConnectionLimits(header_timeout_s=60, max_connections_per_client=3))
    with serving(protocol) as port, ExitStack() as held:
        first = [held.enter_context(connect(port, "127.0.0.1")) for _ in range(3)]
        with connect(port, "127.0.0.1") as fourth:
            answer = read_until_closed(fourth, timeout_s=LATE_S)
        assert status_of(answer) == 503
        assert b"more than 3 open connections from one address" in answer
        assert status_of(get(port, "/", source="127.0.0.2")) == 200  # another client
        first[0].close()
        # Once the server has seen the close (and the refused fourth's), 127.0.0.1 has room
        # again.
        wait_until(
            lambda: protocol.per_client["127.0.0.1"] < 3,
            timeout_s=10,
            failure="the closed connection was never uncounted",
        )
        assert status_of(get(port, "/", source="127.0.0.1")) == 200


def test_connections_over_the_bound_in_all_are_refused_at_once() -> None:
    limits = ConnectionLimits(header_timeout_s=60, max_connections=4, max_connections_per_client=0)
    with serving(guarded_protocol(limits)) as port, ExitStack() as held:
        for n in range(4):
            held.enter_context(connect(port, f"127.0.0.{n + 1}"))
        with connect(port, "127.0.0.9") as fifth:
            answer = read_until_closed(fifth, timeout_s=LATE_S)
        assert status_of(answer) == 503
        assert b"too many open connections" in answer
