"""The soak's invariants, checked from outside the service: every accepted task ends final,
none completes twice, and every final task's webhook arrives.

What is observed, per task the client learned the id of: byId's answer when the task was
first seen final (`FinalView`: status, `updatedAt`, its webhook deliveries and the ETags of
its stem files), the same read again after the run (`recheck`), and the webhooks the
receiver got. A task "ran twice" when anything of its final state changed after it was seen
final (a second completion rewrites `updatedAt`, a second delivery or rewritten stems show
too), when it has more than one delivery, or when the receiver got two different events for
it (two webhook ids, one id with two bodies, or an event other than the final state byId
recorded). A webhook is "lost" when a final task's never arrived. A task is "unverified"
when its final state could not be read whole (a stem file that does not answer) or read
again after the run; that breaks the run too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.receiver import Webhook


@dataclass(frozen=True)
class FinalView:
    """What byId said about a task that was final."""

    status: str
    updated_at: str | None
    webhook_ids: tuple[str, ...]  # the task's deliveries, in the order they were written
    stem_etags: tuple[tuple[str, str | None], ...] = ()  # (stem, ETag), sorted by stem


@dataclass(frozen=True)
class TaskAudit:
    """The observations of one accepted task."""

    task_id: str
    final_status: str | None  # None: never seen final
    first_final: FinalView | None  # None: its final state could not be read whole
    recheck: FinalView | None  # None: could not be read again after the run


@dataclass(frozen=True)
class Audit:
    """Invariant counts (each must be 0) and what else was seen."""

    not_final: int
    run_twice: int
    webhooks_lost: int
    unverified: int
    webhooks_resent: int  # deliveries that arrived more than once (allowed: same id, same body)
    webhooks_unknown: int  # webhooks about tasks whose POST never answered the client
    problems: tuple[str, ...]  # one line per broken invariant

    @property
    def broken(self) -> bool:
        """Whether any invariant is broken."""
        return bool(self.not_final or self.run_twice or self.webhooks_lost or self.unverified)


def twice_reasons(task: TaskAudit, received: Sequence[Webhook]) -> list[str]:
    """Why a final task looks as if it ran to completion twice; empty when it does not."""
    first, later = task.first_final, task.recheck
    assert first is not None and later is not None
    reasons = []
    if later != first:
        reasons.append(f"its final state changed after it was seen final: {first} -> {later}")
    if len(later.webhook_ids) > 1:
        reasons.append(f"{len(later.webhook_ids)} webhook deliveries were recorded")
    ids = sorted({webhook.webhook_id for webhook in received})
    if len(ids) > 1:
        reasons.append(f"the receiver got {len(ids)} webhook ids: {', '.join(ids)}")
    for webhook_id in ids:
        if len({w.digest for w in received if w.webhook_id == webhook_id}) > 1:
            reasons.append(f"webhook {webhook_id} arrived with different bodies")
    if later.webhook_ids and ids and ids != [later.webhook_ids[0]]:
        reasons.append(f"the receiver got {ids}, byId recorded {list(later.webhook_ids)}")
    events = {(w.status, w.updated_at) for w in received}
    if events - {(later.status, later.updated_at)}:
        reasons.append(f"a webhook told {sorted(events)}, byId {later.status} {later.updated_at}")
    return reasons


def audit(
    tasks: Sequence[TaskAudit], webhooks: dict[str | None, list[Webhook]], *, expect_webhooks: bool
) -> Audit:
    """Check every task's observations against the invariants; `webhooks` by task id, as
    `WebhookLog.by_task` gives them."""
    problems: list[str] = []
    not_final = run_twice = lost = unverified = 0
    for task in tasks:
        received = webhooks.get(task.task_id, [])
        if task.final_status is None:
            not_final += 1
            problems.append(f"task {task.task_id}: never seen final")
            continue
        if task.first_final is None:
            unverified += 1
            problems.append(f"task {task.task_id}: {task.final_status}, but its files never read")
            continue
        if task.recheck is None:
            unverified += 1
            problems.append(f"task {task.task_id}: could not be read again after the run")
            continue
        reasons = twice_reasons(task, received)
        if reasons:
            run_twice += 1
            problems.extend(f"task {task.task_id}: {reason}" for reason in reasons)
        if expect_webhooks and not received:
            lost += 1
            problems.append(f"task {task.task_id}: {task.recheck.status}, but no webhook arrived")
    known = {task.task_id for task in tasks}
    resent = sum(
        len(group) - len({webhook.webhook_id for webhook in group}) for group in webhooks.values()
    )
    unknown = sum(1 for task_id in webhooks if task_id not in known)
    return Audit(not_final, run_twice, lost, unverified, resent, unknown, tuple(problems))
