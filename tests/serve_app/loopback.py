"""Real servers on free ports of 127.0.0.1: aiohttp, for tests that need something to
fetch from or to post webhooks to; uvicorn, for tests of what runs in Serve's proxy."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import uvicorn
from aiohttp import web
from starlette.types import ASGIApp

from tests.waiting import wait_until


@asynccontextmanager
async def serve_on_loopback(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` until the block ends; yields its base URL (`http://127.0.0.1:PORT`)."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@contextmanager
def uvicorn_on_loopback(app: ASGIApp, **config: Any) -> Iterator[int]:
    """Run `app` with uvicorn (these Config options) in a thread until the block ends;
    yields its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None, **config)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(
        lambda: server.started or not thread.is_alive(),
        timeout_s=30,
        every_s=0.02,
        failure="uvicorn did not start",
    )
    assert server.started, "uvicorn stopped before it started"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)
