"""Engine against demucs's apply_model: the same model, the same mix, side by side.

    python -m benchmarks.engine_speed --seconds 60 --rounds 2

Both run on a random-weight copy of the released htdemucs_6s architecture (the same
compute as the real weights), fp32 on the CPU (or `--device cuda`), no shifts, overlap
0.25, timed in alternation so that both see the same machine state. Prints each time, the
ratio engine / apply_model (the target is at most 1.05) and the engine's segments per
second, the figure the README's "Running at scale" sizes a cluster from.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from demucs.apply import apply_model

from benchmarks.common import RATE, model_folder
from models.engine.cuts import cut_track
from models.engine.devices import resolve_device
from models.engine.track import collect_track, normalisation
from models.families.demucs.family import DemucsModel
from models.families.demucs.loading import load_model


def main() -> None:
    """Run the comparison and print a short report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--like", default="htdemucs_6s")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="tiny model, for a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    args = parser.parse_args()
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory() as root:
        bag = load_model(args.like, model_dir=model_folder(Path(root), args.like, small=args.small))
        model = DemucsModel(bag)
    model.to(device)
    mix = torch.randn(2, int(args.seconds * RATE), generator=torch.Generator().manual_seed(0))
    mix = mix * 0.1
    mean, scale = normalisation(mix)
    normalised = (mix - mean) / scale

    engine_times, demucs_times = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        ours = collect_track(model, mix, batch_size=args.batch_size, device=device)
        engine_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = apply_model(
            bag, normalised[None], split=True, overlap=0.25, shifts=0, device=device
        )[0].cpu()
        demucs_times.append(time.perf_counter() - start)
    difference = (ours - (theirs * scale + mean)).abs().max().item()
    engine, demucs = statistics.median(engine_times), statistics.median(demucs_times)
    print(f"model {args.like}{' (small)' if args.small else ''}, {args.seconds:.0f} s stereo mix,")
    print(f"{device}, torch threads {torch.get_num_threads()}, batch size {args.batch_size}")
    print(f"engine      {', '.join(f'{t:.2f}' for t in engine_times)} s (median {engine:.2f})")
    print(f"apply_model {', '.join(f'{t:.2f}' for t in demucs_times)} s (median {demucs:.2f})")
    print(f"ratio engine / apply_model = {engine / demucs:.3f}")
    print(f"max |difference| = {difference:.2e}")
    segments = len(cut_track(mix.shape[-1], model.geometry, overlap=0.25, shifts=0, seed=0))
    print(f"{segments} segments: engine {segments / engine:.2f} segments/s on {device}")


if __name__ == "__main__":
    main()
