"""Shared pieces of the benchmarks: synthetic songs, model folders, peak memory."""

from __future__ import annotations

import argparse
import json
import platform
import resource
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.audio.encode import StemEncoder
from models.families.demucs.testmodel import make_test_model

RATE = 44100


def write_song(
    path: Path, seconds: float, *, rate: int = RATE, block_s: float = 10.0, seed: int = 0
) -> Path:
    """Write a stereo 16-bit WAV of chords, clicks and noise (`seed` draws the noise),
    block by block."""
    generator = np.random.default_rng(seed)
    frames = int(seconds * rate)
    block = int(block_s * rate)
    with StemEncoder(path, "wav", sample_rate=rate, channels=2, layout="stereo") as encoder:
        for start in range(0, frames, block):
            times = np.arange(start, min(start + block, frames)) / rate
            chord = sum(np.sin(2 * np.pi * f * times) for f in (110.0, 138.6, 164.8)) * 0.15
            clicks = (np.mod(times, 0.5) < 0.004) * 0.4
            noise = generator.normal(0.0, 0.02, size=(2, times.size))
            encoder.write((chord + clicks + noise).astype(np.float32))
    return path


def model_folder(root: Path, like: str, *, small: bool = False) -> Path:
    """A folder with a random-weight copy of `like`, written once."""
    folder = root / f"{like}{'-small' if small else ''}"
    if not (folder / f"{like}.yaml").exists():
        make_test_model(folder, like, small=small)
    return folder


def chosen_families(parser: argparse.ArgumentParser, text: str, known: Sequence[str]) -> list[str]:
    """The comma-separated `--families` in `text`, each one of `known`; a usage error else."""
    families = [name.strip() for name in text.split(",") if name.strip()]
    if not families or any(name not in known for name in families):
        parser.error(f"--families: choose from {', '.join(known)}, got {text!r}")
    return families


def write_family_report(
    args: argparse.Namespace, header: Sequence[str], rows: Sequence[dict[str, Any]]
) -> None:
    """Write a per-family benchmark's rows to `args.json`, with the date, the header lines,
    its options (seconds, rounds, small, chunk_seconds, num_overlap) and torch's threads."""
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "header": list(header),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "small": args.small,
        "chunk_seconds": args.chunk_seconds,
        "num_overlap": args.num_overlap,
        "threads": torch.get_num_threads(),
        "rows": list(rows),
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_name(cpuinfo: str) -> str:
    """The first `model name` of /proc/cpuinfo's text, else the platform's word for it."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine()
