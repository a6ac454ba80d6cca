"""Tests for the webhook dispatcher: real HTTP to an aiohttp receiver on 127.0.0.1, and the
real task store's outbox on a SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from types import TracebackType

import pytest
from aiohttp import web

from serve_app.outbound.dispatcher import WebhookDispatcher
from serve_app.outbound.netguard import OutboundPolicy
from serve_app.outbound.webhooks import RetrySchedule, new_secret, verify
from serve_app.store.migrate import upgrade
from serve_app.store.outbox import WebhookOutbox
from serve_app.store.records import Attempt, Delivery, DeliveryState, TaskRecord, TaskSpec
from serve_app.store.tasks import TaskStore
from tests.serve_app.loopback import serve_on_loopback

SECRET = new_secret()
LOOPBACK = OutboundPolicy(allowed_networks=("127.0.0.0/8",))  # the receivers live here
SHORT = RetrySchedule(delays_s=(0.05, 0.05), jitter=0.0, timeout_s=2.0)
WAIT_S = 5.0  # generous upper bound for anything here; the tests take milliseconds


class Outbox(WebhookOutbox):
    """The real outbox of a task store on a SQLite file. `add` queues a webhook the way a
    finished task does; `polled` is set after each look for due deliveries, the tests' one
    view into the dispatcher's loop."""

    def __init__(self, folder: Path) -> None:
        url = f"sqlite:///{folder / 'tasks.db'}"
        upgrade(url)
        self.store = TaskStore(url)
        super().__init__(self.store.engine)
        self.polled = threading.Event()
        self._task_of: dict[str, str] = {}

    def add(self, url: str) -> Delivery:
        """A task that completes with `url` as its webhook; its delivery, now due."""
        record = self.store.tasks.create(
            TaskSpec(
                owner="alice",
                stems=("drums",),
                preprocessing=(),
                output_format="wav",
                audio_url=None,
                input_key="inputs/x/audio.wav",
                webhook_url=url,
                duration_s=1.0,
                eta_s=1.0,
                credit_estimate=0.0,
            )
        )
        tasks = self.store.tasks
        assert tasks.claim("test", 60.0) is not None
        tasks.complete(
            record.task_id, "test", {}, duration_s=1.0, conversion_cost=0.0, payload=body
        )
        (delivery,) = self.deliveries(record.task_id)
        self._task_of[delivery.delivery_id] = record.task_id
        return delivery

    def delivery(self, delivery_id: str) -> Delivery:
        """A delivery as stored now, with its attempts."""
        (delivery,) = self.deliveries(self._task_of[delivery_id])
        return delivery

    def due_deliveries(self, now: datetime, limit: int = 100) -> list[Delivery]:
        due = super().due_deliveries(now, limit)
        self.polled.set()
        return due

    def close(self) -> None:
        self.store.close()


