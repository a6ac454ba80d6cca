"""Tests of models.integrity's phrasing of what a decoder met; the decoding cases that lead
to each warning are in tests/test_audio.py."""

from __future__ import annotations

from models.integrity import Tally, integrity_warnings


def test_a_demuxing_error_says_where_decoding_stopped() -> None:
    tally = Tally(packets=40, stopped_by_error=True)

    assert integrity_warnings(7.25, None, tally, 0) == (
        "the input's data is damaged after 7.2 s; decoding stopped there and the stems cover "
        "that part",
    )


def test_a_failed_last_packet_is_the_truncation_when_a_shortfall_is_reported() -> None:
    tally = Tally()
    for failed in (False, True, False, True):
        tally.packet(None, failed=failed)

    damaged, short = integrity_warnings(1.0, 3.0, tally, 0)

    assert damaged == "1 damaged packet was left out: the input could not be decoded there"
    assert short.startswith("the input is shorter than its header declares: 1.0 s")


def test_a_whole_input_has_no_warnings() -> None:
    tally = Tally()
    for _ in range(10):
        tally.packet(None, failed=False)

    assert integrity_warnings(3.0, 3.0, tally, 0) == ()
