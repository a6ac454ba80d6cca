"""Peak memory of a whole separation (decode, engine, encode) against track length.

    python -m benchmarks.memory --minutes 2 10

Each length runs in a fresh process, so each peak is its own: a WAV song of that length
is separated into every stem the default routing serves by a random-weight copy of the
released htdemucs_6s architecture, written as WAV files. Prints the peak resident memory
of each run and the ratio of the longest to the shortest (the target is under 1.5).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import model_folder, peak_rss_mb, write_song
from models.run import ModelStore, separate_file
from models.stems.routing import load_routing


def measure(minutes: float, root: Path, small: bool) -> dict[str, float]:
    """Separate one song of `minutes` in this process; return seconds and peak MiB."""
    song = write_song(root / f"song-{minutes}.wav", minutes * 60)
    store = ModelStore(
        load_routing(), model_dir=model_folder(root, "htdemucs_6s", small=small), use_hub=False
    )
    stems = list(store.routing.served_stems())
    start = time.perf_counter()
    separate_file(song, stems, root / f"stems-{minutes}", store=store)
    return {"minutes": minutes, "seconds": time.perf_counter() - start, "peak_mib": peak_rss_mb()}


def main() -> None:
    """Run each length in a child process and print the peaks."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[2.0, 10.0])
    parser.add_argument("--small", action="store_true", help="tiny model, for a smoke run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as root:
            print(json.dumps(measure(args.minutes[0], Path(root), args.small)))
        return
    results = []
    for minutes in args.minutes:
        command = [sys.executable, "-m", "benchmarks.memory", "--child", "--minutes", str(minutes)]
        output = subprocess.run(
            command + (["--small"] if args.small else []),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{result['minutes']:g} min: peak {result['peak_mib']:.0f} MiB, "
            f"{result['seconds']:.0f} s"
        )
    ratio = results[-1]["peak_mib"] / results[0]["peak_mib"]
    longest, shortest = results[-1]["minutes"], results[0]["minutes"]
    print(f"peak ratio {longest:g} min / {shortest:g} min = {ratio:.2f}")


if __name__ == "__main__":
    main()
