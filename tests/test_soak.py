"""The soak script's pure parts: arrival schedule, percentiles, the report, the URL check.

The parts that talk to a running service are exercised by running the script against it.
"""

from __future__ import annotations

import random
import re
import statistics

import numpy as np
import pytest

from benchmarks.soak import (
    ForeignServiceError,
    TaskOutcome,
    arrival_times,
    build_report,
    format_report,
    loopback_url,
    percentile,
)


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
    """Two completed (latencies 4 and 10 s), one failed, two rejected, two client errors
    (a 422 and no answer) and two accepted tasks never seen final."""
    return [
        TaskOutcome(1.0, 200, "a", "COMPLETED", 5.0),
        TaskOutcome(2.0, 200, "b", "COMPLETED", 12.0, poll_errors=2),
        TaskOutcome(3.0, 200, "c", "FAILED", 6.0),
        TaskOutcome(4.0, 429),
        TaskOutcome(5.0, 503),
        TaskOutcome(6.0, 422),
        TaskOutcome(7.0, None),
        TaskOutcome(8.0, 200, "d", poll_errors=1),
        TaskOutcome(9.0, 200, "e"),
    ]


def test_report_counts_every_kind_of_outcome() -> None:
    report = build_report(synthetic_outcomes(), skipped=3, song_seconds=5.0)
    assert report.arrivals == 12
    assert report.skipped_by_client == 3
    assert report.submitted == 9
    assert (report.completed, report.failed, report.rejected) == (2, 1, 2)
    assert report.client_errors == 2
    assert report.not_final == 2
    assert report.submit_statuses == {"200": 5, "422": 1, "429": 1, "503": 1, "no answer": 1}
    assert report.poll_errors == 3
    assert report.error_rate == pytest.approx(5 / 9)


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
