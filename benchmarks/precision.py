"""bf16 against fp32 on the CPU, per model family: the engine's time, and bf16's stems in SDR.

    python -m benchmarks.precision --seconds 30 --rounds 2 [--families demucs,scnet]
        [--json precision.json] [--small]

Each family runs a random-weight copy of a published architecture: htdemucs_6s for demucs
(the shipped routing's), and for the MSST families a published config: the one the
community routing ships (configs/msst/) or, for SCNet, which no routing serves yet, the
published config its tests check. One mix (`write_song`) is separated by the engine
(`collect_track`, batch 1, on the CPU) in fp32 and in bf16, in alternating order, `rounds`
times each. A row gives the median seconds of each, bf16 / fp32, and the SDR of the bf16
stems against the fp32 stems, 10 log10(sum ref^2 / sum (ref - est)^2) per stem, the lowest
over stems. Random weights cost what the trained ones cost, but the SDR says how far bf16
rounding moves a network of that shape, not a trained model's stems.

The published RoFormers take minutes per 8 s chunk on a small CPU, so `--chunk-seconds`
cuts the chunks of the networks that take any length (the RoFormers, SCNet) and
`--num-overlap` sets how many chunks cover each sample; both change the work per audio
second, not the layers it goes through.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.architectures import ARCHITECTURES, Architecture
from benchmarks.common import RATE, chosen_families, cpu_name, write_family_report, write_song
from models.audio.decode import decode
from models.engine.batching import SeparationModel
from models.engine.devices import (
    NATIVE_BF16_FLAGS,
    PRECISIONS,
    cpu_flags,
    resolve_precision,
    this_cpuinfo,
)
from models.engine.track import collect_track
from models.testing.quality import sdr_db


@dataclass(frozen=True)
class Row:
    """One family's figures."""

    family: str
    model: str
    fp32_s: float
    bf16_s: float
    ratio: float  # bf16 / fp32
    sdr_db: float  # the lowest over stems
    worst_stem: str
    stem_sdr_db: dict[str, float]
    fp32_runs_s: list[float]
    bf16_runs_s: list[float]


def measure(
    architecture: Architecture, model: SeparationModel, mix: torch.Tensor, rounds: int
) -> Row:
    """Separate `mix` in each precision `rounds` times, alternating which goes first."""
    runs: dict[str, list[float]] = {precision: [] for precision in PRECISIONS}
    stems: dict[str, torch.Tensor] = {}
    for number in range(rounds):
        order = PRECISIONS if number % 2 == 0 else tuple(reversed(PRECISIONS))
        for precision in order:
            start = time.perf_counter()
            stems[precision] = collect_track(model, mix, precision=precision)
            runs[precision].append(time.perf_counter() - start)
    names = model.geometry.sources
    stem_sdr = {
        name: sdr_db(reference.numpy(), estimate.numpy())
        for name, reference, estimate in zip(names, stems["fp32"], stems["bf16"], strict=True)
    }
    worst = min(stem_sdr, key=lambda name: stem_sdr[name])
    fp32, bf16 = statistics.median(runs["fp32"]), statistics.median(runs["bf16"])
    return Row(
        family=architecture.family,
        model=architecture.name,
        fp32_s=fp32,
        bf16_s=bf16,
        ratio=bf16 / fp32,
        sdr_db=stem_sdr[worst],
        worst_stem=worst,
        stem_sdr_db=stem_sdr,
        fp32_runs_s=runs["fp32"],
        bf16_runs_s=runs["bf16"],
    )


def header_lines(args: argparse.Namespace, cpuinfo: str) -> list[str]:
    """What was measured, and where."""
    native = sorted(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)
    auto = resolve_precision("auto", torch.device("cpu"), cpuinfo=cpuinfo)
    chunks = (
        "the configs' chunks"
        if args.chunk_seconds is None
        else (f"{args.chunk_seconds:g} s chunks (RoFormers, SCNet)")
    )
    overlap = (
        "the configs' num_overlap"
        if args.num_overlap is None
        else (f"num_overlap {args.num_overlap}")
    )
    return [
        f"bf16 against fp32 on the CPU: {args.seconds:g} s stereo mix, {args.rounds} rounds, "
        f"{'tiny models' if args.small else 'published architectures, random weights'}; "
        f"MSST: {chunks}, {overlap}",
        f"CPU {cpu_name(cpuinfo)}, native bf16 flags: {', '.join(native) or 'none'} "
        f"(precision auto: {auto}); torch {torch.__version__}, {torch.get_num_threads()} threads",
    ]


COLUMNS = (
    f"{'family':<18} {'model':<20} {'fp32 s':>8} {'bf16 s':>8} {'bf16/fp32':>9}  "
    "SDR dB (lowest stem)"
)


def table_line(row: Row) -> str:
    """One row of the table under COLUMNS."""
    return (
        f"{row.family:<18} {row.model:<20} {row.fp32_s:>8.2f} {row.bf16_s:>8.2f} "
        f"{row.ratio:>9.3f}  {row.sdr_db:.1f} ({row.worst_stem})"
    )


def build_parser() -> argparse.ArgumentParser:
    """The options, each with its help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="mix length (default 30)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each precision (default 2)")
    parser.add_argument(
        "--families",
        default=",".join(ARCHITECTURES),
        help=f"comma-separated, from {', '.join(ARCHITECTURES)} (default: all)",
    )
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        help="MSST families whose networks take any length (the RoFormers, SCNet): chunks "
        "of this many seconds (default: the config's)",
    )
    parser.add_argument(
        "--num-overlap",
        type=int,
        help="MSST families: each sample in this many chunks (default: the config's)",
    )
    parser.add_argument("--small", action="store_true", help="tiny models, for a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows here")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Measure each family asked, print the table and write the JSON."""
    parser = build_parser()
    args = parser.parse_args(argv)
    families = chosen_families(parser, args.families, list(ARCHITECTURES))
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be positive and --rounds at least 1")
    if (args.chunk_seconds is not None and args.chunk_seconds <= 0) or (
        args.num_overlap is not None and args.num_overlap < 1
    ):
        parser.error("--chunk-seconds must be positive and --num-overlap at least 1")
    cpuinfo = this_cpuinfo()
    header = header_lines(args, cpuinfo)
    print("\n".join([*header, COLUMNS]), flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        mix = torch.from_numpy(decode(write_song(root / "song.wav", args.seconds)).samples)
        for name in families:
            architecture = ARCHITECTURES[name]
            model = architecture.load(
                root,
                small=args.small,
                chunk_seconds=args.chunk_seconds,
                num_overlap=args.num_overlap,
            )
            if (model.geometry.samplerate, model.geometry.audio_channels) != (RATE, 2):
                raise ValueError(f"{name}: the benchmark's mix is {RATE} Hz stereo")
            rows.append(measure(architecture, model, mix, args.rounds))
            print(table_line(rows[-1]), flush=True)
    if args.json:
        write_family_report(args, header, [asdict(row) for row in rows])


if __name__ == "__main__":
    main()
