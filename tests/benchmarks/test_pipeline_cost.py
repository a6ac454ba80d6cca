"""benchmarks/pipeline_cost.py on a two-second song: it decodes and encodes for real and
reports every output format."""

from __future__ import annotations

import sys

import pytest

from benchmarks import pipeline_cost
from models.audio.encode import FORMATS


def test_it_reports_decoding_and_every_format(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["pipeline_cost", "--seconds", "2", "--stems", "3"])
    pipeline_cost.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 s stereo song, 3 stems, CPU seconds:"
    assert lines[1].startswith("decode the MP3 upload (")
    assert [line.split()[4].rstrip(":") for line in lines[2:]] == list(FORMATS)
    # A WAV stem holds the samples uncompressed: 2 s x 44100 x 2 channels x 2 bytes.
    assert "(0.4 MB a stem)" in lines[2]
