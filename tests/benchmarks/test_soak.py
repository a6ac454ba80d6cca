"""The soak script's pure parts: arrival schedule, percentiles, the report, the URL check,
the invariants of a chaos run, the chaos kinds and the webhook receiver's records.

The parts that talk to a running service run against one in tests/serve_app/test_chaos.py.
"""

from __future__ import annotations

import hashlib
import random
import re
import statistics
from dataclasses import replace

import numpy as np
import pytest

from benchmarks.audit import FinalView, TaskAudit, audit
from benchmarks.chaos import Kill, kind_of, kind_order
from benchmarks.receiver import Webhook, parse
from benchmarks.soak import ForeignServiceError, arrival_times, loopback_url
from benchmarks.soakclient import SubmitAnswer, TaskOutcome
from benchmarks.soakreport import build_report, format_report, percentile


def test_arrivals_are_deterministic_for_a_seed() -> None:
    assert arrival_times(0.3, 600, seed=7) == arrival_times(0.3, 600, seed=7)
    assert arrival_times(0.3, 600, seed=7) != arrival_times(0.3, 600, seed=8)


def test_arrivals_are_ordered_and_within_the_run() -> None:
    times = arrival_times(0.5, 300, seed=0)
    assert times == sorted(times)
    assert times[0] > 0
    assert times[-1] < 300


def test_arrival_gaps_average_one_over_the_rate() -> None:
    rate = 2.0
    times = arrival_times(rate, 50_000, seed=3)
    gaps = np.diff([0.0, *times])
    # About 100 000 exponential gaps: the mean's standard error is 0.3 % of 1/rate.
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.02)
    assert len(times) == pytest.approx(rate * 50_000, rel=0.02)
    # Exponential gaps: the standard deviation equals the mean.
    assert statistics.stdev(gaps) == pytest.approx(1 / rate, rel=0.03)


def test_arrivals_refuse_a_rate_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        arrival_times(0.0, 60, seed=0)


def test_percentiles_of_a_known_list() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(list(range(1, 101)), 90) == pytest.approx(90.1)
    assert percentile([5.0], 99) == 5.0


def test_percentiles_match_numpy() -> None:
    generator = random.Random(1)
    values = [generator.uniform(0, 30) for _ in range(257)]
    for percent in (50, 90, 99, 100):
        assert percentile(values, percent) == pytest.approx(np.percentile(values, percent))


def test_percentile_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def synthetic_outcomes() -> list[TaskOutcome]:
    """Two completed (latencies 4 and 10 s), one failed, two rejected by design (with
    Retry-After), three client errors (a 422, a 503 without Retry-After, no answer after two
    resends) and two accepted tasks never seen final."""
    return [
        TaskOutcome(1.0, 200, "a", "COMPLETED", 5.0),
        TaskOutcome(2.0, 200, "b", "COMPLETED", 12.0, poll_errors=2, submit_retries=1),
        TaskOutcome(3.0, 200, "c", "FAILED", 6.0),
        TaskOutcome(4.0, 429, retry_after=True),
        TaskOutcome(5.0, 503, retry_after=True),
        TaskOutcome(5.5, 503),
        TaskOutcome(6.0, 422),
        TaskOutcome(7.0, None, submit_retries=2),
        TaskOutcome(8.0, 200, "d", poll_errors=1),
        TaskOutcome(9.0, 200, "e"),
    ]


def test_report_counts_every_kind_of_outcome() -> None:
    report = build_report(synthetic_outcomes(), skipped=3, song_seconds=5.0)
    assert report.arrivals == 13
    assert report.skipped_by_client == 3
    assert report.submitted == 10
    assert (report.completed, report.failed, report.rejected) == (2, 1, 2)
    assert report.client_errors == 3
    assert report.not_final == 2
    assert report.submit_statuses == {"200": 5, "422": 1, "429": 1, "503": 2, "no answer": 1}
    assert report.submit_retries == 3
    assert report.poll_errors == 3
    # Failures (the FAILED task and the client errors) apart from refusals by design.
    assert report.error_rate == pytest.approx(4 / 10)
    assert report.rejection_rate == pytest.approx(2 / 10)
    assert report.broken


