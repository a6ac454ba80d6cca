"""serve_app/http/unreadbody.py on a real uvicorn server: a response sent before the body was
read closes the connection; one sent after keeps it."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serve_app.http.unreadbody import CloseUnreadBody
from tests.serve_app.loopback import uvicorn_on_loopback
from tests.serve_app.rawhttp import (
    connect,
    header_of,
    read_response,
    read_until_closed,
    status_of,
)


async def refuse(_request: Request) -> Response:
    """Refuses without reading the body, as a 413 or a 401 does."""
    return JSONResponse({"success": False}, status_code=413)


async def accept(request: Request) -> Response:
    """Reads the whole body first."""
    return JSONResponse({"read": len(await request.body())})


APP = CloseUnreadBody(
    Starlette(
        routes=[
            Route("/refuse", refuse, methods=["GET", "POST"]),
            Route("/accept", accept, methods=["GET", "POST"]),
        ]
    )
)


def request(path: str, body: bytes | None, *, chunked: bool = False) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n"
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    if chunked:
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + (
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_a_response_before_the_body_ends_closes_the_connection() -> None:
    with uvicorn_on_loopback(APP) as port:
        for chunked in (False, True):
            with connect(port) as sock:
                # Only the headers and part of the body: the rest never comes.
                sock.sendall(request("/refuse", b"x" * 100_000, chunked=chunked)[:50_000])
                answer = read_until_closed(sock)
            assert status_of(answer) == 413
            assert header_of(answer, b"connection") == b"close"


def test_responses_after_the_body_or_without_one_keep_the_connection() -> None:
    with uvicorn_on_loopback(APP) as port, connect(port) as sock:
        for path, body, chunked in (
            ("/accept", b"x" * 100_000, False),
            ("/accept", b"y" * 1000, True),
            ("/refuse", None, False),  # a GET: no body to leave unread
            ("/accept", b"", False),
        ):
            sock.sendall(request(path, body, chunked=chunked))
            answer = read_response(sock)
            assert header_of(answer, b"connection") is None, (path, answer)
        assert status_of(answer) == 200
