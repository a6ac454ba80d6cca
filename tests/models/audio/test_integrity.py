"""Tests of models.audio.integrity's phrasing of what a decoder met; the decoding cases that lead
to each warning are in tests/models/audio/test_decode.py."""

from __future__ import annotations

import io

from models.audio.integrity import MAX_ID3V2_TAGS, Tally, integrity_warnings, read_head

MPEG_FRAME_START = b"\xff\xfb\x90\x64"  # an MPEG-1 layer III frame header


def id3v2_tag(body_size: int) -> bytes:
    """An ID3v2.4 tag of `body_size` zero bytes (its size is a 28-bit syncsafe integer)."""
    size = bytes((body_size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x04\x00\x00" + size + bytes(body_size)


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


def test_the_head_skips_chained_id3v2_tags_to_the_first_frame() -> None:
    # The second tag lies beyond the bytes read at once, and is found all the same.
    data = io.BytesIO(id3v2_tag(100) + id3v2_tag(70_000) + MPEG_FRAME_START + bytes(500))

    head = read_head(data)

    assert head.audio_start == 110 + 70_010
    assert head.frame_at_start
    assert data.tell() == 0  # rewound for FFmpeg


def test_the_head_reads_at_most_max_id3v2_tags() -> None:
    data = io.BytesIO(id3v2_tag(0) * 1000 + MPEG_FRAME_START)

    head = read_head(data)

    assert head.audio_start == 10 * MAX_ID3V2_TAGS
    assert not head.frame_at_start
