"""Tests of benchmarks/cold_start.py without starting the service: its help, and the
settings it starts the service with (every Separator scaled to zero at the start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import cold_start
from tests.benchmarks.helptext import help_text


def test_help_names_the_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = help_text(cold_start.main, monkeypatch, capsys)
    for option in ("--seconds", "--full", "--model-dir", "--cpus", "--timeout-s"):
        assert option in shown


def test_separators_start_at_zero_replicas(tmp_path: Path) -> None:
    args = cold_start.args_for(tmp_path / "data", tmp_path / "models", 8123)
    autoscaling = args.separators.options()["autoscaling_config"]
    assert autoscaling["min_replicas"] == 0 and autoscaling["initial_replicas"] == 0
    assert args.public_url == "http://127.0.0.1:8123"
