"""A real HTTP server on 127.0.0.1 for download tests: serves byte strings by path, and can
honour or ignore Range, cut the connection after some bytes, stall, or hide the length.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"bytes=(\d+)-")


@dataclass
class Behaviour:
    """How the server answers; tests change it between requests."""

    honour_range: bool = True
    cut_after: int | None = None  # body bytes sent before the connection is dropped
    cuts_left: int = 0  # how many more responses are cut
    stall_s: float = 0.0  # pause after the headers, before the body
    send_length: bool = True


@dataclass(frozen=True)
class SeenRequest:
    path: str
    range: str | None


@dataclass
class LoopbackServer:
    """The files it serves and redirects, how it behaves, and every request it saw."""

    files: dict[str, bytes]
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location
    behaviour: Behaviour = field(default_factory=Behaviour)
    seen: list[SeenRequest] = field(default_factory=list)
    base_url: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"


def _handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the tests read `seen` instead."""

        def do_GET(self) -> None:
            requested = self.headers.get("Range")
            server.seen.append(SeenRequest(self.path, requested))
            location = server.redirects.get(self.path.lstrip("/"))
            if location is not None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = server.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            behaviour = server.behaviour
            found = _RANGE.fullmatch(requested or "")
            start = int(found.group(1)) if found and behaviour.honour_range else 0
            if start and start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            if behaviour.send_length:
                self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.flush()
            if behaviour.stall_s and server.stop.wait(behaviour.stall_s):
                return
            payload = body[start:]
            if behaviour.cut_after is not None and behaviour.cuts_left > 0:
                behaviour.cuts_left -= 1
                payload = payload[: behaviour.cut_after]
            self.wfile.write(payload)
            self.wfile.flush()
            self.close_connection = True

    return Handler


@contextmanager
def serving(files: dict[str, bytes]) -> Iterator[LoopbackServer]:
    """Serve `files` on a free loopback port for the duration of the block."""
    state = LoopbackServer(files)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    host, port = httpd.server_address[:2]
    state.base_url = f"http://{host!s}:{port}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()
