"""Per-key rate limits that hold under concurrency.

Each API key's admissions within the rate window are kept in one row of the task database
(`rate_windows`). A request takes a slot in the transaction that counts the key's
admissions, and that transaction first writes the key's row, so it holds the row's lock
(on SQLite, the database's write lock) until it commits: concurrent requests of one key,
from any number of replicas, are counted one after another and never all pass one check.
A slot is taken before the request body is read and released when the request ends
without creating a task (refused, a repeat, a storage fault, a client that went away); a
slot whose request died before releasing it drops out with the window.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from serve_app.store.schema import as_utc, rate_window_table

# One retry covers the one race there is: two first requests of a key inserting its row.
_ATTEMPTS = 2


@dataclass(frozen=True)
class Slot:
    """An admission held by a request until it creates its task or gives the slot back."""

    owner: str
    slot_id: str


@dataclass(frozen=True)
class Refusal:
    """No slot: the key made its limit of requests within the window."""

    retry_after_s: int  # when the oldest admission leaves the window, at least 1


class RateLimiter:
    """At most `per_window` admissions per key in any `window_s` seconds."""

    def __init__(self, engine: Engine, per_window: int, window_s: float = 60.0) -> None:
        if per_window < 1:
            raise ValueError(f"per_window must be at least 1, got {per_window}")
        if not window_s > 0:
            raise ValueError(f"window_s must be a positive number of seconds, got {window_s}")
        self._engine = engine
        self.per_window = per_window
        self.window_s = window_s

    def take(self, owner: str, *, now: datetime | None = None) -> Slot | Refusal:
        """A slot for `owner`, or a Refusal saying when to try again."""
        for attempt in range(_ATTEMPTS):
            try:
                with self._engine.begin() as conn:
                    return self._take(conn, owner, now)
            except IntegrityError:
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("the loop above returns or raises")

    def release(self, slot: Slot) -> None:
        """Give a slot back (its request made no task); a slot already gone is fine."""
        with self._engine.begin() as conn:
            if not _lock(conn, slot.owner):
                return
            admitted = _admitted(conn, slot.owner)
            kept = [entry for entry in admitted if entry[1] != slot.slot_id]
            if len(kept) != len(admitted):
                _store(conn, slot.owner, kept)

    def _take(self, conn: Connection, owner: str, now: datetime | None) -> Slot | Refusal:
        if not _lock(conn, owner):
            # The key's first request: a concurrent one may insert the row first, in which
            # case this insert fails and `take` tries again, then finding the row.
            conn.execute(
                insert(rate_window_table).values(
                    owner=owner, admitted="[]", updated_at=datetime.now(UTC)
                )
            )
        # Read once the row is locked, so that a key's admissions are recorded in time order.
        moment = as_utc(now or datetime.now(UTC)).timestamp()
        window = [entry for entry in _admitted(conn, owner) if entry[0] > moment - self.window_s]
        if len(window) >= self.per_window:
            _store(conn, owner, window)
            oldest = min(entry[0] for entry in window)
            return Refusal(retry_after_s=max(1, math.ceil(oldest + self.window_s - moment)))
        slot = Slot(owner=owner, slot_id=uuid.uuid4().hex)
        _store(conn, owner, [*window, (moment, slot.slot_id)])
        return slot


def _lock(conn: Connection, owner: str) -> bool:
    """Write the key's row, which locks it until the transaction ends; False if it has none."""
    touched = conn.execute(
        update(rate_window_table)
        .where(rate_window_table.c.owner == owner)
        .values(updated_at=datetime.now(UTC))
    )
    return touched.rowcount == 1


def _admitted(conn: Connection, owner: str) -> list[tuple[float, str]]:
    """The key's recorded admissions: (epoch seconds, slot id)."""
    text = conn.execute(
        select(rate_window_table.c.admitted).where(rate_window_table.c.owner == owner)
    ).scalar_one()
    return [(float(at), str(slot_id)) for at, slot_id in json.loads(text)]


def _store(conn: Connection, owner: str, admitted: list[tuple[float, str]]) -> None:
    conn.execute(
        update(rate_window_table)
        .where(rate_window_table.c.owner == owner)
        .values(admitted=json.dumps(admitted))
    )
