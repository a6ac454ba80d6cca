"""Webhook signing per the Standard Webhooks spec, the retry schedule, and one HTTP attempt
to deliver a webhook. The secret is "whsec_" followed by the base64 of the key bytes; each
request carries `webhook-id` (the same on every retry), `webhook-timestamp` (unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`. The dispatcher decides
when to call `attempt`; this module only knows how one attempt goes and what it means, and
builds the guarded session (`webhook_session`) that keeps attempts off private addresses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp

from serve_app.outbound.netguard import OutboundPolicy, guarded_session, refusal
from serve_app.store.records import Attempt, Delivery

SECRET_PREFIX = "whsec_"
USER_AGENT = "stemsplit-webhooks"
MAX_RESPONSE_BYTES = 64 * 1024


class SignatureError(Exception):
    """A webhook request whose signature headers do not prove it came from the sender."""


def new_secret(*, key_bytes: int = 32) -> str:
    """A fresh random signing secret, "whsec_" + base64 of `key_bytes` random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(key_bytes)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The key bytes of a secret, with or without the "whsec_" prefix; ValueError if invalid."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        # The message leaves the secret out: it ends up in logs.
        raise ValueError(
            "the webhook secret is not valid: expected 'whsec_' followed by base64 key bytes"
        ) from None
    if not key:
        raise ValueError("the webhook secret is empty: generate one with new_secret()")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value, "v1,<base64 HMAC-SHA256>", of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The request headers of one signed webhook message."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = 300,
    now: int | None = None,
) -> None:
    """Check a received webhook; raise SignatureError unless one signature matches and the
    timestamp is within `tolerance_s` of `now` (unix seconds, default the current time)."""
    received = {name.lower(): value for name, value in headers.items()}
    msg_id = _required(received, "webhook-id")
    timestamp = _timestamp(_required(received, "webhook-timestamp"))
    signatures = _required(received, "webhook-signature")
    current = int(time.time()) if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(
            f"webhook-timestamp is {current - timestamp} s from now, beyond the tolerance of "
            f"{tolerance_s} s: check the clocks or reject the replay"
        )
    expected = sign(secret, msg_id, timestamp, body).encode()
    for candidate in signatures.split(" "):
        if hmac.compare_digest(candidate.encode(), expected):
            return
    raise SignatureError("no webhook-signature matches: check the secret and the raw body")


def _required(received: Mapping[str, str], name: str) -> str:
    value = received.get(name)
    if not value:
        raise SignatureError(f"the {name} header is missing")
    return value


def _timestamp(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer of unix seconds") from None


@dataclass(frozen=True)
class RetrySchedule:
    """When to retry a webhook: `delays_s[i]` is the delay before retry i+1, so a delivery gets
    len(delays_s)+1 attempts; each delay is scaled by a uniform factor in [1-jitter, 1+jitter]."""

    delays_s: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600)
    jitter: float = 0.2
    timeout_s: float = 10.0  # per attempt, connect to last byte read
    max_retry_after_s: float = 3600  # a receiver's Retry-After is capped here

    def __post_init__(self) -> None:
        if any(delay < 0 for delay in self.delays_s):
            raise ValueError(f"retry delays must not be negative, got {self.delays_s}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be at least 0 and below 1, got {self.jitter}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.max_retry_after_s <= 0:
            raise ValueError(f"max_retry_after_s must be positive, got {self.max_retry_after_s}")

    @property
    def max_attempts(self) -> int:
        """How many attempts a delivery gets in all."""
        return len(self.delays_s) + 1

    def next_delay(
        self, attempt_number: int, retry_after: float | None, rng: random.Random
    ) -> float | None:
        """Seconds to wait after attempt `attempt_number` (1-based) failed, None when that was
        the last. A receiver's Retry-After replaces the scheduled delay, capped, unjittered:
        the receiver asked for that time, so never retry earlier."""
        if attempt_number >= self.max_attempts:
            return None
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_s)
        scheduled = self.delays_s[attempt_number - 1]
        return scheduled * rng.uniform(1 - self.jitter, 1 + self.jitter)


