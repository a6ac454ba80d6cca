"""A webhook receiver for the soak: an HTTP server on 127.0.0.1 that records every webhook
the service POSTs to it (its `webhook-id`, the task it is about, its status and a digest of
its body) and answers 204, so the soak can tell whether each final task's webhook arrived
once, and only one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

MAX_BODY_BYTES = 1024 * 1024  # a conversion object is a few KB


@dataclass(frozen=True)
class Webhook:
    """One webhook request as it arrived (a retry of a delivery arrives again, same id)."""

    webhook_id: str
    task_id: str | None  # None when the body was not a conversion object
    status: str | None
    updated_at: str | None
    digest: str  # SHA-256 of the body: a retry must send the same bytes


@dataclass
class WebhookLog:
    """What the receiver has recorded, and the URL to give the service."""

    url: str = ""
    received: list[Webhook] = field(default_factory=list)

    def by_task(self) -> dict[str | None, list[Webhook]]:
        """The webhooks received, grouped by the task they are about, in arrival order."""
        grouped: dict[str | None, list[Webhook]] = {}
        for webhook in self.received:
            grouped.setdefault(webhook.task_id, []).append(webhook)
        return grouped


def parse(webhook_id: str, body: bytes) -> Webhook:
    """A webhook from its id and raw body; fields the body lacks stay None."""
    digest = hashlib.sha256(body).hexdigest()
    try:
        conversion = json.loads(body)
    except ValueError:
        conversion = None
    if not isinstance(conversion, dict):
        return Webhook(webhook_id, None, None, None, digest)

    def text(name: str) -> str | None:
        value = conversion.get(name)
        return value if isinstance(value, str) else None

    return Webhook(webhook_id, text("task_id"), text("status"), text("updatedAt"), digest)


@asynccontextmanager
async def receiving(path: str = "/soak-webhooks") -> AsyncIterator[WebhookLog]:
    """Receive webhooks on a free port of 127.0.0.1 until the block ends."""
    log = WebhookLog()

    async def record(request: web.Request) -> web.Response:
        body = await request.read()
        log.received.append(parse(request.headers.get("webhook-id", ""), body))
        return web.Response(status=204)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.add_routes([web.post(path, record)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    log.url = f"http://{host}:{port}{path}"
    try:
        yield log
    finally:
        await runner.cleanup()
