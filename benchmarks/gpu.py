"""The engine on a GPU without Ray: N concurrent tracks whose windows share forward passes,
against demucs's `apply_model` at batch 1 fp32 on the same device.

    python -m benchmarks.gpu OUT [--device cuda] [--tracks 1,4,16,64]
        [--batch-sizes 8,16,32,64] [--precisions fp32,bf16] [--compile]
        [--seconds 60] [--long-seconds 180] [--budget-s 480] [--small]

For a machine that has torch and demucs but no Ray (benchmarks/gpu_run.sh carries what it
lacks). The model is a random-weight copy of the released htdemucs written by the
project's own test-model writer (the same compute as the real weights). Each cell runs N
tracks of `--seconds` (seeded noise) on N threads as a batch worker does: every track is
streamed by `stream_track`, and its runner joins one `WindowGatherer` whose passes hold up
to B windows (`separate_windows` under the precision context). Per cell: wall seconds,
audio seconds per wall second, the ratio to `apply_model`'s one-after-another throughput,
TFLOP/s and its fraction of the card's peak, windows per pass, and the first track's
stems in SDR (worst stem, dB) against `apply_model`'s fp32 stems. First, one track of
`--long-seconds` is timed through `apply_model` and through the engine (N = 1, the largest
B, each precision).

With `--compile`, the fastest uncompiled batch size of each track count and precision is
measured again with the networks `torch.compile`d, 16 tracks first.

A global time budget bounds the run: a cell whose predicted time (gpu_grid.py, plus an
allowance for a first compile) would pass the budget is recorded as skipped.
`OUT/gpu.json` is rewritten after every cell, so a run cut short still leaves what it
measured; the table and issue 17's targets are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from demucs.apply import BagOfModels, apply_model

from benchmarks.gpu_grid import (
    COMPILE_ALLOWANCE_S,
    DEFAULT_BUDGET_S,
    Budget,
    Cell,
    compiled_cells,
    fastest,
    figure,
    predicted_s,
    table,
    targets,
)
from models.engine.batching import separate_windows
from models.engine.devices import PRECISIONS, resolve_device
from models.engine.gather import DEFAULT_WAIT_S, WindowGatherer
from models.engine.track import normalisation, stream_track
from models.families.demucs.family import DemucsModel
from models.families.demucs.loading import load_model
from models.families.demucs.testmodel import make_test_model
from models.testing.quality import sdr_db

MODEL = "htdemucs"
OVERLAP = 0.25
# HTDemucs's cost per second of audio at overlap 0.25 (7.8 s segments every 5.85 s), as
# issue 17 states it and sets its targets by; torch's FlopCounterMode counts less (see
# the README's "GPU benchmark"), so the fractions here are the issue's, not a count.
GFLOP_PER_AUDIO_S = 57.0
# The H200's bf16 matrix product as measured on the lent machine (8192^3, random data).
PEAK_TFLOPS = 790.0


@dataclass
class Concurrent:
    """What one concurrent run took and gave."""

    wall_s: float
    passes: int
    windows: int
    first_stems: torch.Tensor  # the first track's (sources, channels, frames)


def parse_sizes(text: str) -> list[int]:
    """`1,4,16` as [1, 4, 16]; every size at least 1."""
    sizes = [int(part) for part in text.split(",") if part]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sizes


def parse_precisions(text: str) -> list[str]:
    """`fp32,bf16` as a list of known precisions."""
    names = [part for part in text.split(",") if part]
    if not names or any(name not in PRECISIONS for name in names):
        raise argparse.ArgumentTypeError(f"precisions must be among {PRECISIONS}, got {text!r}")
    return names


def make_mix(seconds: float, rate: int, seed: int) -> torch.Tensor:
    """A seeded stereo noise mix: the engine's speed does not depend on the music."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, int(seconds * rate), generator=generator) * 0.1


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall clocks see it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_apply_model(bag: BagOfModels, mix: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Stems of `mix` by demucs's `apply_model`, normalised and scaled back as its
    separator does, at batch 1 in fp32; on the CPU."""
    mean, scale = normalisation(mix)
    stems = apply_model(
        bag, ((mix - mean) / scale)[None], split=True, overlap=OVERLAP, shifts=0, device=device
    )[0]
    return (stems * scale + mean).cpu()


def time_apply_model(
    bag: BagOfModels, mix: torch.Tensor, device: torch.device, rounds: int
) -> tuple[float, torch.Tensor]:
    """Median wall seconds of `rounds` apply_model runs on `mix`, and its stems."""
    times: list[float] = []
    stems = torch.empty(0)
    for _ in range(rounds):
        start = time.perf_counter()
        stems = run_apply_model(bag, mix, device)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), stems


def run_concurrent(
    model: DemucsModel,
    mixes: Sequence[torch.Tensor],
    batch_size: int,
    precision: str,
    device: torch.device,
    wait_s: float = DEFAULT_WAIT_S,
) -> Concurrent:
    """Separate `mixes` on one thread each, their windows gathered into passes of up to
    `batch_size` windows, a call waiting at most `wait_s` for the others' windows; only
    the first track's stems are kept."""

    def forward(
        _model: str, windows: Sequence[torch.Tensor], sources: Sequence[str]
    ) -> list[torch.Tensor]:
        return separate_windows(model, windows, sources=sources, device=device, precision=precision)

    gatherer = WindowGatherer(forward, max_windows=batch_size, wait_s=wait_s)
    # Each thread offers its share of a pass, so that N tracks fill a pass of B windows.
    per_track = max(1, math.ceil(batch_size / len(mixes)))
    # The tracks' own torch work (windows, overlap-add) shares the cores, not each all of them.
    cpu_threads = max(1, (os.cpu_count() or 1) // len(mixes))
    ready = threading.Barrier(len(mixes))
    blocks: list[torch.Tensor] = []
    errors: list[BaseException] = []

    def separate(number: int, mix: torch.Tensor) -> None:
        def keep(_start: int, block: torch.Tensor) -> None:
            if number == 0:
                blocks.append(block)

        def runner(windows: Sequence[torch.Tensor], sources: Sequence[str]) -> list[torch.Tensor]:
            return gatherer.separate(MODEL, windows, sources)

        try:
            torch.set_num_threads(cpu_threads)
            with gatherer.member():
                ready.wait()  # every member counted before the first pass is gathered
                stream_track(model.geometry, runner, mix, keep, batch_size=per_track)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=separate, args=(number, mix), name=f"track-{number}")
        for number, mix in enumerate(mixes)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    synchronise(device)
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return Concurrent(wall, gatherer.passes, gatherer.windows, torch.cat(blocks, dim=-1))


def warm_up(
    model: DemucsModel,
    batch_size: int,
    precision: str,
    device: torch.device,
    warmed: set[tuple[int, int, str]],
) -> None:
    """One untimed pass of `batch_size` full windows, once per model, batch size and
    precision (`warmed` remembers): kernels chosen (and compiled), memory reserved."""
    key = (id(model), batch_size, precision)
    if key in warmed:
        return
    warmed.add(key)
    geometry = model.geometry
    length = geometry.window_length(geometry.segment_length)
    windows = [torch.zeros(geometry.audio_channels, length)] * batch_size
    separate_windows(model, windows, device=device, precision=precision)
    synchronise(device)


def worst_sdr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """The lowest SDR over the stems of `estimate` against `reference`, in dB."""
    frames = min(reference.shape[-1], estimate.shape[-1])
    return min(
        sdr_db(reference[stem, :, :frames].numpy(), estimate[stem, :, :frames].numpy())
        for stem in range(reference.shape[0])
    )


def compiled_copy(folder: Path, device: torch.device) -> DemucsModel:
    """A second copy of the model whose networks go through `torch.compile`."""
    bag = load_model(MODEL, model_dir=folder, use_hub=False)
    for network in bag.models:
        network.compile()  # in place: torch.compile of its forward
    model = DemucsModel(bag)
    model.to(device)
    return model


def fill(cell: Cell, run: Concurrent, audio_s: float, apply_rate: float, small: bool) -> None:
    """The cell's figures from its run."""
    cell.status = "done"
    cell.wall_s = run.wall_s
    cell.audio_s = audio_s
    cell.realtime = audio_s / run.wall_s
    cell.vs_apply_model = cell.realtime / apply_rate
    if not small:  # the FLOP figure is the released architecture's
        cell.tflops = cell.realtime * GFLOP_PER_AUDIO_S / 1000
        cell.peak_fraction = cell.tflops / PEAK_TFLOPS
    cell.passes = run.passes
    cell.windows_per_pass = run.windows / max(run.passes, 1)


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and software the figures were taken on."""
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.type == "cuda":
        facts["card"] = torch.cuda.get_device_name(device)
        facts["cuda"] = torch.version.cuda
    else:
        facts["cpu_threads"] = torch.get_num_threads()
    return facts


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out", type=Path, help="folder for gpu.json")
    parser.add_argument("--device", default="cuda", help="cuda, cpu or auto (default cuda)")
    parser.add_argument(
        "--tracks", type=parse_sizes, default=[1, 4, 16, 64], help="concurrent tracks per cell"
    )
    parser.add_argument(
        "--batch-sizes", type=parse_sizes, default=[8, 16, 32, 64], help="windows per pass"
    )
    parser.add_argument(
        "--precisions", type=parse_precisions, default=["bf16", "fp32"], help="(bf16,fp32)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="then the fastest settings torch.compile'd"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="each track (default 60)")
    parser.add_argument(
        "--long-seconds", type=float, default=180.0, help="the long track (180; 0: none)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="apply_model timings (median)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds the whole run may take; cells past it are skipped ({DEFAULT_BUDGET_S:g})",
    )
    parser.add_argument(
        "--wait-s",
        type=float,
        default=DEFAULT_WAIT_S,
        help=f"longest wait of a track's windows for others' ({DEFAULT_WAIT_S:g}, as a batch)",
    )
    parser.add_argument("--small", action="store_true", help="tiny model, for a smoke run")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write OUT/gpu.json after every step, print the table; the
    document written."""
    args = build_parser().parse_args(argv)
    budget = Budget(args.budget_s)
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu.json"

    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as root:
        folder = Path(root) / MODEL
        make_test_model(folder, MODEL, small=args.small)
        bag = load_model(MODEL, model_dir=folder, use_hub=False)
        model = DemucsModel(bag)
        model.to(device)
        compiled = compiled_copy(folder, device) if args.compile else None

    rate = model.geometry.samplerate
    warmed: set[tuple[int, int, str]] = set()  # the models live as long as this set
    mixes = [make_mix(args.seconds, rate, seed) for seed in range(max(args.tracks))]
    document: dict[str, Any] = {
        "model": MODEL + (" (small)" if args.small else ""),
        "environment": environment(device),
        "settings": {
            "seconds": args.seconds,
            "overlap": OVERLAP,
            "budget_s": args.budget_s,
            "wait_s": args.wait_s,
            "gflop_per_audio_s": None if args.small else GFLOP_PER_AUDIO_S,
            "peak_tflops_bf16": PEAK_TFLOPS,
        },
        "sdr": "first track, worst stem, plain SDR against apply_model's fp32 stems",
    }

    def save() -> None:
        document["elapsed_s"] = round(budget.elapsed(), 2)
        path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")

    run_apply_model(bag, make_mix(min(args.seconds, 10.0), rate, 99), device)  # warm-up
    apply_s, reference = time_apply_model(bag, mixes[0], device, args.rounds)
    apply_rate = args.seconds / apply_s
    document["apply_model"] = {"wall_s": apply_s, "realtime": apply_rate}
    save()

    if args.long_seconds > 0:
        document["long_track"] = long_track(args, model, bag, device, budget, warmed)
        save()

    cells = [
        Cell(tracks, batch_size, precision, compiled=False)
        for precision in args.precisions
        for tracks in args.tracks
        for batch_size in args.batch_sizes
    ]
    measured: list[Cell] = []

    def measure(cell: Cell, chosen: DemucsModel) -> None:
        earlier = list(measured)
        audio_s = cell.tracks * args.seconds
        predicted = predicted_s(cell, earlier, audio_s, apply_rate)
        if cell.compiled and (id(chosen), cell.batch_size, cell.precision) not in warmed:
            predicted += COMPILE_ALLOWANCE_S
        if not budget.allows(predicted):
            cell.status = "skipped"
        else:
            try:
                warm_up(chosen, cell.batch_size, cell.precision, device, warmed)
                run = run_concurrent(
                    chosen,
                    mixes[: cell.tracks],
                    cell.batch_size,
                    cell.precision,
                    device,
                    args.wait_s,
                )
                fill(cell, run, audio_s, apply_rate, args.small)
                cell.sdr_vs_fp32_db = worst_sdr(reference, run.first_stems)
            except Exception as exc:  # one failing setting must not lose the run's figures
                cell.status = "failed"
                cell.error = failure(exc, device)
        measured.append(cell)
        document["cells"] = [asdict(done) for done in measured]
        best = fastest(measured)
        document["fastest"] = None if best is None else asdict(best)
        save()
        print(f"[{budget.elapsed():6.1f} s] {table([cell]).splitlines()[1]}", file=sys.stderr)

    for cell in cells:
        measure(cell, model)
    if compiled is not None:
        for cell in compiled_cells(cells, args.tracks):
            measure(cell, compiled)

    print(json.dumps({key: document[key] for key in ("model", "environment")}, indent=2))
    print(
        f"apply_model, batch 1 fp32: {apply_s:.2f} s for {args.seconds:.0f} s "
        f"({apply_rate:.1f} x realtime)"
    )
    if "long_track" in document:
        print(f"long track: {json.dumps(document['long_track'])}")
    print(table(measured))
    best = fastest(measured)
    if best is not None:
        print(
            f"fastest: {best.tracks} tracks, batch {best.batch_size}, {best.precision}"
            f"{', compiled' if best.compiled else ''}: {best.realtime:.1f} x realtime, "
            f"{best.vs_apply_model:.2f} x apply_model, SDR {figure(best.sdr_vs_fp32_db, 1)} dB"
        )
    document["targets"] = targets(measured, document.get("long_track"))
    save()
    print(f"targets (issue 17): {json.dumps(document['targets'])}")
    print(f"written to {path} in {budget.elapsed():.1f} s")
    return document


def long_track(
    args: argparse.Namespace,
    model: DemucsModel,
    bag: BagOfModels,
    device: torch.device,
    budget: Budget,
    warmed: set[tuple[int, int, str]],
) -> dict[str, Any]:
    """One track of `--long-seconds`: apply_model's time and the engine's (N = 1, the
    largest batch size) at each precision, with the engine's stems in SDR against it."""
    mix = make_mix(args.long_seconds, model.geometry.samplerate, 1000)
    apply_s, reference = time_apply_model(bag, mix, device, 1)
    figures: dict[str, Any] = {"seconds": args.long_seconds, "apply_model_s": apply_s}
    batch_size = max(args.batch_sizes)
    for precision in args.precisions:
        if not budget.allows(apply_s):
            figures[precision] = "skipped"
            continue
        try:
            warm_up(model, batch_size, precision, device, warmed)
            run = run_concurrent(model, [mix], batch_size, precision, device)
        except Exception as exc:  # as a cell's: the rest of the run still measures
            figures[precision] = failure(exc, device)
            continue
        figures[precision] = {
            "batch_size": batch_size,
            "wall_s": run.wall_s,
            "speedup": apply_s / run.wall_s,
            "sdr_vs_fp32_db": worst_sdr(reference, run.first_stems),
        }
    return figures


def failure(exc: Exception, device: torch.device) -> str:
    """What failed, for the table; the failed step's cached device memory released."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # after an out-of-memory error, for the settings that follow
    return f"failed: {type(exc).__name__}: {exc}"[:500]


if __name__ == "__main__":
    main()