def body(record: TaskRecord) -> str:
    """A webhook body with a non-ASCII title: it must go out byte for byte as stored."""
    return json.dumps(
        {"conversion": {"task_id": record.task_id, "title": "Ça ira"}}, ensure_ascii=False
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    store = Outbox(tmp_path)
    yield store
    store.close()


@dataclass(frozen=True)
class Hit:
    """One request as the receiver saw it."""

    webhook_id: str
    body: bytes
    at: float  # the receiver loop's clock


class Receiver:
    """A real webhook endpoint: verifies each request's signature, then answers with the
    statuses scripted for its delivery (200 once they run out)."""

    def __init__(self, *, headers: dict[str, str] | None = None, hold_s: float = 0.0) -> None:
        self.script: dict[str, list[int]] = {}  # statuses to answer, by webhook-id
        self.headers = headers or {}
        self.hold_s = hold_s
        self.hits: list[Hit] = []
        self.active = 0
        self.most_active = 0
        self._arrived = asyncio.Condition()
        self._server = contextlib.AsyncExitStack()
        self.url = ""

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.add_routes([web.post("/hook", self._handle)])
        base = await self._server.enter_async_context(serve_on_loopback(app))
        self.url = f"{base}/hook"
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self._server.aclose()

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


def dispatcher(
    outbox: Outbox,
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


def test_delivers_on_the_first_try(outbox: Outbox) -> None:
    seen: list[Attempt] = []

    async def scenario() -> Delivery:
        async with Receiver() as receiver:
            delivery = outbox.add(receiver.url)
            webhooks = dispatcher(outbox, on_attempt=seen.append)
            await webhooks.drain(WAIT_S)
            assert await webhooks.stats() == {"delivered": 1, "retry": 0, "failed": 0}
            await webhooks.close()
            assert [hit.body for hit in receiver.hits] == [delivery.payload.encode()]
            return delivery

    stored = outbox.delivery(asyncio.run(scenario()).delivery_id)
    assert stored.state is DeliveryState.DELIVERED
    assert [(a.number, a.outcome, a.status_code) for a in stored.attempts] == [
        (1, "delivered", 200)
    ]
    assert list(stored.attempts) == seen


def test_retries_a_failing_receiver_with_the_same_id_until_delivered(outbox: Outbox) -> None:
    async def scenario() -> Delivery:
        async with Receiver() as receiver:
            delivery = outbox.add(receiver.url)
            receiver.script[delivery.delivery_id] = [500, 500]
            webhooks = dispatcher(outbox)
            await webhooks.drain(WAIT_S)
            assert await webhooks.stats() == {"delivered": 1, "retry": 2, "failed": 0}
            await webhooks.close()
            assert [hit.webhook_id for hit in receiver.hits] == [delivery.delivery_id] * 3
            assert {hit.body for hit in receiver.hits} == {delivery.payload.encode()}
            gaps = [later.at - earlier.at for earlier, later in pairwise(receiver.hits)]
            assert all(gap >= 0.045 for gap in gaps), gaps
            return delivery

    stored = outbox.delivery(asyncio.run(scenario()).delivery_id)
    assert stored.state is DeliveryState.DELIVERED
    assert [(a.number, a.outcome, a.status_code) for a in stored.attempts] == [
        (1, "retry", 500),
        (2, "retry", 500),
        (3, "delivered", 200),
    ]


def test_gives_up_after_the_last_scheduled_attempt(outbox: Outbox) -> None:
    async def scenario() -> Delivery:
        async with Receiver() as receiver:
            delivery = outbox.add(receiver.url)
            receiver.script[delivery.delivery_id] = [500] * 10
            webhooks = dispatcher(outbox)
            await webhooks.drain(WAIT_S)
            await webhooks.close()
            assert len(receiver.hits) == len(SHORT.delays_s) + 1
            return delivery

    stored = outbox.delivery(asyncio.run(scenario()).delivery_id)
    assert stored.state is DeliveryState.FAILED
    assert [a.outcome for a in stored.attempts] == ["retry", "retry", "failed"]
    assert stored.attempts[-1].error == "HTTP 500; gave up after 3 attempts"


def test_gone_stops_after_one_attempt(outbox: Outbox) -> None:
    async def scenario() -> Delivery:
        async with Receiver() as receiver:
            delivery = outbox.add(receiver.url)
            receiver.script[delivery.delivery_id] = [410]
            webhooks = dispatcher(outbox)
            await webhooks.drain(WAIT_S)
            await webhooks.close()
            assert len(receiver.hits) == 1
            return delivery

    stored = outbox.delivery(asyncio.run(scenario()).delivery_id)
    assert stored.state is DeliveryState.FAILED
    assert [(a.outcome, a.status_code) for a in stored.attempts] == [("failed", 410)]


def test_retry_after_postpones_the_next_attempt(outbox: Outbox) -> None:
    async def scenario() -> Delivery:
        async with Receiver(headers={"Retry-After": "1"}) as receiver:
            delivery = outbox.add(receiver.url)
            receiver.script[delivery.delivery_id] = [429]
            webhooks = dispatcher(outbox)
            await webhooks.drain(WAIT_S)
            await webhooks.close()
            assert receiver.hits[1].at - receiver.hits[0].at >= 0.99
            return delivery

    stored = outbox.delivery(asyncio.run(scenario()).delivery_id)
    assert stored.state is DeliveryState.DELIVERED
    first, second = stored.attempts
    assert first.outcome == "retry" and first.status_code == 429
    assert second.at - first.at >= timedelta(seconds=0.99)  # not the schedule's 0.05 s


def test_a_restarted_dispatcher_sends_what_the_last_one_left_pending(outbox: Outbox) -> None:
    slow_retry = RetrySchedule(delays_s=(0.3,), jitter=0.0, timeout_s=2.0)

    async def scenario() -> Delivery:
        async with Receiver() as receiver:
            delivery = outbox.add(receiver.url)
            receiver.script[delivery.delivery_id] = [503]
            crashed = dispatcher(outbox, slow_retry, poll_s=60)
            await crashed.start()
            await receiver.hits_reach(1)
            await crashed.close()
            assert outbox.delivery(delivery.delivery_id).state is DeliveryState.PENDING

            restarted = dispatcher(outbox, slow_retry, poll_s=60)
            await restarted.drain(WAIT_S)
            await restarted.close()
            assert [hit.webhook_id for hit in receiver.hits] == [delivery.delivery_id] * 2
            return delivery

    stored = outbox.delivery(asyncio.run(scenario()).delivery_id)
    assert stored.state is DeliveryState.DELIVERED
    assert [(a.number, a.outcome) for a in stored.attempts] == [(1, "retry"), (2, "delivered")]


# How late a retry may go out after its scheduled time: the README's stated precision.
RETRY_PRECISION_S = 0.5


def test_retries_go_out_at_their_scheduled_time_when_only_woken_once(outbox: Outbox) -> None:
    # As in the service: the Pipeline wakes the dispatcher after a task ends, nothing else
    # happens, and the poll is far longer than the schedule.
    schedule = RetrySchedule(delays_s=(1.0, 1.5), jitter=0.0, timeout_s=2.0)

    async def scenario() -> Delivery:
        async with Receiver() as receiver:
            delivery = outbox.add(receiver.url)
            receiver.script[delivery.delivery_id] = [500, 503]
            webhooks = dispatcher(outbox, schedule, poll_s=60)
            await webhooks.wake()
            await receiver.hits_reach(3)
            await webhooks.close()
            return delivery

    stored = outbox.delivery(asyncio.run(scenario()).delivery_id)
    assert [a.outcome for a in stored.attempts] == ["retry", "retry", "delivered"]
    for (earlier, later), delay in zip(pairwise(stored.attempts), schedule.delays_s, strict=True):
        scheduled = earlier.at + timedelta(seconds=earlier.seconds + delay)
        late = (later.at - scheduled).total_seconds()
        # Never early; `seconds` ends before the attempt is recorded, so allow a hair.
        assert -0.01 <= late <= RETRY_PRECISION_S, (later.number, late)


def test_start_picks_up_what_is_already_due(outbox: Outbox) -> None:
    async def scenario() -> list[Delivery]:
        async with Receiver() as receiver:
            deliveries = [outbox.add(receiver.url), outbox.add(receiver.url)]
            # A minute between polls: only the pass on start can send these in time.
            webhooks = dispatcher(outbox, poll_s=60)
            await webhooks.start()
            await receiver.hits_reach(2)
            await webhooks.close()
            return deliveries

    for delivery in asyncio.run(scenario()):
        assert outbox.delivery(delivery.delivery_id).state is DeliveryState.DELIVERED


def test_wake_sends_a_new_delivery_without_waiting_for_the_poll(outbox: Outbox) -> None:
    async def scenario() -> Delivery:
        async with Receiver() as receiver:
            webhooks = dispatcher(outbox, poll_s=60)
            await webhooks.start()
            await asyncio.to_thread(outbox.polled.wait, WAIT_S)
            delivery = await asyncio.to_thread(outbox.add, receiver.url)
            await webhooks.wake()
            await receiver.hits_reach(1)
            await webhooks.close()
            return delivery

    stored = outbox.delivery(asyncio.run(scenario()).delivery_id)
    assert stored.state is DeliveryState.DELIVERED


def test_sends_at_most_concurrency_at_once_and_each_delivery_once(outbox: Outbox) -> None:
    async def scenario() -> list[str]:
        async with Receiver(hold_s=0.05) as receiver:
            ids = [outbox.add(receiver.url).delivery_id for _ in range(6)]
            # The loop polls constantly while drain runs passes too: neither may send a
            # delivery that is already in flight.
            webhooks = dispatcher(outbox, poll_s=0.01, concurrency=2)
            await webhooks.start()
            await webhooks.drain(WAIT_S)
            await webhooks.close()
            assert receiver.most_active == 2
            assert sorted(hit.webhook_id for hit in receiver.hits) == sorted(ids)
            return ids

    for delivery_id in asyncio.run(scenario()):
        assert outbox.delivery(delivery_id).state is DeliveryState.DELIVERED


def test_start_twice_runs_one_loop_and_close_stops_it(outbox: Outbox) -> None:
    async def scenario() -> None:
        webhooks = dispatcher(outbox, poll_s=60)
        await webhooks.start()
        await webhooks.start()
        await webhooks.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())


def test_a_bad_secret_is_refused_at_construction(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        WebhookDispatcher(lambda: outbox, "whsec_???")