def test_report_latency_and_throughput_come_from_completed_tasks() -> None:
    report = build_report(synthetic_outcomes(), skipped=0, song_seconds=5.0)
    assert report.latency_p50_s == pytest.approx(7.0)
    assert report.latency_p90_s == pytest.approx(9.4)
    assert report.latency_max_s == pytest.approx(10.0)
    # Two 5 s songs between the first submission (1 s) and the last completion (12 s).
    assert report.throughput_audio_s_per_s == pytest.approx(10.0 / 11.0)


def test_a_200_without_a_task_id_is_a_client_error_not_a_pending_task() -> None:
    report = build_report([TaskOutcome(0.0, 200)], skipped=0, song_seconds=5.0)
    assert (report.client_errors, report.not_final) == (1, 0)


def test_report_of_a_run_with_no_completion() -> None:
    report = build_report([TaskOutcome(0.0, 200, "a")], skipped=0, song_seconds=5.0)
    assert report.not_final == 1
    assert report.latency_p50_s is None
    assert report.throughput_audio_s_per_s is None
    assert report.error_rate == 0.0
    assert re.search(r"not final +1 \(must be 0\)", format_report(report))
    assert report.broken


def test_report_of_nothing_sent() -> None:
    report = build_report([], skipped=4, song_seconds=5.0)
    assert (report.arrivals, report.submitted, report.error_rate) == (4, 0, 0.0)
    assert re.search(r"skipped by client +4 ", format_report(report))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:8000/", "http://[::1]:8000"]
)
def test_loopback_urls_are_accepted(url: str) -> None:
    assert loopback_url(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:8000",
        "http://10.0.0.5:8000",
        "http://127.0.0.1.example.com",
        "http://localhost.example.com:8000",
        "http://127.0.0.1@example.com",
        "ftp://127.0.0.1",
        "127.0.0.1:8000",
    ],
)
def test_foreign_urls_are_refused(url: str) -> None:
    with pytest.raises(ForeignServiceError, match="foreign service"):
        loopback_url(url)


@pytest.mark.parametrize(
    ("answer", "worth"),
    [
        (SubmitAnswer(None), True),
        (SubmitAnswer(500), True),
        (SubmitAnswer(502), True),
        (SubmitAnswer(503), True),  # no Retry-After: not the service's refusal by design
        (SubmitAnswer(503, retry_after=True), False),
        (SubmitAnswer(429, retry_after=True), False),
        (SubmitAnswer(422), False),
        (SubmitAnswer(200, "a"), False),
    ],
)
def test_a_post_is_sent_again_only_after_no_answer_or_a_failure(
    answer: SubmitAnswer, worth: bool
) -> None:
    assert answer.worth_retrying is worth


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("SERVE_REPLICA::stemsplit#Ingress#a1b2", "ingress"),
        ("SERVE_REPLICA::stemsplit#Pipeline#a1b2", "pipeline"),
        ("SERVE_REPLICA::stemsplit#Preprocessor#a1b2", "preprocessor"),
        ("SERVE_REPLICA::stemsplit#Separator_htdemucs_6s#a1b2", "separator"),
        ("stemsplit-webhooks", "dispatcher"),
        # Another application's actors, and Serve's own, are never chaos victims.
        ("SERVE_REPLICA::strict#Pipeline#a1b2", None),
        ("strict-webhooks", None),
        ("SERVE_CONTROLLER_ACTOR", None),
        ("SERVE_REPLICA::stemsplit#Unknown#a1b2", None),
        ("SERVE_REPLICA::stemsplit#Pipeline", None),
    ],
)
def test_chaos_kinds_of_named_actors(name: str, kind: str | None) -> None:
    assert kind_of("stemsplit", name) == kind


def test_every_chaos_round_hits_every_kind_once_in_a_seeded_order() -> None:
    kinds = ("separator", "pipeline", "preprocessor", "ingress", "dispatcher")
    rng = random.Random(5)
    rounds = [kind_order(kinds, rng) for _ in range(20)]
    assert all(sorted(order) == sorted(kinds) for order in rounds)
    assert len({tuple(order) for order in rounds}) > 1  # the order changes between rounds
    again = random.Random(5)
    assert rounds == [kind_order(kinds, again) for _ in range(20)]


def test_the_receiver_records_what_a_webhook_says() -> None:
    body = b'{"task_id": "t1", "status": "COMPLETED", "updatedAt": "2026-01-01T00:00:00"}'
    assert parse("msg_1", body) == Webhook(
        "msg_1", "t1", "COMPLETED", "2026-01-01T00:00:00", hashlib.sha256(body).hexdigest()
    )
    assert parse("msg_2", b"not json").task_id is None


