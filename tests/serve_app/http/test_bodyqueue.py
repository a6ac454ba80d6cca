"""serve_app/http/bodyqueue.py, driven as Serve drives it: the proxy's copying task feeds the
bounded queue, the replica's fetch loop feeds the paced receive. The running service's
side of this is tested in test_hostile.py (memory after refused uploads)."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable
from typing import Any

from starlette.types import Message

from serve_app.http.bodyqueue import PacedReceiveProxy, bounded_queue

CHUNK: Message = {"type": "http.request", "body": b"x" * 60_000, "more_body": True}


async def settle(done: Callable[[], bool] = lambda: False) -> None:
    """Let every ready task run until `done()` or until nothing more can happen."""
    for _ in range(100):
        if done():
            return
        await asyncio.sleep(0)


def test_the_proxy_stops_taking_body_until_the_replica_fetches() -> None:
    async def scenario() -> None:
        queue = bounded_queue(100_000)()
        sent = 0

        async def copy_from_uvicorn() -> None:  # what Serve's proxy_asgi_receive does
            nonlocal sent
            for _ in range(4):
                await queue(CHUNK)
                sent += 1

        copying = asyncio.create_task(copy_from_uvicorn())
        await settle()
        assert sent == 1  # 120 KB queued after the second message: over the bound, waiting
        assert len(queue.get_messages_nowait()) == 2  # the replica fetches
        await settle()
        assert sent == 3
        assert len(queue.get_messages_nowait()) == 2
        await settle(copying.done)
        assert copying.done() and sent == 4  # 60 KB: under the bound

        waiting = bounded_queue(100_000)()
        blocked = asyncio.create_task(copy_twice(waiting))
        await settle()
        assert not blocked.done()
        waiting.close()  # the request ended: a waiting copy returns
        await settle(blocked.done)
        assert blocked.done()

    async def copy_twice(queue: Any) -> None:
        await queue(CHUNK)
        await queue(CHUNK)

    asyncio.run(scenario())


def test_the_replica_fetches_again_only_when_the_application_has_read() -> None:
    batches: list[list[Message]] = [
        [CHUNK, CHUNK],
        [{"type": "http.request", "body": b"end", "more_body": False}],
        [{"type": "http.disconnect"}],
    ]

    async def scenario() -> None:
        fetches = 0

        async def fetch_from_proxy(_metadata: object) -> bytes:  # the actor call to the proxy
            nonlocal fetches
            fetches += 1
            return pickle.dumps(batches[fetches - 1])

        receive = PacedReceiveProxy({"type": "http"}, None, fetch_from_proxy)
        fetching = asyncio.create_task(receive.fetch_until_disconnect())
        await settle()
        assert fetches == 1  # nothing read yet: no second fetch
        assert await receive() == CHUNK
        await settle()
        assert fetches == 1  # one fetched message still unread
        assert await receive() == CHUNK
        await settle(lambda: fetches == 2)
        assert fetches == 2
        assert (await receive())["body"] == b"end"
        await settle(fetching.done)
        assert fetches == 3 and fetching.done()
        assert (await receive())["type"] == "http.disconnect"

    asyncio.run(scenario())
