"""benchmarks/precision.py on tiny models and a half-second mix: one row per family asked,
with its times and a finite SDR, in the table and in the JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import precision
from tests.benchmarks.helptext import help_text

FAMILIES = ["mel_band_roformer", "bs_roformer"]


def test_a_row_per_family_asked_with_a_finite_sdr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file = tmp_path / "precision.json"
    precision.main(
        ["--small", "--seconds", "0.5", "--rounds", "1", "--families", ",".join(FAMILIES),
         "--chunk-seconds", "0.25", "--num-overlap", "1", "--json", str(report_file)]
    )  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "bf16 against fp32 on the CPU: 0.5 s stereo mix, 1 rounds, tiny models; "
        "MSST: 0.25 s chunks (RoFormers, SCNet), num_overlap 1"
    )
    assert lines[2] == precision.COLUMNS
    assert [line.split()[0] for line in lines[3:]] == FAMILIES
    report = json.loads(report_file.read_text())
    assert [row["family"] for row in report["rows"]] == FAMILIES
    for row in report["rows"]:
        assert math.isfinite(row["sdr_db"])
        assert row["sdr_db"] == min(row["stem_sdr_db"].values())
        assert row["fp32_s"] > 0 and row["bf16_s"] > 0
        assert row["ratio"] == pytest.approx(row["bf16_s"] / row["fp32_s"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--families", "demucs,spleeter"], "--families: choose from demucs, mdx23c"),
        (["--seconds", "0"], "--seconds must be positive and --rounds at least 1"),
        (["--rounds", "0"], "--seconds must be positive and --rounds at least 1"),
        (["--chunk-seconds", "0"], "--chunk-seconds must be positive and --num-overlap at least 1"),
        (["--num-overlap", "0"], "--chunk-seconds must be positive and --num-overlap at least 1"),
    ],
)
def test_bad_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        precision.main(arguments)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_help_names_the_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = help_text(precision.main, monkeypatch, capsys)
    for option in (
        "--seconds",
        "--rounds",
        "--families",
        "--chunk-seconds",
        "--num-overlap",
        "--small",
        "--json",
    ):
        assert option in shown