# One shared instance for argument defaults; the schedule is immutable.
DEFAULT_SCHEDULE = RetrySchedule()


def webhook_session(policy: OutboundPolicy) -> aiohttp.ClientSession:
    """The session to pass to `attempt`: it connects only where `policy` allows, so a
    webhook_url naming a private or local address ends in a failed attempt, not a request.
    Create it inside the running event loop."""
    return guarded_session(
        policy,
        # No pool limit: the dispatcher's slots bound the connections, and a send that
        # queued for a pooled connection would spend its timeout waiting.
        limit=0,
        # Receivers must not be able to set cookies that other receivers then get.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def attempt(
    session: aiohttp.ClientSession,
    delivery: Delivery,
    secret: str,
    schedule: RetrySchedule,
    *,
    number: int,
    now: Callable[[], datetime],
) -> tuple[Attempt, bool, float | None]:
    """POST a delivery once, freshly signed, through `session` (from `webhook_session`). Returns
    the attempt, whether to retry it, and the receiver's Retry-After in seconds if it sent one.
    An address the session's policy refuses fails the attempt for good."""
    at = now()
    started = time.monotonic()
    body = delivery.payload.encode()
    signed = headers(secret, delivery.delivery_id, int(at.timestamp()), body)
    status_code: int | None = None
    retry_after: float | None = None
    try:
        async with session.post(
            delivery.url,
            data=body,
            headers=signed,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=schedule.timeout_s),
        ) as response:
            await _discard_body(response)
            status_code = response.status
            retry_after = retry_after_s(response.headers.get("Retry-After"), now())
        outcome, error = _judge(status_code)
    except TimeoutError:
        outcome, error = "retry", f"timed out after {schedule.timeout_s:g} s"
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):
        # The URL itself can hold credentials, so the text leaves it out.
        outcome, error = "failed", "invalid webhook URL"
    except aiohttp.ClientConnectorError as exc:
        outcome, error = _connection_failure(exc)
    except aiohttp.ClientError as exc:
        outcome, error = "retry", f"{type(exc).__name__}: {exc}"
    if outcome == "retry" and number >= schedule.max_attempts:
        outcome, error = "failed", f"{error}; gave up after {number} attempts"
    record = Attempt(
        number=number,
        at=at,
        outcome=outcome,
        status_code=status_code,
        error=error,
        seconds=time.monotonic() - started,
    )
    return record, outcome == "retry", retry_after


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP-date); None if absent or
    unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


async def _discard_body(response: aiohttp.ClientResponse) -> None:
    # Reading a short body lets the connection be reused; past the cap a receiver could keep
    # us busy forever, so stop and let the connection close.
    remaining = MAX_RESPONSE_BYTES
    while remaining > 0:
        chunk = await response.content.read(remaining)
        if not chunk:
            return
        remaining -= len(chunk)


def _judge(status: int) -> tuple[str, str]:
    if 200 <= status < 300:
        return "delivered", ""
    if status == 410:
        return "failed", "HTTP 410 Gone: the receiver unsubscribed"
    if status in (408, 429) or status >= 500:
        return "retry", f"HTTP {status}"
    if 300 <= status < 400:
        return "failed", f"redirect not followed (HTTP {status})"
    return "failed", f"HTTP {status}"


def _connection_failure(exc: aiohttp.ClientConnectorError) -> tuple[str, str]:
    refused = refusal(exc)
    if refused is not None:
        # The policy refused the address, not the network: retrying cannot help.
        return "failed", f"webhook_url {refused.reason}"
    return "retry", _connection_error(exc)


def _connection_error(exc: aiohttp.ClientConnectorError) -> str:
    where = f"{exc.host}:{exc.port}"
    if isinstance(exc.os_error, ConnectionRefusedError):
        return f"connection refused by {where}"
    reason = exc.os_error.strerror or type(exc.os_error).__name__
    return f"connection to {where} failed: {reason}"
