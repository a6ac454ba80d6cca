"""A request body moves from Serve's proxy to the replica only as the application reads it.

Serve's proxy copies every ASGI message uvicorn receives into a per-request queue, and
the replica fetches the queue's contents with actor calls into a queue of its own, from
which the application reads. Neither side waits for the other: a client that sends
faster than the application reads, or keeps sending after the application has refused
its request, has its body taken in at network speed by the proxy and the replica, and
the batches fetched, megabytes each, go through Ray's object store. Both ends are
replaced here:

- `BoundedMessageQueue`, the proxy's queue: once `max_bytes` of body are queued, the
  copying task waits until the replica fetches them, so uvicorn's flow control stops
  reading the socket and TCP pushes back on the client;
- `PacedReceiveProxy`, the replica's end: it fetches the next messages only once the
  application has taken all the fetched ones.

Written for Ray 2.60 (serve_app/http/internals.py), whose proxy uses `MessageQueue` for the
receive queue alone; serve_app/http/proxyguard.py installs the first in the proxy,
`pace_replica` the second in a replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ray.serve._private import http_util, replica
from ray.serve._private.http_util import ASGIReceiveProxy, MessageQueue
from starlette.types import Message, Scope

from serve_app.http.internals import check_versions, installed_versions


class BoundedMessageQueue(MessageQueue):
    """A MessageQueue whose sender waits while more than `max_bytes` of body are queued."""

    max_bytes = 64 * 1024

    def __init__(self) -> None:
        super().__init__()
        self._queued_bytes = 0
        self._fetched = asyncio.Event()
        self._closing = False

    async def __call__(self, message: Message) -> None:
        """Queue a message; then wait while the queued body is over the bound."""
        await super().__call__(message)
        self._queued_bytes += len(message.get("body", b""))
        while self._queued_bytes > self.max_bytes and not self._closing:
            self._fetched.clear()
            await self._fetched.wait()

    def get_messages_nowait(self) -> list[Message]:
        """Everything queued (the replica's fetch); wakes a waiting sender."""
        messages: list[Message] = super().get_messages_nowait()
        self._queued_bytes = 0
        self._fetched.set()
        return messages

    def close(self) -> None:
        """No more messages; a waiting sender returns."""
        super().close()
        self._closing = True
        self._fetched.set()


def bounded_queue(max_bytes: int) -> type[BoundedMessageQueue]:
    """A BoundedMessageQueue class holding at most `max_bytes` of body (plus one message)."""
    return type("BoundedMessageQueue", (BoundedMessageQueue,), {"max_bytes": max_bytes})


class PacedReceiveProxy(ASGIReceiveProxy):
    """The replica's `receive`: fetches from the proxy only once the application has
    taken every message fetched before."""

    def __init__(
        self,
        scope: Scope,
        request_metadata: Any,
        receive_asgi_messages: Callable[[Any], Awaitable[bytes]],
    ) -> None:
        async def paced(metadata: Any) -> bytes:
            if not self.queue.empty():
                self._taken.clear()
                await self._taken.wait()
            return await receive_asgi_messages(metadata)

        super().__init__(scope, request_metadata, paced)
        self._taken = asyncio.Event()

    async def __call__(self) -> Message:
        """The next message, for the application."""
        message: Message = await super().__call__()
        if self.queue.empty():
            self._taken.set()
        return message


def pace_replica() -> None:
    """Make this replica process fetch request bodies only as its application reads."""
    if replica.ASGIReceiveProxy is PacedReceiveProxy:
        return
    check_versions(installed_versions())
    if replica.ASGIReceiveProxy is not http_util.ASGIReceiveProxy:
        raise RuntimeError("Serve's replica no longer uses http_util.ASGIReceiveProxy")
    replica.ASGIReceiveProxy = PacedReceiveProxy  # type: ignore[misc]
