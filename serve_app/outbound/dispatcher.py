"""The webhook dispatcher: a loop that takes due deliveries from the outbox, sends each with
`webhooks.attempt`, and records every attempt back, so a delivery survives a dispatcher crash
(whatever is left PENDING is sent by the next dispatcher). Between passes the loop sleeps until
the next retry comes due (at most `poll_s`), so retries go out on time rather than at the next
poll. Plain async Python; the integrator runs it as a restartable Ray actor, so the
constructor takes only picklable arguments."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import aiohttp

from serve_app.outbound import webhooks
from serve_app.outbound.netguard import DEFAULT_POLICY, OutboundPolicy
from serve_app.store.faults import log_loop_failure
from serve_app.store.records import Attempt, Delivery, DeliveryState, Outbox

logger = logging.getLogger(__name__)

POLL_S = 5.0  # the longest a due delivery waits for a pass
CONCURRENCY = 8  # deliveries sent at once

T = TypeVar("T")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class WebhookDispatcher:
    """Sends the outbox's due webhook deliveries, at most `concurrency` at once: when one comes
    due, when woken, and at least every `poll_s` seconds."""

    def __init__(
        self,
        outbox_factory: Callable[[], Outbox],
        secret: str,
        schedule: webhooks.RetrySchedule = webhooks.DEFAULT_SCHEDULE,
        *,
        poll_s: float = POLL_S,
        concurrency: int = CONCURRENCY,
        seed: int | None = None,
        on_attempt: Callable[[Attempt], None] | None = None,
        outbound: OutboundPolicy = DEFAULT_POLICY,
    ) -> None:
        webhooks.secret_key(secret)  # refuse a bad secret now, not on the first delivery
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {poll_s}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._outbox_factory = outbox_factory
        self._secret = secret
        self._schedule = schedule
        self._poll_s = poll_s
        self._concurrency = concurrency
        self._rng = random.Random(seed)
        self._on_attempt = on_attempt
        self._outbound = outbound
        self._outbox: Outbox | None = None
        # One outbox call at a time, so a store need not be safe for concurrent use.
        self._outbox_lock = asyncio.Lock()
        self._pass_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._outcomes: Counter[str] = Counter()

    async def start(self) -> None:
        """Start the background loop; its first pass picks up whatever is already due."""
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run())

    async def wake(self) -> None:
        """Run a pass now, e.g. right after a delivery was written. Starts the loop if it is not
        running (a dispatcher restarted after a crash is only ever woken), so that retries
        scheduled from then on go out when due."""
        if self._loop is None or self._loop.done():
            await self.start()
        else:
            self._wakeup.set()

    async def drain(self, timeout_s: float) -> None:
        """Run passes until no delivery is being sent and none comes due within the remaining
        time, or until `timeout_s` has passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                deadline = _utc_now() + timedelta(seconds=timeout_s)
                while await self._drain_step(deadline):
                    pass

    async def stats(self) -> dict[str, int]:
        """Attempts so far by outcome: "delivered", "retry" and "failed"."""
        return {outcome: self._outcomes[outcome] for outcome in ("delivered", "retry", "failed")}

    async def close(self, *, grace_s: float = 30.0) -> None:
        """Stop the loop, give attempts in flight up to `grace_s` to finish and be recorded
        (one abandoned is sent again later), and close the HTTP session."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        if self._sending:
            _, late = await asyncio.wait(list(self._sending.values()), timeout=grace_s)
            for task in late:
                task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            passed_at = _utc_now()
            pause = self._poll_s
            try:
                await self._pass()
                pause = await self._pause(passed_at)
            except Exception as error:
                # The outbox may be briefly unreachable; the next pass tries again.
                log_loop_failure(logger, "webhook dispatch pass", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=pause)

    async def _pause(self, passed_at: datetime) -> float:
        """Seconds until the first delivery not yet due at the pass (`passed_at`) comes due, at
        most `poll_s`. Deliveries already due then were started by the pass, unless every slot
        was taken (a finished send wakes the loop) or their last attempt could not be recorded:
        those wait for the next poll, so a failing store is not hammered."""
        upcoming = await self._call(lambda outbox: outbox.next_attempt_after(passed_at))
        if upcoming is None:
            return self._poll_s
        return min(max((upcoming - _utc_now()).total_seconds(), 0.0), self._poll_s)

    async def _pass(self) -> None:
        """Start sending the due deliveries that fit in the free slots."""
        async with self._pass_lock:
            free = self._concurrency - len(self._sending)
            if free <= 0:
                return
            # Deliveries in flight are still due in the outbox: ask for enough to fill the slots.
            limit = self._concurrency + len(self._sending)
            due = await self._call(lambda outbox: outbox.due_deliveries(_utc_now(), limit=limit))
            for delivery in due:
                if free == 0:
                    break
                if delivery.delivery_id not in self._sending:
                    self._begin(delivery)
                    free -= 1

    def _begin(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._send(delivery))
        self._sending[delivery.delivery_id] = task
        task.add_done_callback(lambda done: self._finished(delivery.delivery_id, done))

    def _finished(self, delivery_id: str, task: asyncio.Task[None]) -> None:
        del self._sending[delivery_id]
        if task.cancelled():
            return
        if (error := task.exception()) is not None:
            # No wake-up here: the next poll retries, so a failing store is not hammered.
            logger.error("webhook delivery %s was not recorded", delivery_id, exc_info=error)
            return
        # A slot is free: fill it now rather than at the next poll.
        self._wakeup.set()

    async def _send(self, delivery: Delivery) -> None:
        number = len(delivery.attempts) + 1
        result, retry, retry_after = await webhooks.attempt(
            self._http(), delivery, self._secret, self._schedule, number=number, now=_utc_now
        )
        state, next_attempt_at = self._next_state(result, retry, retry_after)
        await self._call(
            lambda outbox: outbox.record_attempt(
                delivery.delivery_id, result, state, next_attempt_at
            )
        )
        self._outcomes[result.outcome] += 1
        if state is DeliveryState.FAILED:
            logger.warning(
                "webhook delivery %s for task %s failed after %d attempts: %s",
                delivery.delivery_id,
                delivery.task_id,
                number,
                result.error,
            )
        if self._on_attempt is not None:
            self._on_attempt(result)

    def _next_state(
        self, result: Attempt, retry: bool, retry_after: float | None
    ) -> tuple[DeliveryState, datetime | None]:
        if result.outcome == "delivered":
            return DeliveryState.DELIVERED, None
        delay = self._schedule.next_delay(result.number, retry_after, self._rng) if retry else None
        if delay is None:
            return DeliveryState.FAILED, None
        return DeliveryState.PENDING, _utc_now() + timedelta(seconds=delay)

    async def _drain_step(self, deadline: datetime) -> bool:
        """One step of `drain`; False when there is nothing left to wait for."""
        await self._pass()
        if self._sending:
            await asyncio.wait(list(self._sending.values()), return_when=asyncio.FIRST_COMPLETED)
            return True
        upcoming = await self._call(lambda outbox: outbox.due_deliveries(deadline))
        if not upcoming:
            return False
        # Waiting for a scheduled retry to come due, not for some other event.
        soonest = min(delivery.next_attempt_at for delivery in upcoming)
        await asyncio.sleep(max((soonest - _utc_now()).total_seconds(), 0.0))
        return True

    def _http(self) -> aiohttp.ClientSession:
        # Created here, inside the running loop, because a session belongs to its loop.
        if self._session is None or self._session.closed:
            self._session = webhooks.webhook_session(self._outbound)
        return self._session

    async def _call(self, use: Callable[[Outbox], T]) -> T:
        """Run a sync outbox call in a worker thread, one at a time."""
        async with self._outbox_lock:
            if self._outbox is None:
                self._outbox = await asyncio.to_thread(self._outbox_factory)
            outbox = self._outbox
            return await asyncio.to_thread(use, outbox)
