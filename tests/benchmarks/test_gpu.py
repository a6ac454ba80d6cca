"""benchmarks/gpu.py on the CPU with the small model (the table's shape, finite figures,
the budget that skips what would not fit) and benchmarks/gpu_grid.py's bookkeeping."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu, gpu_grid
from models.engine.gather import DEFAULT_WAIT_S
from tests.benchmarks.helptext import help_text

LONG, NO_LONG, NO_TIME = ["--long-seconds", "2"], ["--long-seconds", "0"], ["--budget-s", "0"]
TINY = ["--device", "cpu", "--small", "--batch-sizes", "2", "--seconds", "2", "--rounds", "1"]


def test_a_tiny_run_writes_every_cell_with_finite_sdr(tmp_path: Path) -> None:
    # A wait longer than the run: each pass waits for both tracks, however loaded the CPU.
    patient = ["--wait-s", "600"]
    document = gpu.main(
        [str(tmp_path), *TINY, "--tracks", "2", "--precisions", "fp32,bf16", *LONG, *patient]
    )
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert written["cells"] == document["cells"]
    fp32, bf16 = cells = written["cells"]
    assert [(cell["precision"], cell["tracks"], cell["batch_size"]) for cell in cells] == [
        ("fp32", 2, 2),
        ("bf16", 2, 2),
    ]
    for cell in cells:
        assert cell["status"] == "done"
        assert cell["realtime"] == cell["audio_s"] / cell["wall_s"]
        assert cell["windows_per_pass"] == 2  # the two tracks' windows share each pass
        assert cell["tflops"] is None  # the FLOP figure is the released model's
    assert fp32["sdr_vs_fp32_db"] > 100  # the engine's fp32 stems are apply_model's
    assert math.isfinite(bf16["sdr_vs_fp32_db"])
    assert 0 < bf16["sdr_vs_fp32_db"] < fp32["sdr_vs_fp32_db"]
    long_track = written["long_track"]
    assert long_track["seconds"] == 2
    assert long_track["fp32"]["sdr_vs_fp32_db"] > 100
    assert math.isfinite(long_track["bf16"]["sdr_vs_fp32_db"])
    assert written["fastest"]["status"] == "done"
    assert written["apply_model"]["wall_s"] > 0
    assert written["targets"]["sixteen_tracks_realtime"] is None  # no 16-track cell here


def test_cells_past_the_budget_are_skipped(tmp_path: Path) -> None:
    document = gpu.main(
        [str(tmp_path), *TINY, "--tracks", "1", "--precisions", "fp32", *NO_LONG, *NO_TIME]
    )
    assert [cell["status"] for cell in document["cells"]] == ["skipped"]
    assert document["fastest"] is None
    assert "long_track" not in document


def test_the_budget_allows_what_ends_inside_it() -> None:
    now = [100.0]
    budget = gpu_grid.Budget(480.0, clock=lambda: now[0])
    now[0] += 400.0
    assert budget.allows(80.0)
    assert not budget.allows(80.5)
    assert gpu_grid.DEFAULT_BUDGET_S == 480.0


def test_it_imports_nothing_the_gpu_machine_lacks() -> None:
    # Ray, PyAV, soxr and demucs's audio-file dependencies are not there (gpu_run.sh).
    absent = ("ray", "av", "soxr", "lameenc", "sphn")
    code = f"import sys; sys.modules.update(dict.fromkeys({absent!r})); import benchmarks.gpu"
    repository = Path(gpu.__file__).resolve().parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=repository).returncode == 0


def test_a_prediction_reads_the_closest_finished_cells_of_its_kind() -> None:
    done = gpu_grid.Cell(4, 8, "bf16", False, status="done", realtime=100.0)
    slower = gpu_grid.Cell(4, 16, "bf16", False, status="done", realtime=50.0)
    fewer = gpu_grid.Cell(1, 8, "bf16", False, status="done", realtime=10.0)
    other = gpu_grid.Cell(16, 8, "fp32", False, status="done", realtime=1.0)
    cell = gpu_grid.Cell(16, 8, "bf16", False)
    assert gpu_grid.predicted_s(cell, [fewer, done, slower, other], 960.0, 5.0) == 960.0 / 50.0
    assert gpu_grid.predicted_s(cell, [other], 960.0, 5.0) == 960.0 / 5.0  # apply_model's rate


def test_the_targets_read_sixteen_tracks_and_the_long_track() -> None:
    cells = [
        gpu_grid.Cell(16, 8, "bf16", False, status="done", realtime=900.0, vs_apply_model=9.0),
        gpu_grid.Cell(16, 16, "bf16", False, status="done", realtime=1100.0, vs_apply_model=11.0),
        gpu_grid.Cell(64, 8, "bf16", False, status="done", realtime=2000.0, vs_apply_model=20.0),
    ]
    long = {"seconds": 180.0, "bf16": {"speedup": 3.0}, "fp32": "skipped"}
    found = gpu_grid.targets(cells, long)
    assert found["sixteen_tracks_realtime"] == 1100.0
    assert found["sixteen_tracks_vs_apply_model"] == 11.0
    assert found["long_track_speedup"] == 3.0
    assert gpu_grid.targets([], None)["long_track_speedup"] is None


def test_compiled_cells_take_the_fastest_batch_size_sixteen_tracks_first() -> None:
    eager = [
        gpu_grid.Cell(4, 8, "bf16", False, status="done", realtime=10.0),
        gpu_grid.Cell(4, 16, "bf16", False, status="done", realtime=20.0),
        gpu_grid.Cell(16, 8, "bf16", False, status="done", realtime=40.0),
        gpu_grid.Cell(16, 16, "bf16", False, status="skipped"),
        gpu_grid.Cell(64, 8, "bf16", False, status="failed"),
    ]
    chosen = gpu_grid.compiled_cells(eager, [4, 16, 64])
    assert [(cell.tracks, cell.batch_size, cell.compiled) for cell in chosen] == [
        (16, 8, True),
        (4, 16, True),
    ]


def test_its_help_names_every_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(gpu.main, monkeypatch, capsys)
    for option in ("--tracks", "--batch-sizes", "--precisions", "--compile", "--budget-s"):
        assert option in text
    assert "(480)" in text
    assert "--wait-s" in text
    assert f"({DEFAULT_WAIT_S:g}," in text
