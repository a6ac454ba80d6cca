"""HTTP/1.1 over raw sockets, for tests that need what a library client hides: headers
sent a byte at a time, a connection's source address, how much of a body the server
took before it stopped reading, and whether it closed the connection."""

from __future__ import annotations

import select
import socket
import time

# A request whose headers never end: the blank line that would end them is never sent.
ENDLESS_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: " + b"a" * 4096


def readable(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the server has sent something, or closed, within `timeout_s` (poll, not
    select: a test with hundreds of sockets has descriptors past select's 1024)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout_s) * 1000))


def connect(port: int, source: str = "127.0.0.1", timeout_s: float = 30.0) -> socket.socket:
    """A connection to 127.0.0.1:`port` from `source` (any 127.x.y.z address works)."""
    sock = socket.socket()
    sock.settimeout(timeout_s)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket, timeout_s: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    deadline = time.monotonic() + timeout_s
    answer = bytearray()
    while time.monotonic() < deadline:
        if not readable(sock, deadline - time.monotonic()):
            break
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return bytes(answer)
        if not data:
            return bytes(answer)
        answer += data
    raise AssertionError(f"the server did not close the connection in {timeout_s} s")


def trickle_until_closed(
    sock: socket.socket, data: bytes, pace_s: float, timeout_s: float
) -> tuple[float, bytes]:
    """Send `data` a byte every `pace_s` until the server closes the connection; the
    seconds that took, and what the server sent."""
    started = time.monotonic()
    answer = bytearray()
    for byte in data:
        if readable(sock, pace_s):
            answer += read_until_closed(sock, timeout_s)
            return time.monotonic() - started, bytes(answer)
        if time.monotonic() - started > timeout_s:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - started, bytes(answer)
    raise AssertionError(f"the server kept the connection open for {timeout_s} s")


def status_of(answer: bytes) -> int:
    """The status code of a response's first line."""
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer[9:12])


def header_of(answer: bytes, name: bytes) -> bytes | None:
    """A response header's value, if present (the name in lower case)."""
    head = answer.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def get(port: int, path: str, source: str = "127.0.0.1", headers: str = "") -> bytes:
    """A whole GET on a connection of its own, asking the server to close it after."""
    with connect(port, source) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
        sock.sendall(request.encode())
        return read_until_closed(sock)


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, leaving the connection as the server
    leaves it."""
    answer = bytearray()
    while b"\r\n\r\n" not in answer:
        data = sock.recv(65536)
        assert data, f"the connection closed mid-response: {bytes(answer)!r}"
        answer += data
    length = int(header_of(bytes(answer), b"content-length") or b"0")
    head_length = answer.index(b"\r\n\r\n") + 4
    while len(answer) < head_length + length:
        data = sock.recv(65536)
        assert data, "the connection closed mid-body"
        answer += data
    return bytes(answer)
