"""`make bench`'s pieces: the table, the targets, the stage shares and the replicas' memory."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

from benchmarks import suite
from benchmarks.replicas import StageSnapshot, peaks_mb, replica_processes, reset_peaks
from tests.benchmarks.helptext import help_text


def test_help_names_the_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(suite.main, monkeypatch, capsys)
    for option in ("--profile", "--precisions", "--scenarios", "--out", "--small"):
        assert option in text


def test_unknown_scenarios_are_refused() -> None:
    with pytest.raises(SystemExit, match=r"unknown scenarios \[7\]"):
        suite.main(["--scenarios", "1,7"])


def test_a_ratio_meets_its_target_only_at_or_below_it() -> None:
    def judged(ratio: float) -> bool | None:
        row = suite.Row("1 one track", "60 s", "bf16", "", "", ratio)
        return suite.target_row(row, 0.65).met

    assert judged(0.65) is True
    assert judged(0.66) is False
    untargeted = suite.target_row(suite.Row("x", "y", "fp32", "", "", 3.0), None)
    assert untargeted.met is None and untargeted.target == ""


def test_stage_shares_split_the_wait_into_forward_and_transfer() -> None:
    before = StageSnapshot({"decode": 1.0, "model": 10.0, "other": 0.0}, forward_s=8.0)
    after = StageSnapshot({"decode": 2.0, "model": 60.0, "other": 2.0}, forward_s=53.0)
    row = suite.stage_row(after.since(before), latency=60.0, length_s=60.0, precision="fp32")
    parts = row.figures["seconds"]
    assert parts["forward"] == pytest.approx(45.0)
    assert parts["transfer"] == pytest.approx(5.0)  # waited 50 s, computed 45 s
    assert parts["decode"] == pytest.approx(1.0) and parts["other"] == pytest.approx(2.0)
    assert parts["around"] == pytest.approx(7.0)  # the rest of the 60 s
    assert "model" not in parts
    assert row.ratio == pytest.approx(15.0 / 60.0)  # everything outside the forward passes
    assert row.met is False
    assert row.service.startswith("forward 75.0%")


def test_the_table_lines_up_its_columns() -> None:
    rows = [
        suite.target_row(suite.Row("1 one track", "60 s", "fp32", "46.0 s", "a 45.0 s", 1.02), 1.1),
        suite.Row("3 length", "20 min", "bf16", "900.0 s", "peak MiB: Separator 2100"),
    ]
    table = suite.format_table(rows, ["a header"])
    lines = table.splitlines()
    assert lines[:2] == ["a header", ""]
    assert lines[2].split() == [
        "scenario",
        "case",
        "prec",
        "service",
        "baseline",
        "ratio",
        "target",
        "met",
    ]
    starts = {line.index("fp32") if "fp32" in line else line.index("bf16") for line in lines[3:]}
    assert len(starts) == 1  # the precision column starts at one place in every row
    assert lines[3].split()[-4:] == ["1.02", "<=", "1.10", "yes"]


def test_replicas_are_found_by_their_title_and_their_peaks_reset() -> None:
    # Two stand-ins titled as Ray titles Serve replicas; each touches 200 MiB, frees it,
    # then waits: its peak stays until reset.
    grow = (
        "import sys; block = bytearray(200 * 2**20); del block; "
        "print('ready', flush=True); sys.stdin.read()"
    )
    script = f'exec -a "ray::ServeReplica:bench-app:Pipeline" {sys.executable} -c "{grow}"'
    with contextlib.ExitStack() as stack:
        stand_ins = []
        for _ in range(2):
            process = stack.enter_context(
                subprocess.Popen(
                    ["bash", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )
            stack.callback(process.kill)
            stand_ins.append(process)
        for process in stand_ins:
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        found = replica_processes("bench-app")
        assert set(found) == {"Pipeline", "Pipeline#2"}
        assert set(found.values()) == {process.pid for process in stand_ins}
        assert replica_processes("another-app") == {}
        assert all(peak >= 200 for peak in peaks_mb(found).values())
        reset_peaks(found)
        assert all(peak < 100 for peak in peaks_mb(found).values())


def test_profiles_keep_the_issue_sizes_in_full() -> None:
    full = suite.PROFILES["full"]
    assert full.one_track_s == (60.0, 180.0)
    assert full.concurrent == (1, 4, 16)
    assert full.lengths_min == (1.0, 5.0, 20.0)


def test_the_command_line_row_follows_each_one_track_row_of_its_length() -> None:
    def one(precision: str, case: str, median: float) -> suite.Row:
        return suite.Row(
            "1 one track", case, precision, "", "", 1.0, figures={"service_s": [median]}
        )

    rows = [one("fp32", "60 s", 40.0), one("fp32", "180 s", 120.0), one("bf16", "60 s", 25.0)]
    merged = suite.with_command_line(rows, 50.0, 60.0)
    assert [(row.case, row.precision) for row in merged] == [
        ("60 s", "fp32"),
        ("60 s", "fp32"),
        ("180 s", "fp32"),
        ("60 s", "bf16"),
        ("60 s", "bf16"),
    ]
    assert merged[1].ratio == pytest.approx(0.8) and "command line 50.0 s" in merged[1].baseline
    assert merged[4].ratio == pytest.approx(0.5)
