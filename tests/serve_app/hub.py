"""A Hugging Face hub on loopback, for the tests of a model that loads slowly or not at all.

It answers what `huggingface_hub.hf_hub_download` asks (a HEAD for the file's commit and
ETag, then a GET) with files of one folder, 404 for anything else, and can hold every
request at a gate until the test opens it, as a slow or unreachable hub does. The test
session points the Ray workers at it with HF_ENDPOINT before Ray starts.
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

COMMIT = "0" * 40


@dataclass
class LoopbackHub:
    """The hub's files, its gate and the requests waiting at it."""

    url: str
    cache: Path  # HF_HUB_CACHE of the workers
    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> body
    gate: threading.Event = field(default_factory=threading.Event)
    held: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def publish(self, repo: str, folder: Path) -> None:
        """Serve every file of `folder` as the repository `repo`'s."""
        for path in folder.iterdir():
            self.files[f"/{repo}/resolve/main/{path.name}"] = path.read_bytes()

    def reset(self) -> None:
        """No files, the gate open, and the workers' download cache emptied."""
        self.files.clear()
        self.gate.set()
        shutil.rmtree(self.cache, ignore_errors=True)

    def hold(self) -> None:
        """Keep requests waiting until `release`."""
        self.gate.clear()

    def release(self) -> None:
        """Answer the waiting requests, and all later ones at once."""
        self.gate.set()

    def wait_held(self, count: int = 1, timeout_s: float = 60.0) -> None:
        """Block until `count` requests wait at the gate."""
        with self.changed:
            assert self.changed.wait_for(lambda: self.held >= count, timeout_s), self.held


def start_hub(cache: Path) -> tuple[LoopbackHub, http.server.ThreadingHTTPServer]:
    """A hub on 127.0.0.1, gate open, no files."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    hub = LoopbackHub(url=f"http://127.0.0.1:{server.server_port}", cache=cache)
    hub.gate.set()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def _answer(self, *, send_body: bool) -> None:
            with hub.changed:
                hub.held += 1
                hub.changed.notify_all()
            hub.gate.wait(120)
            with hub.changed:
                hub.held -= 1
            body = hub.files.get(self.path.split("?")[0])
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server.RequestHandlerClass = Handler
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hub, server