VIEW = FinalView("COMPLETED", "2026-01-01T00:00:01", ("msg_a",), (("drums", '"e1"'),))
HOOK = Webhook("msg_a", "a", "COMPLETED", "2026-01-01T00:00:01", "d1")


def checked(
    view: FinalView | None = VIEW,
    later: FinalView | None = VIEW,
    hooks: tuple[Webhook, ...] = (HOOK,),
    *,
    final: str | None = "COMPLETED",
) -> tuple[int, int, int, int]:
    """(not final, ran twice, lost, unverified) for one task "a" seen as given."""
    result = audit([TaskAudit("a", final, view, later)], {"a": list(hooks)}, expect_webhooks=True)
    assert result.broken == any(
        (result.not_final, result.run_twice, result.webhooks_lost, result.unverified)
    )
    return result.not_final, result.run_twice, result.webhooks_lost, result.unverified


def test_a_task_completed_once_with_its_webhook_breaks_nothing() -> None:
    assert checked() == (0, 0, 0, 0)
    # The same delivery arriving again (a retry, a dispatcher restart) is allowed.
    result = audit(
        [TaskAudit("a", "COMPLETED", VIEW, VIEW)], {"a": [HOOK, HOOK]}, expect_webhooks=True
    )
    assert (result.webhooks_resent, result.broken) == (1, False)


@pytest.mark.parametrize(
    ("later", "hooks"),
    [
        # A second completion rewrites updatedAt, adds a delivery or rewrites the stems.
        (replace(VIEW, updated_at="2026-01-01T00:00:09"), (HOOK,)),
        (replace(VIEW, webhook_ids=("msg_a", "msg_b")), (HOOK,)),
        (replace(VIEW, stem_etags=(("drums", '"e2"'),)), (HOOK,)),
        (replace(VIEW, status="FAILED"), (HOOK,)),
        # The receiver got two events, or one event twice with different bodies.
        (VIEW, (HOOK, replace(HOOK, webhook_id="msg_b"))),
        (VIEW, (HOOK, replace(HOOK, digest="d2"))),
        # The event that arrived is not the one byId recorded.
        (VIEW, (replace(HOOK, webhook_id="msg_z"),)),
        (VIEW, (replace(HOOK, status="FAILED"),)),
        (VIEW, (replace(HOOK, updated_at="2026-01-01T00:00:09"),)),
    ],
)
def test_signs_of_a_second_completion_are_caught(
    later: FinalView, hooks: tuple[Webhook, ...]
) -> None:
    assert checked(later=later, hooks=hooks) == (0, 1, 0, 0)


def test_missing_webhooks_unread_and_unfinished_tasks_are_counted() -> None:
    assert checked(hooks=()) == (0, 0, 1, 0)
    assert checked(view=None, later=None, hooks=(), final=None) == (1, 0, 0, 0)
    assert checked(view=None, later=None) == (0, 0, 0, 1)  # final, but its files unreadable
    assert checked(later=None) == (0, 0, 0, 1)  # not readable after the run


def test_a_webhook_for_a_task_the_client_never_learned_of_is_noted_not_fatal() -> None:
    result = audit(
        [TaskAudit("a", "COMPLETED", VIEW, VIEW)],
        {"a": [HOOK], "z": [replace(HOOK, task_id="z", webhook_id="msg_z")]},
        expect_webhooks=True,
    )
    assert (result.webhooks_unknown, result.broken) == (1, False)


def test_report_of_a_chaos_run_names_kills_and_broken_invariants() -> None:
    result = audit([TaskAudit("a", "COMPLETED", VIEW, VIEW)], {}, expect_webhooks=True)
    kills = [Kill(30.0, "pipeline", "x"), Kill(60.0, "ingress", None), Kill(90.0, "pipeline", "y")]
    report = build_report(
        [TaskOutcome(0.0, 200, "a", "COMPLETED", 3.0)],
        skipped=0,
        song_seconds=5.0,
        kills=kills,
        checked=result,
    )
    assert (report.kills, report.missed_kills) == ({"pipeline": 2}, 1)
    assert report.not_final == 0 and report.broken
    text = format_report(report)
    assert re.search(r"kills +pipeline: 2; missed 1", text)
    assert re.search(r"webhooks lost +1 \(must be 0\)", text)
    assert "! task a: COMPLETED, but no webhook arrived" in text
