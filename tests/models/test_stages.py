"""StageClock: seconds per stage, exclusive nesting per thread, shared totals; timed on a
fake time source that each test moves by hand."""

from __future__ import annotations

import threading

import pytest

from models.stages import NO_CLOCK, StageClock, describe, shares
from tests.models.faketime import FakeTime


def test_nested_stage_pauses_the_outer_one() -> None:
    time = FakeTime()
    clock = StageClock(time)
    with clock.stage("overlap_add"):
        time.advance(1.0)
        with clock.stage("model"):
            time.advance(5.0)
        time.advance(2.0)
        with clock.stage("encode"):
            time.advance(0.5)
            with clock.stage("model"):
                time.advance(3.0)
            time.advance(0.25)
    assert clock.totals() == {"overlap_add": 3.0, "model": 8.0, "encode": 0.75}
    assert sum(clock.totals().values()) == 11.75  # the wall time, each second once


def test_a_stage_nested_in_itself_counts_once() -> None:
    time = FakeTime()
    clock = StageClock(time)
    with clock.stage("model"):
        time.advance(1.0)
        with clock.stage("model"):
            time.advance(2.0)
        time.advance(4.0)
    assert clock.totals() == {"model": 7.0}


def test_a_failing_block_still_counts_and_unwinds() -> None:
    time = FakeTime()
    clock = StageClock(time)
    with clock.stage("other"):
        with pytest.raises(ValueError), clock.stage("decode"):
            time.advance(2.0)
            raise ValueError("damaged input")
        time.advance(1.0)
    assert clock.totals() == {"decode": 2.0, "other": 1.0}


def test_timed_wraps_a_callable() -> None:
    time = FakeTime()
    clock = StageClock(time)

    def forward(windows: int) -> int:
        time.advance(0.5 * windows)
        return windows

    run = clock.timed("model", forward)
    with clock.stage("overlap_add"):
        assert run(4) == 4
        time.advance(1.0)
    assert clock.totals() == {"model": 2.0, "overlap_add": 1.0}


def test_threads_nest_apart_and_share_the_totals() -> None:
    """Thread B opens a stage while thread A's outer stage is open: B's stage does not
    pause A's, and both land in the same totals."""
    time = FakeTime()
    clock = StageClock(time)
    a_open, b_done = threading.Event(), threading.Event()

    def other_thread() -> None:
        a_open.wait(timeout=10)
        with clock.stage("encode"):
            time.advance(3.0)
        b_done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with clock.stage("overlap_add"):
        a_open.set()
        assert b_done.wait(timeout=10)
        time.advance(1.0)
    worker.join(timeout=10)
    # A's stage saw all four seconds go by: threads overlap, so their stages sum past wall.
    assert clock.totals() == {"encode": 3.0, "overlap_add": 4.0}


def test_add_sums_totals_of_other_clocks() -> None:
    replica = StageClock()
    replica.add({"model": 2.0, "store": 0.5})
    replica.add({"model": 1.0, "fetch": 0.25})
    assert replica.totals() == {"model": 3.0, "store": 0.5, "fetch": 0.25}


def test_no_clock_keeps_nothing() -> None:
    def forward() -> int:
        return 1

    assert NO_CLOCK.timed("model", forward) is forward
    with NO_CLOCK.stage("model"):
        NO_CLOCK.add({"model": 1.0})
    assert NO_CLOCK.totals() == {}


def test_shares_and_description() -> None:
    seconds = {"decode": 1.0, "model": 3.0}
    assert shares(seconds) == {"decode": 0.25, "model": 0.75}
    assert shares({}) == {}
    assert describe(seconds) == "4.000 s: model 3.000 s (75.0 %), decode 1.000 s (25.0 %)"
