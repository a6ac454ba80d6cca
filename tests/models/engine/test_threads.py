"""Tests of models.engine.threads: the core count from the affinity mask and a container's CPU
quota, read from cgroup files laid out as Linux lays them out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from models.engine.threads import available_cores, cpu_quota, use_threads


def cgroup_v2(root: Path, cpu_max: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def cgroup_v1(root: Path, quota_us: int, period_us: int) -> Path:
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period_us}\n")
    return root


def test_quota_from_cgroup_v2_and_v1(tmp_path: Path) -> None:
    assert cpu_quota(cgroup_v2(tmp_path / "a", "150000 100000")) == 1.5
    assert cpu_quota(cgroup_v2(tmp_path / "b", "max 100000")) is None
    assert cpu_quota(cgroup_v1(tmp_path / "c", 300000, 100000)) == 3.0
    assert cpu_quota(cgroup_v1(tmp_path / "d", -1, 100000)) is None
    assert cpu_quota(tmp_path / "none") is None
    assert cpu_quota(cgroup_v2(tmp_path / "e", "garbage")) is None
    assert cpu_quota(cgroup_v2(tmp_path / "f", "100000 0")) is None
    assert cpu_quota(cgroup_v1(tmp_path / "g", 100000, 0)) is None


def test_cores_are_the_affinity_mask_capped_by_the_quota(tmp_path: Path) -> None:
    mask = len(os.sched_getaffinity(0))
    (tmp_path / "no-quota").mkdir()
    assert available_cores(tmp_path / "no-quota") == mask
    # A fractional quota rounds up: 0.5 of a core still runs one thread.
    assert available_cores(cgroup_v2(tmp_path / "half", "50000 100000")) == 1
    assert available_cores(cgroup_v2(tmp_path / "big", "6400000 100000")) == mask


@pytest.mark.parametrize(("cpu_max", "cores"), [("150000 100000", 2), ("250000 100000", 3)])
def test_a_fractional_quota_is_rounded_up_under_the_affinity_mask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str, cores: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert available_cores(cgroup_v2(tmp_path, cpu_max)) == cores


def test_use_threads_sets_torch() -> None:
    before = torch.get_num_threads()
    try:
        assert use_threads(1) == 1
        assert torch.get_num_threads() == 1
        count = use_threads()
        assert torch.get_num_threads() == count
    finally:
        torch.set_num_threads(before)
