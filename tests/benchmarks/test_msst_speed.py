"""benchmarks/msst_speed.py on tiny models and a half-second mix: a row per family asked,
with positive times and the engine's stems equal to MSST's demix at batch 1 in SDR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import msst_speed
from tests.benchmarks.helptext import help_text

SAME_STEMS_DB = 60.0  # float32 rounding alone stays far above this


def test_the_command_writes_rows_whose_engine_equals_demix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file = tmp_path / "msst_speed.json"
    msst_speed.main(
        ["--small", "--seconds", "0.5", "--rounds", "2", "--families", "scnet",
         "--chunk-seconds", "0.25", "--num-overlap", "2", "--json", str(report_file)]
    )  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == msst_speed.COLUMNS
    assert [line.split()[0] for line in lines[3:]] == ["scnet"]
    report = json.loads(report_file.read_text())
    (row,) = report["rows"]
    assert row["family"] == "scnet" and row["num_overlap"] == 2 and row["chunks"] > 2
    assert row["baseline_s"] > 0 and len(row["baseline_runs_s"]) == 2
    (engine,) = row["engine"]
    assert engine["batch_size"] == msst_speed.SERVICE_CPU_BATCH == 1
    assert engine["seconds"] > 0
    assert engine["ratio"] == pytest.approx(engine["seconds"] / row["baseline_s"])
    assert engine["sdr_db"] > SAME_STEMS_DB


def test_measure_family_runs_the_config_batch_size_too() -> None:
    # The published SCNet config reads inference.batch_size 8; tiny models keep 1, so
    # the full-size config is measured here on a chunk too short to cost much.
    row = msst_speed.measure_family(
        "scnet", seconds=0.1, rounds=1, small=False, chunk_seconds=0.05, num_overlap=1
    )
    assert row.config_batch == 8
    assert [run.batch_size for run in row.engine] == [1, 8]
    assert all(run.seconds > 0 and run.sdr_db > SAME_STEMS_DB for run in row.engine)
    table = msst_speed.format_rows([row]).splitlines()
    assert table[0] == msst_speed.COLUMNS
    assert [line.split()[-8] for line in table[1:]] == ["1", "8"]  # the batch column


def test_zero_keeps_the_configs_chunks_and_overlap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file = tmp_path / "msst_speed.json"
    msst_speed.main(
        ["--small", "--seconds", "0.5", "--rounds", "1", "--families", "mdx23c",
         "--chunk-seconds", "0", "--num-overlap", "0", "--json", str(report_file)]
    )  # fmt: skip
    assert "the configs' chunks, the configs' num_overlap" in capsys.readouterr().out
    report = json.loads(report_file.read_text())
    assert report["chunk_seconds"] is None and report["num_overlap"] is None
    (row,) = report["rows"]
    assert row["num_overlap"] == 4  # the DrumSep config's inference.num_overlap


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--families", "demucs"], "--families: choose from mdx23c, bs_roformer"),
        (["--seconds", "0"], "--seconds must be positive and --rounds at least 1"),
        (["--rounds", "0"], "--seconds must be positive and --rounds at least 1"),
        (["--num-overlap", "-1"], "--chunk-seconds and --num-overlap must not be negative"),
    ],
)
def test_bad_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        msst_speed.main(arguments)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_help_names_the_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = help_text(msst_speed.main, monkeypatch, capsys)
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
