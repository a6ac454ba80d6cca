"""The running service seen from outside: each replica's peak memory (from /proc) and the
seconds its Pipeline and Separator count per stage (read through Ray).

Peaks are Linux's VmHWM, the high-water mark of a process's resident memory, which
writing 5 to /proc/PID/clear_refs resets, so each measured task gets a peak of its own.
Replicas are found by the process title Ray gives them (`ray::ServeReplica:APP:NAME`),
so the service must run on this machine, as `benchmarks.service_speed.running_service`
starts it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPLICA_TITLE = "ray::ServeReplica:"


def replica_processes(app: str) -> dict[str, int]:
    """Deployment name -> pid of each of `app`'s replicas here (a second replica of one
    deployment is named `NAME#2`, and so on)."""
    found: dict[str, int] = {}
    prefix = f"{REPLICA_TITLE}{app}:"
    for process in psutil.process_iter(["pid", "cmdline"]):
        words = process.info["cmdline"] or []
        title = " ".join(words)
        if not title.startswith(prefix):
            continue
        name = title[len(prefix) :].split()[0].split(".")[0]
        key, number = name, 1
        while key in found:
            number += 1
            key = f"{name}#{number}"
        found[key] = process.info["pid"]
    return found


def reset_peaks(pids: Mapping[str, int]) -> None:
    """Start each process's resident-memory high-water mark afresh."""
    for pid in pids.values():
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def peaks_mb(pids: Mapping[str, int]) -> dict[str, float]:
    """Each process's resident-memory high-water mark since its last reset, in MiB."""
    peaks = {}
    for name, pid in pids.items():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks[name] = int(line.split()[1]) / 1024  # the kernel says kB
    return peaks


@dataclass(frozen=True)
class StageSnapshot:
    """What the service had counted at one moment: the Pipeline's seconds per stage and
    the Separator's seconds of forward passes."""

    stages: dict[str, float] = field(default_factory=dict)
    forward_s: float = 0.0

    def since(self, earlier: StageSnapshot) -> StageSnapshot:
        """What was counted between `earlier` and this snapshot."""
        return StageSnapshot(
            {name: value - earlier.stages.get(name, 0.0) for name, value in self.stages.items()},
            self.forward_s - earlier.forward_s,
        )


class StageProbe:
    """Reads the stage counters of a service running on this machine, through its Ray."""

    def __init__(self, app: str, separator: str) -> None:
        import ray
        from ray import serve

        ray.init(address="auto", logging_level=logging.ERROR, log_to_driver=False)
        self.pipeline = serve.get_deployment_handle("Pipeline", app)
        self.separator = serve.get_deployment_handle(separator, app)

    def snapshot(self) -> StageSnapshot:
        """The counters now (one Pipeline and one Separator replica, as locally)."""
        totals: dict[str, Any] = self.pipeline.stage_totals.remote().result()
        stats: dict[str, Any] = self.separator.batch_stats.remote().result()
        return StageSnapshot(dict(totals["seconds"]), float(stats["forward_s"]))

    def close(self) -> None:
        import ray

        ray.shutdown()
