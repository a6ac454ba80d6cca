"""Plain records the service's parts pass between them: tasks, webhook deliveries and
their attempts. No Ray, no SQL, no HTTP here; `tasks.py` stores these records and the
deployments read and write them through it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class Status(StrEnum):
    """A task's state, named as MusicGPT names it."""

    IN_QUEUE = "IN_QUEUE"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


FINAL = frozenset({Status.COMPLETED, Status.FAILED})


@dataclass(frozen=True)
class TaskSpec:
    """What a caller asked for; the ingress builds it and the store creates a task of it."""

    owner: str  # the id of the API key that created the task ("local" when auth is off)
    stems: tuple[str, ...]
    preprocessing: tuple[str, ...] = ()
    output_format: str = "wav"
    audio_url: str | None = None  # exactly one of audio_url and input_key is set
    input_key: str | None = None  # blob key of the uploaded audio
    webhook_url: str | None = None
    duration_s: float | None = None  # when known at submission (uploads)
    eta_s: float = -1.0
    credit_estimate: float = 0.0


@dataclass(frozen=True)
class TaskRecord:
    """A task as stored."""

    task_id: str
    conversion_id: str
    spec: TaskSpec
    status: Status
    status_msg: str
    progress: float  # 0 to 1
    results: dict[str, str]  # stem -> blob key of its file, once COMPLETED
    duration_s: float | None
    conversion_cost: float | None
    created_at: datetime  # timezone-aware UTC
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    claims: int  # how many times a pipeline replica has claimed the task
    lease_owner: str | None
    lease_until: datetime | None
    # Retention: set when the task's files stopped being served, then when they were deleted.
    files_expired_at: datetime | None = None
    files_deleted_at: datetime | None = None
    # What a user should know about the input of a COMPLETED task (say, it was truncated).
    warnings: tuple[str, ...] = ()


class DeliveryState(StrEnum):
    """Where a webhook delivery stands."""

    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt to deliver a webhook."""

    number: int  # 1 for the first attempt
    at: datetime
    outcome: str  # "delivered", "retry" or "failed"
    status_code: int | None  # None when no response came (timeout, connection error)
    error: str  # empty when delivered
    seconds: float  # how long the attempt took


@dataclass(frozen=True)
class Delivery:
    """A webhook to send: the outbox row written with the task's final state."""

    delivery_id: str  # the `webhook-id`; the same on every retry
    task_id: str
    url: str
    payload: str  # the JSON body, exactly as sent and signed
    state: DeliveryState
    next_attempt_at: datetime
    attempts: tuple[Attempt, ...] = field(default=())


class Outbox(Protocol):
    """What the webhook dispatcher needs from the task store."""

    def due_deliveries(self, now: datetime, limit: int = 100) -> list[Delivery]:
        """PENDING deliveries whose next attempt is due at `now`, oldest first."""
        ...

    def next_attempt_after(self, moment: datetime) -> datetime | None:
        """When the first PENDING delivery not yet due at `moment` comes due; None if none."""
        ...

    def record_attempt(
        self,
        delivery_id: str,
        attempt: Attempt,
        state: DeliveryState,
        next_attempt_at: datetime | None,
    ) -> None:
        """Store an attempt, the delivery's new state and, if still PENDING, when to retry."""
        ...
