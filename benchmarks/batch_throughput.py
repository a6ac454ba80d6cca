"""The batch command against `python -m models separate` run once per track, one after
another: the same songs and model, side by side in one run.

    python -m benchmarks.batch_throughput --tracks 12 --seconds 60
    python -m benchmarks.batch_throughput -- --tracks-per-worker 2

Renders `--tracks` songs of `--seconds` each (they differ by seed) and, unless
`--model-dir` names one, a random-weight copy of htdemucs_6s, the model the shipped
routing serves the default stems with (the same compute as the real weights). Then, in
the order `--order` gives, times two runs as a whole, in wall seconds:

1. the baseline: one `python -m models separate TRACK --out DIR` process per track, one
   after another, as a user without the batch mode would run them;
2. the batch: one `python -m serve_app.batch FOLDER OUT --workers MIN:MAX` process, Ray's
   start included (RAY_ADDRESS is removed, so it starts a Ray of its own). Arguments after
   `--` are passed on to it.

Prints the audio seconds, each wall time and throughput (audio seconds per second), the
ratio batch / baseline and the batch's own summary line, and checks that both wrote the
same stem files for every track.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import model_folder, write_song
from serve_app.batch.inputs import track_id
from serve_app.batch.outputs import DONE_MARKER

REPO = Path(__file__).resolve().parent.parent
MODEL = "htdemucs_6s"  # serves the default stems in models/stems/models.yaml
ORDERS = {"baseline-first": ("baseline", "batch"), "batch-first": ("batch", "baseline")}


def environment() -> dict[str, str]:
    """This process's environment for the subprocesses, without a Ray cluster to join."""
    variables = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    variables["PYTHONPATH"] = str(REPO)
    return variables


def run_command(command: Sequence[str]) -> str:
    """Run a command of this repository to completion; its standard output. A failure
    ends the benchmark with the command's last error lines."""
    finished = subprocess.run(command, env=environment(), capture_output=True, text=True)
    if finished.returncode != 0:
        sys.exit(f"python -m {command[2]} failed:\n{finished.stderr[-4000:]}")
    return finished.stdout


def run_baseline(songs: Sequence[Path], out: Path, model_dir: Path) -> float:
    """Wall seconds to separate each song with its own `models separate` process."""
    start = time.perf_counter()
    for song in songs:
        command = [sys.executable, "-m", "models", "separate", str(song)]
        command += ["--out", str(out / song.stem), "--model-dir", str(model_dir), "--no-hub"]
        run_command(command)
    return time.perf_counter() - start


def run_batch(
    songs: Path, out: Path, model_dir: Path, workers: str, flags: Sequence[str]
) -> tuple[float, str]:
    """Wall seconds of one batch command over the folder, and its summary line."""
    command = [sys.executable, "-m", "serve_app.batch", str(songs), str(out)]
    command += ["--model-dir", str(model_dir), "--no-hub", "--workers", workers, *flags]
    start = time.perf_counter()
    output = run_command(command)
    return time.perf_counter() - start, output.strip().splitlines()[-1]


def stem_mismatches(songs: Sequence[Path], baseline: Path, batch: Path) -> list[str]:
    """The tracks whose stem files differ by name between the two runs, with both lists."""
    mismatches = []
    for song in songs:
        theirs = sorted(path.name for path in (baseline / song.stem).iterdir())
        folder = batch / track_id(song.name)
        ours = sorted(path.name for path in folder.iterdir() if path.name != DONE_MARKER)
        if ours != theirs:
            mismatches.append(f"{song.name}: batch {ours}, models separate {theirs}")
    return mismatches


def main() -> None:
    """Render the songs, time both ways and print a short report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each song")
    parser.add_argument("--workers", default="1:1", help="the batch's --workers MIN:MAX")
    parser.add_argument("--order", choices=ORDERS, default="baseline-first")
    parser.add_argument("--model-dir", type=Path, help=f"a folder holding {MODEL} to use")
    parser.add_argument("--small", action="store_true", help="tiny model, for a smoke run")
    parser.add_argument("batch_flags", nargs="*", help="after --: more flags for the batch")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model_dir = args.model_dir or model_folder(root / "models", MODEL, small=args.small)
        songs_folder = root / "songs"
        songs_folder.mkdir()
        songs = [
            write_song(songs_folder / f"song-{number:02}.wav", args.seconds, seed=number)
            for number in range(args.tracks)
        ]
        baseline_out, batch_out = root / "baseline", root / "batch"
        summary = ""
        walls: dict[str, float] = {}
        for run in ORDERS[args.order]:
            if run == "baseline":
                walls[run] = run_baseline(songs, baseline_out, model_dir)
            else:
                walls[run], summary = run_batch(
                    songs_folder, batch_out, model_dir, args.workers, args.batch_flags
                )
        mismatches = stem_mismatches(songs, baseline_out, batch_out)

    audio_s = args.tracks * args.seconds
    flags = " ".join(["--workers", args.workers, *args.batch_flags])
    model = f"{MODEL}{' (small)' if args.small else ''}"
    print(f"model {model}, {args.tracks} tracks of {args.seconds:.0f} s ({audio_s:.0f} audio s)")
    print(f"{os.cpu_count()} CPUs, {args.order}")
    for name, detail in (("baseline", "models separate per track"), ("batch", flags)):
        wall_s = walls[name]
        print(f"{name:8} {wall_s:8.1f} s, {audio_s / wall_s:6.2f} audio s per s ({detail})")
    print(f"ratio batch / baseline throughput = {walls['baseline'] / walls['batch']:.2f}")
    print(f"batch summary: {summary}")
    if mismatches:
        sys.exit("stem files differ:\n" + "\n".join(mismatches))
    print(f"stem files: the same names for all {args.tracks} tracks")


if __name__ == "__main__":
    main()
