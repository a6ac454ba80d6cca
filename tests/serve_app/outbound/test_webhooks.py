"""Tests for webhook signing, the retry schedule and one delivery attempt, against a real
aiohttp receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web

from serve_app.outbound.netguard import OutboundPolicy
from serve_app.outbound.webhooks import (
    RetrySchedule,
    SignatureError,
    attempt,
    headers,
    new_secret,
    retry_after_s,
    secret_key,
    sign,
    verify,
    webhook_session,
)
from serve_app.store.records import Attempt, Delivery, DeliveryState
from tests.serve_app.loopback import serve_on_loopback

KEY = b"stemsplit test key, 32 bytes...!"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
MSG_ID = "msg_2b7c1f"
TIMESTAMP = 1_700_000_000
BODY = b'{"task_id": "t1", "status": "COMPLETED"}'
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
FAST = RetrySchedule(delays_s=(0.05, 0.05), jitter=0.0, timeout_s=0.2)
# Odd spacing and a non-ASCII character: the receiver must get these bytes, untouched.
PAYLOAD = '{"conversion":  {"task_id": "t1", "title": "Café del Mar"}}'
# The receivers here are on loopback, which the default policy refuses (test_netguard.py).
LOOPBACK = OutboundPolicy(allowed_networks=("127.0.0.0/8", "::1/128"))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def expected_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The spec's formula, written out here independently of `sign`."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_sign_follows_the_spec_formula() -> None:
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY) == expected_signature(KEY, MSG_ID, TIMESTAMP, BODY)


def test_sign_matches_the_published_standard_webhooks_vector() -> None:
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers_carry_id_timestamp_signature_and_type() -> None:
    sent = headers(SECRET, MSG_ID, TIMESTAMP, BODY)
    assert sent["webhook-id"] == MSG_ID
    assert sent["webhook-timestamp"] == str(TIMESTAMP)
    assert sent["webhook-signature"] == expected_signature(KEY, MSG_ID, TIMESTAMP, BODY)
    assert sent["content-type"] == "application/json"
    assert sent["user-agent"] == "stemsplit-webhooks"


def test_verify_accepts_a_signed_message_with_either_secret_form() -> None:
    sent = headers(SECRET, MSG_ID, TIMESTAMP, BODY)
    verify(SECRET, sent, BODY, now=TIMESTAMP + 299)
    verify(base64.b64encode(KEY).decode(), sent, BODY, now=TIMESTAMP - 299)
    # Header names are case-insensitive in HTTP.
    verify(SECRET, {name.upper(): value for name, value in sent.items()}, BODY, now=TIMESTAMP)


def test_verify_accepts_any_of_several_signatures() -> None:
    sent = headers(SECRET, MSG_ID, TIMESTAMP, BODY)
    other = sign(new_secret(), MSG_ID, TIMESTAMP, BODY)
    sent["webhook-signature"] = f"{other} {sent['webhook-signature']}"
    verify(SECRET, sent, BODY, now=TIMESTAMP)


def tampered(change: str) -> tuple[str, dict[str, str], bytes, int]:
    """A secret, headers, body and clock in which exactly `change` is wrong."""
    sent = headers(SECRET, MSG_ID, TIMESTAMP, BODY)
    if change == "body":
        return SECRET, sent, BODY.replace(b"t1", b"t2"), TIMESTAMP
    if change == "id":
        return SECRET, {**sent, "webhook-id": "msg_other"}, BODY, TIMESTAMP
    if change == "old timestamp":
        return SECRET, sent, BODY, TIMESTAMP + 301
    if change == "future timestamp":
        return SECRET, sent, BODY, TIMESTAMP - 301
    if change == "secret":
        return new_secret(), sent, BODY, TIMESTAMP
    if change == "missing signature":
        del sent["webhook-signature"]
        return SECRET, sent, BODY, TIMESTAMP
    if change == "v2 signature":
        _, _, value = sent["webhook-signature"].partition(",")
        return SECRET, {**sent, "webhook-signature": f"v2,{value}"}, BODY, TIMESTAMP
    raise AssertionError(change)


@pytest.mark.parametrize(
    "change",
    [
        "body",
        "id",
        "old timestamp",
        "future timestamp",
        "secret",
        "missing signature",
        "v2 signature",
    ],
)
def test_verify_rejects(change: str) -> None:
    secret, sent, body, now = tampered(change)
    with pytest.raises(SignatureError):
        verify(secret, sent, body, now=now)


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_", "plain text"])
def test_an_invalid_secret_is_refused_without_echoing_it(secret: str) -> None:
    with pytest.raises(ValueError, match="webhook secret") as refused:
        secret_key(secret)
    assert secret not in str(refused.value)


def test_new_secrets_are_random_32_byte_keys() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_")
    assert len(secret_key(first)) == 32
    assert first != second


def test_schedule_without_jitter_gives_the_delays_then_stops() -> None:
    schedule = RetrySchedule(delays_s=(5, 30, 120), jitter=0.0)
    rng = random.Random(1)
    delays = [schedule.next_delay(number, None, rng) for number in (1, 2, 3)]
    assert delays == [5, 30, 120]
    assert schedule.max_attempts == 4
    assert schedule.next_delay(4, None, rng) is None


def test_jitter_stays_within_its_bounds_and_spreads() -> None:
    schedule = RetrySchedule(delays_s=(10,), jitter=0.2)
    rng = random.Random(7)
    delays = [schedule.next_delay(1, None, rng) for _ in range(2000)]
    assert all(d is not None and 8.0 <= d <= 12.0 for d in delays)
    assert min(d for d in delays if d is not None) < 8.2
    assert max(d for d in delays if d is not None) > 11.8


def test_retry_after_replaces_the_delay_unjittered_and_capped() -> None:
    schedule = RetrySchedule(delays_s=(5, 30), jitter=0.2, max_retry_after_s=60)
    rng = random.Random(3)
    assert schedule.next_delay(1, 7.0, rng) == 7.0
    assert schedule.next_delay(2, 3600.0, rng) == 60
    assert schedule.next_delay(3, 7.0, rng) is None


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("120", NOW) == 120.0
    assert retry_after_s(format_datetime(NOW + timedelta(seconds=90), usegmt=True), NOW) == 90.0
    assert retry_after_s(format_datetime(NOW - timedelta(seconds=90), usegmt=True), NOW) == 0.0
    assert retry_after_s("soon", NOW) is None
    assert retry_after_s(None, NOW) is None


def test_schedule_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="jitter"):
        RetrySchedule(jitter=1.5)
    with pytest.raises(ValueError, match="timeout_s"):
        RetrySchedule(timeout_s=0)


@contextlib.asynccontextmanager
async def receiver(routes: list[web.RouteDef]) -> AsyncIterator[str]:
    """A real HTTP server on a free port of 127.0.0.1; yields its base URL."""
    app = web.Application()
    app.add_routes(routes)
    async with serve_on_loopback(app) as url:
        yield url


def delivery(url: str) -> Delivery:
    return Delivery(
        delivery_id="dlv_1",
        task_id="t1",
        url=url,
        payload=PAYLOAD,
        state=DeliveryState.PENDING,
        next_attempt_at=NOW,
    )


async def post_once(
    url: str, *, number: int = 1, schedule: RetrySchedule = FAST
) -> tuple[Attempt, bool, float | None]:
    async with webhook_session(LOOPBACK) as session:
        result = await attempt(
            session, delivery(url), SECRET, schedule, number=number, now=lambda: NOW
        )
    record = result[0]
    assert record.number == number
    assert record.at == NOW
    assert SECRET not in record.error
    assert base64.b64encode(KEY).decode() not in record.error
    return result


def test_attempt_delivers_a_signed_body_the_receiver_can_verify() -> None:
    received: list[web.Request] = []
    bodies: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append(request)
        bodies.append(body)
        try:
            verify(SECRET, request.headers, body, now=int(NOW.timestamp()))
        except SignatureError as exc:
            return web.Response(status=401, text=str(exc))
        return web.Response(status=204)

    async def scenario() -> tuple[Attempt, bool, float | None]:
        async with receiver([web.post("/hook", hook)]) as base:
            return await post_once(f"{base}/hook")

    result, retry, retry_after = asyncio.run(scenario())
    assert (result.outcome, result.status_code, result.error) == ("delivered", 204, "")
    assert not retry
    assert retry_after is None
    assert bodies == [PAYLOAD.encode()]
    assert received[0].headers["webhook-id"] == "dlv_1"
    assert received[0].headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    assert received[0].headers["User-Agent"] == "stemsplit-webhooks"
    assert received[0].headers["Content-Type"] == "application/json"


async def by_status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["status"]))


@pytest.mark.parametrize(
    ("status", "outcome", "error"),
    [
        (200, "delivered", ""),
        (202, "delivered", ""),
        (408, "retry", "HTTP 408"),
        (429, "retry", "HTTP 429"),
        (500, "retry", "HTTP 500"),
        (503, "retry", "HTTP 503"),
        (410, "failed", "HTTP 410 Gone: the receiver unsubscribed"),
        (400, "failed", "HTTP 400"),
        (404, "failed", "HTTP 404"),
        (304, "failed", "redirect not followed (HTTP 304)"),
    ],
)
def test_attempt_judges_the_status(status: int, outcome: str, error: str) -> None:
    async def scenario() -> tuple[Attempt, bool, float | None]:
        async with receiver([web.post("/status/{status}", by_status)]) as base:
            return await post_once(f"{base}/status/{status}")

    result, retry, _ = asyncio.run(scenario())
    assert (result.outcome, result.status_code, result.error) == (outcome, status, error)
    assert retry == (outcome == "retry")


def test_the_last_attempt_gives_up_instead_of_retrying() -> None:
    async def scenario() -> tuple[Attempt, bool, float | None]:
        async with receiver([web.post("/status/{status}", by_status)]) as base:
            return await post_once(f"{base}/status/500", number=FAST.max_attempts)

    result, retry, _ = asyncio.run(scenario())
    assert not retry
    assert result.outcome == "failed"
    assert result.error == "HTTP 500; gave up after 3 attempts"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), (format_datetime(NOW + timedelta(seconds=45), usegmt=True), 45.0)],
)
def test_attempt_reports_retry_after(header: str, seconds: float) -> None:
    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": header})

    async def scenario() -> tuple[Attempt, bool, float | None]:
        async with receiver([web.post("/hook", busy)]) as base:
            return await post_once(f"{base}/hook")

    result, retry, retry_after = asyncio.run(scenario())
    assert (result.outcome, retry, retry_after) == ("retry", True, seconds)


def test_attempt_does_not_follow_a_redirect() -> None:
    target_hits: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/target")

    async def target(request: web.Request) -> web.Response:
        target_hits.append(request.method)
        return web.Response(status=200)

    async def scenario() -> tuple[Attempt, bool, float | None]:
        routes = [web.post("/hook", moved), web.route("*", "/target", target)]
        async with receiver(routes) as base:
            return await post_once(f"{base}/hook")

    result, retry, _ = asyncio.run(scenario())
    assert (result.outcome, result.status_code) == ("failed", 302)
    assert result.error == "redirect not followed (HTTP 302)"
    assert not retry
    assert target_hits == []


def test_attempt_times_out_on_a_slow_receiver() -> None:
    async def scenario() -> tuple[Attempt, bool, float | None]:
        release = asyncio.Event()

        async def slow(request: web.Request) -> web.Response:
            await asyncio.wait_for(release.wait(), timeout=5)
            return web.Response(status=200)

        async with receiver([web.post("/hook", slow)]) as base:
            result = await post_once(f"{base}/hook")
            release.set()
            return result

    result, retry, _ = asyncio.run(scenario())
    assert (result.outcome, result.status_code, retry) == ("retry", None, True)
    assert result.error == "timed out after 0.2 s"
    assert 0.2 <= result.seconds < 2


def test_attempt_retries_when_the_connection_is_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The port was free a moment ago and nothing listens on it now.
    result, retry, _ = asyncio.run(post_once(f"http://127.0.0.1:{port}/hook"))
    assert (result.outcome, result.status_code, retry) == ("retry", None, True)
    assert result.error == f"connection refused by 127.0.0.1:{port}"


def test_attempt_fails_on_a_url_it_cannot_use() -> None:
    result, retry, _ = asyncio.run(post_once("ftp://user:pw@127.0.0.1/hook"))
    assert (result.outcome, retry) == ("failed", False)
    assert result.error == "invalid webhook URL"


def test_attempt_stops_reading_an_endless_response_body() -> None:
    async def scenario() -> tuple[Attempt, bool, float | None]:
        stop = asyncio.Event()

        async def endless(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(status=200)
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):
                while not stop.is_set():
                    await response.write(b"x" * 16384)
            return response

        async with receiver([web.post("/hook", endless)]) as base:
            result = await post_once(f"{base}/hook", schedule=RetrySchedule(timeout_s=5))
            stop.set()
            return result

    result, retry, _ = asyncio.run(scenario())
    # Reading to the end would have run into the timeout and asked for a retry.
    assert (result.outcome, result.status_code, retry) == ("delivered", 200, False)
    assert result.seconds < 5
