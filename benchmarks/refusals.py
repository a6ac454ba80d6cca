"""Memory of Serve's proxy and the Ingress around uploads over the cap, on the running
service, and how much of each body the client got to send.

    python -m benchmarks.refusals --url http://127.0.0.1:8000 --megabytes 64 \\
        --sequential 40 --concurrent 32 --rounds 1

Sends `--sequential` chunked multipart uploads of `--megabytes` MB one after another,
then `--rounds` times `--concurrent` of them at once, each on a socket of its own that
sends until the service stops taking the body. After each phase it prints the answers,
the MB each client got to send (min, median, max) and the resident memory of the HTTP
proxy listening on the URL's port and of the Ingress replica of the same Ray node, so
the service must run on this machine (`make run`). `--speed MB` first times one upload
of MB megabytes, which must be under the cap: the service reads it whole before it
refuses it (a body without a closing boundary).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import psutil

from benchmarks.soak import loopback_url
from benchmarks.soakclient import PREFIX

MB = 1024**2
BLOCK = b"\0" * 65536


def upload(host: str, port: int, path: str, key: str | None, megabytes: int) -> tuple[str, int]:
    """One chunked upload, sent until the server stops taking it; its status (or what
    ended it) and the body bytes the socket took."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        + (f"Authorization: {key}\r\n" if key else "")
        + "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="audio_file"; filename="a.wav"\r\n\r\n'
    taken = 0
    with socket.create_connection((host, port), timeout=300) as sock:
        try:
            sock.sendall(head.encode() + b"%x\r\n%s\r\n" % (len(part), part))
            for _ in range(megabytes * MB // len(BLOCK)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK))
                taken += len(BLOCK)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection
        try:
            answer = sock.recv(4096)
        except OSError as error:
            return type(error).__name__, taken
    return (answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "no answer"), taken


def service_processes(port: int, app: str) -> dict[str, psutil.Process]:
    """The proxy listening on `port` and the Ingress replica started by the same raylet."""
    for process in psutil.process_iter(["cmdline"]):
        if "ProxyActor" not in " ".join(process.info["cmdline"] or []):
            continue
        try:
            sockets = process.net_connections("tcp")
            listening = {each.laddr.port for each in sockets if each.status == "LISTEN"}
        except psutil.Error:
            continue
        if port in listening:
            raylet = process.parent()
            for sibling in raylet.children() if raylet else []:
                if f"ServeReplica:{app}:Ingress" in " ".join(sibling.cmdline()):
                    return {"proxy": process, "Ingress": sibling}
    raise SystemExit(f"no Serve proxy on port {port} with an Ingress of {app} on this machine")


def memory(processes: dict[str, psutil.Process]) -> str:
    """Resident MB of each process."""
    return ", ".join(f"{name} {p.memory_info().rss // MB} MB" for name, p in processes.items())


def phase(label: str, results: list[tuple[str, int]], processes: dict[str, psutil.Process]) -> None:
    """Print one phase's answers, what the clients sent, and the memory afterwards."""
    sent = sorted(taken / MB for _, taken in results)
    print(
        f"{label}: answers {sorted({status for status, _ in results})}; MB sent "
        f"min {sent[0]:.1f} median {statistics.median(sent):.1f} max {sent[-1]:.1f}; "
        f"after: {memory(processes)}",
        flush=True,
    )


def main() -> None:
    """Run the phases the arguments ask for."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="loopback only")
    parser.add_argument("--key", help="API key, sent as the Authorization header")
    parser.add_argument("--app", default="stemsplit", help="the Serve application's name")
    parser.add_argument("--megabytes", type=int, default=64, help="size of each upload")
    parser.add_argument("--sequential", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="of concurrent uploads")
    parser.add_argument("--speed", type=int, help="first time one upload of this many MB")
    args = parser.parse_args()
    base = urlsplit(loopback_url(args.url))
    host, port = base.hostname or "127.0.0.1", base.port or 80
    path = f"{base.path.rstrip('/')}{PREFIX}/Extraction"
    processes = service_processes(port, args.app)

    def send(megabytes: int) -> tuple[str, int]:
        return upload(host, port, path, args.key, megabytes)

    print(f"before: {memory(processes)}", flush=True)
    if args.speed:
        started = time.monotonic()
        status, taken = send(args.speed)
        took = time.monotonic() - started
        print(f"one {args.speed} MB upload: {status} in {took:.1f} s, {taken / MB / took:.0f} MB/s")
    if args.sequential:
        phase(
            f"{args.sequential} x {args.megabytes} MB in a row",
            [send(args.megabytes) for _ in range(args.sequential)],
            processes,
        )
    for round_number in range(args.rounds if args.concurrent else 0):
        with ThreadPoolExecutor(args.concurrent) as pool:
            results = list(pool.map(send, [args.megabytes] * args.concurrent))
        phase(f"round {round_number + 1}: {args.concurrent} at once", results, processes)


if __name__ == "__main__":
    main()
