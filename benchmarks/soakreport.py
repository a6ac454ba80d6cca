"""The soak's report: counts, latency percentiles, throughput, error and rejection rates,
the chaos kills and the invariants checked (benchmarks/audit.py), and its printed form."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.audit import Audit
from benchmarks.chaos import Kill
from benchmarks.soakclient import REJECTED, TaskOutcome
from serve_app.store.records import Status


@dataclass(frozen=True)
class SoakReport:
    """The numbers of a soak run."""

    arrivals: int
    skipped_by_client: int
    submitted: int
    completed: int
    failed: int
    rejected: int  # refused by design: 429 or 503 with Retry-After
    client_errors: int  # any other answer, or none, after the client's retries
    not_final: int
    submit_statuses: dict[str, int]
    submit_retries: int
    poll_errors: int
    latency_p50_s: float | None
    latency_p90_s: float | None
    latency_p99_s: float | None
    latency_max_s: float | None
    throughput_audio_s_per_s: float | None  # None when no task completed
    error_rate: float  # (failed + client errors) / submitted
    rejection_rate: float  # rejected / submitted
    kills: dict[str, int] = field(default_factory=dict)  # by kind; empty without chaos
    missed_kills: int = 0  # kill times when no actor of the kind was alive
    audit: Audit | None = None  # None when nothing was checked beyond "not final"

    @property
    def broken(self) -> bool:
        """Whether an invariant is broken: a task not final, run twice, a webhook lost."""
        return self.not_final > 0 or (self.audit is not None and self.audit.broken)


def percentile(values: Sequence[float], percent: float) -> float:
    """The `percent` percentile, interpolating linearly between ranks (as numpy does)."""
    if not values:
        raise ValueError("no values to take a percentile of")
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be within 0 and 100, not {percent}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * percent / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def outcome_kind(outcome: TaskOutcome) -> str:
    """completed, failed, rejected (by design), client error (any other answer, or none) or
    not final."""
    if outcome.submit_status in REJECTED and outcome.retry_after:
        return "rejected"
    if outcome.submit_status != 200 or outcome.task_id is None:
        return "client error"
    if outcome.final_status == Status.COMPLETED:
        return "completed"
    if outcome.final_status == Status.FAILED:
        return "failed"
    return "not final"


def build_report(
    outcomes: Sequence[TaskOutcome],
    *,
    skipped: int,
    song_seconds: float,
    kills: Sequence[Kill] = (),
    checked: Audit | None = None,
) -> SoakReport:
    """The report of a run: `outcomes` of the submitted tasks, `skipped` arrivals not sent,
    the chaos `kills` and the invariants `checked`, if any."""
    kinds = Counter(outcome_kind(outcome) for outcome in outcomes)
    statuses = Counter(
        "no answer" if outcome.submit_status is None else str(outcome.submit_status)
        for outcome in outcomes
    )
    finished = [
        (o.submitted_at, o.ended_at)
        for o in outcomes
        if outcome_kind(o) == "completed" and o.ended_at is not None
    ]
    latencies = [end - start for start, end in finished]
    # Undefined without a completion: the span ends at the last one.
    throughput = None
    if finished:
        span = max(end for _, end in finished) - min(o.submitted_at for o in outcomes)
        throughput = len(finished) * song_seconds / span if span > 0 else None
    failures = kinds["failed"] + kinds["client error"]

    def latency(percent: float) -> float | None:
        return percentile(latencies, percent) if latencies else None

    def share(count: int) -> float:
        return count / len(outcomes) if outcomes else 0.0

    return SoakReport(
        arrivals=len(outcomes) + skipped,
        skipped_by_client=skipped,
        submitted=len(outcomes),
        completed=kinds["completed"],
        failed=kinds["failed"],
        rejected=kinds["rejected"],
        client_errors=kinds["client error"],
        not_final=kinds["not final"],
        submit_statuses=dict(sorted(statuses.items())),
        submit_retries=sum(outcome.submit_retries for outcome in outcomes),
        poll_errors=sum(outcome.poll_errors for outcome in outcomes),
        latency_p50_s=latency(50),
        latency_p90_s=latency(90),
        latency_p99_s=latency(99),
        latency_max_s=latency(100),
        throughput_audio_s_per_s=throughput,
        error_rate=share(failures),
        rejection_rate=share(kinds["rejected"]),
        kills=dict(sorted(Counter(kill.kind for kill in kills if not kill.missed).items())),
        missed_kills=sum(kill.missed for kill in kills),
        audit=checked,
    )


def format_report(report: SoakReport) -> str:
    """The report as a small table, then any broken invariant, one line each."""

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    def counts(values: dict[str, int]) -> str:
        return ", ".join(f"{name}: {count}" for name, count in values.items()) or "-"

    throughput = (
        "-"
        if report.throughput_audio_s_per_s is None
        else f"{report.throughput_audio_s_per_s:.3f} audio s per wall s"
    )
    rows = [
        ("arrivals", str(report.arrivals)),
        ("skipped by client", f"{report.skipped_by_client} (concurrency cap full; never sent)"),
        ("submitted", str(report.submitted)),
        ("completed", str(report.completed)),
        ("failed", str(report.failed)),
        ("rejected (429/503)", f"{report.rejected} (by design: with Retry-After)"),
        ("client errors", f"{report.client_errors} (no task, even when sent again)"),
        ("POSTs sent again", str(report.submit_retries)),
        ("not final", f"{report.not_final} (must be 0)"),
        ("submit answers", counts(report.submit_statuses)),
        ("poll errors", str(report.poll_errors)),
        ("latency p50", seconds(report.latency_p50_s)),
        ("latency p90", seconds(report.latency_p90_s)),
        ("latency p99", seconds(report.latency_p99_s)),
        ("latency max", seconds(report.latency_max_s)),
        ("throughput", throughput),
        ("error rate", f"{report.error_rate:.2%} (failed and client errors)"),
        ("rejection rate", f"{report.rejection_rate:.2%}"),
    ]
    if report.kills or report.missed_kills:
        rows.append(("kills", f"{counts(report.kills)}; missed {report.missed_kills}"))
    checked = report.audit
    if checked is not None:
        rows += [
            ("ran twice", f"{checked.run_twice} (must be 0)"),
            ("webhooks lost", f"{checked.webhooks_lost} (must be 0)"),
            ("unverified", f"{checked.unverified} (must be 0)"),
            ("webhooks resent", f"{checked.webhooks_resent} (same id and body: allowed)"),
            ("webhooks unasked", f"{checked.webhooks_unknown} (tasks whose POST got no answer)"),
        ]
    table = "\n".join(f"  {name:20s} {value}" for name, value in rows)
    problems = checked.problems if checked is not None else ()
    return "\n".join([table, *(f"  ! {problem}" for problem in problems)])
