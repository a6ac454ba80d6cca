"""benchmarks/transfer.py without starting Ray: its options, htdemucs_6s's window, the
rounding measure, and the arguments it refuses before starting anything."""

from __future__ import annotations

import pytest
import torch

from benchmarks import transfer
from tests.benchmarks.helptext import help_text


def test_help_names_every_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = help_text(transfer.main, monkeypatch, capsys)
    for option in ("--rounds", "--batch", "--sources", "--payloads", "--overlap", "--json"):
        assert option in shown


def test_the_window_is_htdemucs_6s_published_one() -> None:
    geometry = transfer.htdemucs_6s_geometry()
    assert (geometry.samplerate, geometry.audio_channels, len(geometry.sources)) == (44100, 2, 6)
    # The published segment is 39/5 s; HTDemucs takes exactly that many frames.
    assert geometry.window_length(geometry.segment_length) == 343980


def test_float32_rounding_changes_nothing_and_float16_less_than_bfloat16() -> None:
    _, unchanged = transfer.rounding_cost(torch.float32, 1.0, 44100)
    assert unchanged == 0.0
    half_sdr, _ = transfer.rounding_cost(torch.float16, 1.0, 44100)
    bfloat_sdr, _ = transfer.rounding_cost(torch.bfloat16, 1.0, 44100)
    assert half_sdr > bfloat_sdr


@pytest.mark.parametrize(
    "arguments", [["--payloads", "numpy,int8"], ["--rounds", "0"], ["--batch", "0"]]
)
def test_refuses_unknown_payloads_and_empty_runs(arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        transfer.main(arguments)
    assert exit_.value.code == 2
