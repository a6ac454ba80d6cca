"""How many threads torch may use: every core this process may run on.

Ray starts a worker with `OMP_NUM_THREADS` set to its actor's `num_cpus` (1 for any share
below one), so torch in a Serve replica that asks for half a CPU computes on one thread
even on an idle many-core machine. `num_cpus` is a scheduling share, not a thread budget:
a replica may use every core its process is allowed on, which is the CPU affinity mask
narrowed by a container's CPU quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), as
a Kubernetes CPU limit sets it. The standard library reads the mask but not the quota
(`os.process_cpu_count` only arrives in Python 3.13, and also ignores quotas).

OpenMP keeps its thread count per calling thread: work that a replica sends to a worker
thread (`asyncio.to_thread`) computes on OMP_NUM_THREADS's count there, whatever
`torch.set_num_threads` said in the replica's main thread, although
`torch.get_num_threads` reports the setting (oneDNN's convolutions, most of HTDemucs,
read the calling thread's count). `with_threads` sets it in the thread that computes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import torch

CGROUP = Path("/sys/fs/cgroup")
P = ParamSpec("P")
R = TypeVar("R")


def available_cores(cgroup: Path = CGROUP) -> int:
    """The cores this process may run on: its affinity mask, capped by a CPU quota."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """The container's CPU quota in cores, or None when there is none or it cannot be read."""
    try:
        if (cgroup / "cpu.max").is_file():
            limit, period = (cgroup / "cpu.max").read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        v1 = cgroup / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            limit_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
            return None if limit_us <= 0 else limit_us / period_us
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return None


def with_threads(count: int, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`function(*args, **kwargs)`, with torch computing on `count` threads in this thread."""
    torch.set_num_threads(count)
    return function(*args, **kwargs)


def use_threads(requested: int | None = None) -> int:
    """Let torch compute on `requested` threads, or on every available core; returns the
    number set."""
    count = requested or available_cores()
    torch.set_num_threads(count)
    return count
