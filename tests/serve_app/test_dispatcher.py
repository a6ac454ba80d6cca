"""Tests for the webhook dispatcher: real HTTP to an aiohttp receiver on 127.0.0.1, with an
in-memory outbox standing in for the SQL task store."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from types import TracebackType

import pytest
from aiohttp import web

from serve_app.dispatcher import WebhookDispatcher
from serve_app.netguard import OutboundPolicy
from serve_app.records import Attempt, Delivery, DeliveryState
from serve_app.webhooks import RetrySchedule, new_secret, verify

SECRET = new_secret()
LOOPBACK = OutboundPolicy(allowed_networks=("127.0.0.0/8",))  # the receivers live here
SHORT = RetrySchedule(delays_s=(0.05, 0.05), jitter=0.0, timeout_s=2.0)
WAIT_S = 5.0  # generous upper bound for anything here; the tests take milliseconds


class MemoryOutbox:
    """The Outbox protocol over a dict: a stand-in for the database only."""

    def __init__(self) -> None:
        self._deliveries: dict[str, Delivery] = {}
        self._lock = threading.Lock()
        self.records: list[tuple[Attempt, DeliveryState, datetime | None]] = []
        self.polled = threading.Event()

    def add(self, delivery: Delivery) -> None:
        with self._lock:
            self._deliveries[delivery.delivery_id] = delivery

    def get(self, delivery_id: str) -> Delivery:
        with self._lock:
            return self._deliveries[delivery_id]

    def due_deliveries(self, now: datetime, limit: int = 100) -> list[Delivery]:
        with self._lock:
            due = [
                delivery
                for delivery in self._deliveries.values()
                if delivery.state is DeliveryState.PENDING and delivery.next_attempt_at <= now
            ]
        self.polled.set()
        return sorted(due, key=lambda delivery: delivery.next_attempt_at)[:limit]

    def record_attempt(
        self,
        delivery_id: str,
        attempt: Attempt,
        state: DeliveryState,
        next_attempt_at: datetime | None,
    ) -> None:
        with self._lock:
            current = self._deliveries[delivery_id]
            self._deliveries[delivery_id] = replace(
                current,
                state=state,
                attempts=(*current.attempts, attempt),
                next_attempt_at=next_attempt_at or current.next_attempt_at,
            )
            self.records.append((attempt, state, next_attempt_at))


@dataclass(frozen=True)
class Hit:
    """One request as the receiver saw it."""

    webhook_id: str
    body: bytes
    at: float  # the receiver loop's clock


class Receiver:
    """A real webhook endpoint: verifies each request's signature, then answers with the
    statuses scripted for its delivery (200 once they run out)."""

    def __init__(
        self,
        script: dict[str, list[int]] | None = None,
        *,
        headers: dict[str, str] | None = None,
        hold_s: float = 0.0,
    ) -> None:
        self.script = script or {}
        self.headers = headers or {}
        self.hold_s = hold_s
        self.hits: list[Hit] = []
        self.active = 0
        self.most_active = 0
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.add_routes([web.post("/hook", self._handle)])
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def hits_reach(self, count: int) -> None:
        async with asyncio.timeout(WAIT_S), self._arrived:
            await self._arrived.wait_for(lambda: len(self.hits) >= count)

    def hits_of(self, delivery_id: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.webhook_id == delivery_id]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        verify(SECRET, request.headers, body)
        webhook_id = request.headers["webhook-id"]
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        # Holding the request open lets several be in flight at once.
        await asyncio.sleep(self.hold_s)
        self.active -= 1
        async with self._arrived:
            self.hits.append(Hit(webhook_id, body, asyncio.get_running_loop().time()))
            self._arrived.notify_all()
        statuses = self.script.get(webhook_id)
        status = statuses.pop(0) if statuses else 200
        return web.Response(status=status, headers=self.headers)


def pending(delivery_id: str, url: str) -> Delivery:
    return Delivery(
        delivery_id=delivery_id,
        task_id=f"task-{delivery_id}",
        url=url,
        payload=json.dumps(
            {"conversion": {"task_id": delivery_id, "title": "Ça ira"}}, ensure_ascii=False
        ),
        state=DeliveryState.PENDING,
        next_attempt_at=datetime.now(UTC),
    )


def dispatcher(
    outbox: MemoryOutbox,
    schedule: RetrySchedule = SHORT,
    *,
    poll_s: float = 5.0,
    concurrency: int = 8,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> WebhookDispatcher:
    return WebhookDispatcher(
        lambda: outbox,
        SECRET,
        schedule,
        poll_s=poll_s,
        concurrency=concurrency,
        seed=0,
        on_attempt=on_attempt,
        outbound=LOOPBACK,
    )


def test_delivers_on_the_first_try() -> None:
    outbox = MemoryOutbox()
    seen: list[Attempt] = []

    async def scenario() -> None:
        async with Receiver() as receiver:
            delivery = pending("d1", receiver.url)
            outbox.add(delivery)
            webhooks = dispatcher(outbox, on_attempt=seen.append)
            await webhooks.drain(WAIT_S)
            assert await webhooks.stats() == {"delivered": 1, "retry": 0, "failed": 0}
            await webhooks.close()
            assert [hit.body for hit in receiver.hits] == [delivery.payload.encode()]

    asyncio.run(scenario())
    stored = outbox.get("d1")
    assert stored.state is DeliveryState.DELIVERED
    assert [(a.number, a.outcome, a.status_code) for a in stored.attempts] == [
        (1, "delivered", 200)
    ]
    assert list(stored.attempts) == seen


def test_retries_a_failing_receiver_with_the_same_id_until_delivered() -> None:
    outbox = MemoryOutbox()

    async def scenario() -> None:
        async with Receiver({"d1": [500, 500]}) as receiver:
            delivery = pending("d1", receiver.url)
            outbox.add(delivery)
            webhooks = dispatcher(outbox)
            await webhooks.drain(WAIT_S)
            assert await webhooks.stats() == {"delivered": 1, "retry": 2, "failed": 0}
            await webhooks.close()
            assert [hit.webhook_id for hit in receiver.hits] == ["d1"] * 3
            assert {hit.body for hit in receiver.hits} == {delivery.payload.encode()}
            gaps = [later.at - earlier.at for earlier, later in pairwise(receiver.hits)]
            assert all(gap >= 0.045 for gap in gaps), gaps

    asyncio.run(scenario())
    stored = outbox.get("d1")
    assert stored.state is DeliveryState.DELIVERED
    assert [(a.number, a.outcome, a.status_code) for a in stored.attempts] == [
        (1, "retry", 500),
        (2, "retry", 500),
        (3, "delivered", 200),
    ]


def test_gives_up_after_the_last_scheduled_attempt() -> None:
    outbox = MemoryOutbox()

    async def scenario() -> None:
        async with Receiver({"d1": [500] * 10}) as receiver:
            outbox.add(pending("d1", receiver.url))
            webhooks = dispatcher(outbox)
            await webhooks.drain(WAIT_S)
            await webhooks.close()
            assert len(receiver.hits) == len(SHORT.delays_s) + 1

    asyncio.run(scenario())
    stored = outbox.get("d1")
    assert stored.state is DeliveryState.FAILED
    assert [a.outcome for a in stored.attempts] == ["retry", "retry", "failed"]
    assert stored.attempts[-1].error == "HTTP 500; gave up after 3 attempts"


def test_gone_stops_after_one_attempt() -> None:
    outbox = MemoryOutbox()

    async def scenario() -> None:
        async with Receiver({"d1": [410]}) as receiver:
            outbox.add(pending("d1", receiver.url))
            webhooks = dispatcher(outbox)
            await webhooks.drain(WAIT_S)
            await webhooks.close()
            assert len(receiver.hits) == 1

    asyncio.run(scenario())
    stored = outbox.get("d1")
    assert stored.state is DeliveryState.FAILED
    assert [(a.outcome, a.status_code) for a in stored.attempts] == [("failed", 410)]


def test_retry_after_postpones_the_next_attempt() -> None:
    outbox = MemoryOutbox()

    async def scenario() -> None:
        async with Receiver({"d1": [429]}, headers={"Retry-After": "1"}) as receiver:
            outbox.add(pending("d1", receiver.url))
            webhooks = dispatcher(outbox)
            await webhooks.drain(WAIT_S)
            await webhooks.close()
            assert receiver.hits[1].at - receiver.hits[0].at >= 0.99

    asyncio.run(scenario())
    first, state, next_attempt_at = outbox.records[0]
    assert state is DeliveryState.PENDING
    assert next_attempt_at is not None
    assert next_attempt_at - first.at >= timedelta(seconds=1)
    assert outbox.get("d1").state is DeliveryState.DELIVERED


def test_a_restarted_dispatcher_sends_what_the_last_one_left_pending() -> None:
    outbox = MemoryOutbox()
    slow_retry = RetrySchedule(delays_s=(0.3,), jitter=0.0, timeout_s=2.0)

    async def scenario() -> None:
        async with Receiver({"d1": [503]}) as receiver:
            outbox.add(pending("d1", receiver.url))
            crashed = dispatcher(outbox, slow_retry, poll_s=60)
            await crashed.start()
            await receiver.hits_reach(1)
            await crashed.close()
            assert outbox.get("d1").state is DeliveryState.PENDING

            restarted = dispatcher(outbox, slow_retry, poll_s=60)
            await restarted.drain(WAIT_S)
            await restarted.close()
            assert [hit.webhook_id for hit in receiver.hits] == ["d1", "d1"]

    asyncio.run(scenario())
    stored = outbox.get("d1")
    assert stored.state is DeliveryState.DELIVERED
    assert [(a.number, a.outcome) for a in stored.attempts] == [(1, "retry"), (2, "delivered")]


def test_start_picks_up_what_is_already_due() -> None:
    outbox = MemoryOutbox()

    async def scenario() -> None:
        async with Receiver() as receiver:
            outbox.add(pending("d1", receiver.url))
            outbox.add(pending("d2", receiver.url))
            # A minute between polls: only the pass on start can send these in time.
            webhooks = dispatcher(outbox, poll_s=60)
            await webhooks.start()
            await receiver.hits_reach(2)
            await webhooks.close()

    asyncio.run(scenario())
    assert outbox.get("d1").state is DeliveryState.DELIVERED
    assert outbox.get("d2").state is DeliveryState.DELIVERED


def test_wake_sends_a_new_delivery_without_waiting_for_the_poll() -> None:
    outbox = MemoryOutbox()

    async def scenario() -> None:
        async with Receiver() as receiver:
            webhooks = dispatcher(outbox, poll_s=60)
            await webhooks.start()
            await asyncio.to_thread(outbox.polled.wait, WAIT_S)
            outbox.add(pending("d1", receiver.url))
            await webhooks.wake()
            await receiver.hits_reach(1)
            await webhooks.close()

    asyncio.run(scenario())
    assert outbox.get("d1").state is DeliveryState.DELIVERED


def test_sends_at_most_concurrency_at_once_and_each_delivery_once() -> None:
    outbox = MemoryOutbox()
    ids = [f"d{n}" for n in range(6)]

    async def scenario() -> None:
        async with Receiver(hold_s=0.05) as receiver:
            for delivery_id in ids:
                outbox.add(pending(delivery_id, receiver.url))
            # The loop polls constantly while drain runs passes too: neither may send a
            # delivery that is already in flight.
            webhooks = dispatcher(outbox, poll_s=0.01, concurrency=2)
            await webhooks.start()
            await webhooks.drain(WAIT_S)
            await webhooks.close()
            assert receiver.most_active == 2
            assert sorted(hit.webhook_id for hit in receiver.hits) == ids

    asyncio.run(scenario())
    assert all(outbox.get(delivery_id).state is DeliveryState.DELIVERED for delivery_id in ids)


def test_start_twice_runs_one_loop_and_close_stops_it() -> None:
    async def scenario() -> None:
        webhooks = dispatcher(MemoryOutbox(), poll_s=60)
        await webhooks.start()
        await webhooks.start()
        await webhooks.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())


def test_a_bad_secret_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        WebhookDispatcher(MemoryOutbox, "whsec_???")
