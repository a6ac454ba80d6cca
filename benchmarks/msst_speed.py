"""The MSST families through the engine against MSST's own chunked inference at batch 1.

    python -m benchmarks.msst_speed --seconds 1 --rounds 2 [--families mdx23c,scnet]
        [--chunk-seconds 0.25] [--num-overlap 1] [--small] [--json msst_speed.json]

Each MSST family runs a random-weight copy of its published network
(benchmarks/architectures.py), fp32 on the CPU, on one mix (`write_song`). The baseline
is MSST's inference loop as a user of its inference.py runs it with batch_size 1
(`demix` in models/families/msst/chunking.py, which equals MSST's for the same batch
size); the engine separates the same mix through the entry points `models separate` uses
(`stream_track` on `separate_windows`, here by `collect_track`), tiled with the fades of
demix at batch 1, as a routing's `inference: {batch_size: 1}` sets them. The engine runs
one window per forward pass, as the service's CPU profile does (configs/local.yaml:
`max_batch_size: 1`), and again with the config's `inference.batch_size` windows per pass
where that differs. The runs alternate in order, `rounds` times each.

A row gives the median seconds of each, engine / baseline, audio seconds per wall second,
and the SDR of the engine's stems against the baseline's, 10 log10(sum ref^2 / sum (ref -
est)^2), the lowest over stems: the two compute the same sums, so they should agree to
float32 rounding. `--chunk-seconds` cuts the chunks of the networks that take any length
(the RoFormers, SCNet) and `--num-overlap` sets how many chunks cover each sample: the
published RoFormers take about half a minute per audio second on a small CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.architectures import ARCHITECTURES
from benchmarks.common import RATE, chosen_families, cpu_name, write_family_report, write_song
from models.audio.decode import decode
from models.engine.devices import this_cpuinfo
from models.engine.track import collect_track
from models.families.msst.chunking import ChunkTiling, demix, plan_chunks
from models.families.msst.family import MsstModel
from models.testing.quality import sdr_db

FAMILIES = ("mdx23c", "bs_roformer", "mel_band_roformer", "scnet")
SERVICE_CPU_BATCH = 1  # configs/local.yaml: the Separators' max_batch_size on a CPU
DEFAULT_SECONDS = 1.0
DEFAULT_ROUNDS = 2
DEFAULT_CHUNK_SECONDS = 0.25
DEFAULT_NUM_OVERLAP = 1


@dataclass(frozen=True)
class EngineRun:
    """The engine at one batch size: its median time and its stems against the baseline's."""

    batch_size: int
    seconds: float
    ratio: float  # engine / baseline
    audio_per_s: float  # audio seconds per wall second
    sdr_db: float  # the lowest over stems
    worst_stem: str
    stem_sdr_db: dict[str, float]
    runs_s: list[float]


@dataclass(frozen=True)
class Row:
    """One family's figures: the baseline and the engine at each batch size measured."""

    family: str
    model: str
    audio_s: float
    chunk_s: float
    num_overlap: int
    chunks: int
    config_batch: int  # the config's inference.batch_size
    baseline_s: float
    baseline_audio_per_s: float
    baseline_runs_s: list[float]
    engine: list[EngineRun]  # SERVICE_CPU_BATCH first, then the config's if it differs


def measure_family(
    family: str,
    seconds: float = DEFAULT_SECONDS,
    rounds: int = DEFAULT_ROUNDS,
    small: bool = False,
    chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
    num_overlap: int | None = DEFAULT_NUM_OVERLAP,
) -> Row:
    """Separate one `seconds`-long mix with `family`'s network by MSST's demix at batch 1
    and by the engine, alternating, `rounds` times each; None for `chunk_seconds` or
    `num_overlap` keeps the config's."""
    if family not in FAMILIES:
        raise ValueError(f"unknown MSST family {family!r}; known: {', '.join(FAMILIES)}")
    architecture = ARCHITECTURES[family]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        mix = torch.from_numpy(decode(write_song(root / "song.wav", seconds)).samples)
        model = architecture.load(
            root, small=small, chunk_seconds=chunk_seconds, num_overlap=num_overlap, chunk_batch=1
        )
    if not isinstance(model, MsstModel) or not isinstance(model.geometry.tiling, ChunkTiling):
        raise TypeError(f"{family}: not an MSST model")
    geometry, tiling = model.geometry, model.geometry.tiling
    if (geometry.samplerate, geometry.audio_channels) != (RATE, 2):
        raise ValueError(f"{family}: the benchmark's mix is {RATE} Hz stereo")
    chunk_size = geometry.segment_length
    sources = geometry.sources

    def baseline() -> torch.Tensor:
        return demix(
            lambda batch: model.forward(batch, sources),
            mix,
            chunk_size=chunk_size,
            num_overlap=tiling.num_overlap,
            batch_size=1,
        )

    def engine(batch_size: int) -> Callable[[], torch.Tensor]:
        return lambda: collect_track(model, mix, batch_size=batch_size, precision="fp32")

    with torch.inference_mode():
        # The first pass pays for allocations and kernel choices; neither side should.
        first = mix[:, :chunk_size]
        model.forward(F.pad(first, (0, chunk_size - first.shape[-1]))[None], sources)
    batches = list(dict.fromkeys((SERVICE_CPU_BATCH, model.config.batch_size)))
    contenders: dict[str, Callable[[], torch.Tensor]] = {"baseline": baseline}
    contenders.update({f"engine {batch}": engine(batch) for batch in batches})
    runs, stems = alternate(contenders, rounds)
    audio_s = mix.shape[-1] / RATE
    baseline_s = statistics.median(runs["baseline"])
    plan = plan_chunks(
        mix.shape[-1], chunk_size=chunk_size, num_overlap=tiling.num_overlap, batch_size=1
    )
    return Row(
        family=family,
        model=architecture.name,
        audio_s=audio_s,
        chunk_s=chunk_size / RATE,
        num_overlap=tiling.num_overlap,
        chunks=len(plan.chunks),
        config_batch=model.config.batch_size,
        baseline_s=baseline_s,
        baseline_audio_per_s=audio_s / baseline_s,
        baseline_runs_s=runs["baseline"],
        engine=[
            engine_run(
                batch,
                runs[f"engine {batch}"],
                baseline_s,
                audio_s,
                sources,
                stems["baseline"],
                stems[f"engine {batch}"],
            )
            for batch in batches
        ],
    )


def alternate(
    contenders: dict[str, Callable[[], torch.Tensor]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Run each contender `rounds` times, reversing the order every other round; the
    seconds of each run and each contender's last output."""
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    outputs: dict[str, torch.Tensor] = {}
    for number in range(rounds):
        order = list(contenders) if number % 2 == 0 else list(reversed(contenders))
        for name in order:
            start = time.perf_counter()
            outputs[name] = contenders[name]()
            runs[name].append(time.perf_counter() - start)
    return runs, outputs


def engine_run(
    batch_size: int,
    runs_s: list[float],
    baseline_s: float,
    audio_s: float,
    sources: Sequence[str],
    reference: torch.Tensor,
    estimate: torch.Tensor,
) -> EngineRun:
    """The engine's figures at `batch_size`, its stems scored against the baseline's."""
    stem_sdr = {
        name: sdr_db(expected.numpy(), got.numpy())
        for name, expected, got in zip(sources, reference, estimate, strict=True)
    }
    worst = min(stem_sdr, key=lambda name: stem_sdr[name])
    seconds = statistics.median(runs_s)
    return EngineRun(
        batch_size=batch_size,
        seconds=seconds,
        ratio=seconds / baseline_s,
        audio_per_s=audio_s / seconds,
        sdr_db=stem_sdr[worst],
        worst_stem=worst,
        stem_sdr_db=stem_sdr,
        runs_s=runs_s,
    )


COLUMNS = (
    f"{'family':<18} {'network':<20} {'audio s':>7} {'chunks':>6} {'batch':>5} "
    f"{'baseline s':>10} {'engine s':>9} {'engine/base':>11} {'base x':>7} {'engine x':>8}  "
    "SDR dB (lowest stem)"
)


def format_rows(rows: Sequence[Row]) -> str:
    """The table: a line per family and engine batch size; `x` is audio seconds per
    wall second."""
    lines = [COLUMNS]
    for row in rows:
        for run in row.engine:
            lines.append(
                f"{row.family:<18} {row.model:<20} {row.audio_s:>7.2f} {row.chunks:>6} "
                f"{run.batch_size:>5} {row.baseline_s:>10.2f} {run.seconds:>9.2f} "
                f"{run.ratio:>11.3f} {row.baseline_audio_per_s:>7.3f} {run.audio_per_s:>8.3f}  "
                f"{run.sdr_db:.1f} ({run.worst_stem})"
            )
    return "\n".join(lines)


def header_lines(args: argparse.Namespace, cpuinfo: str) -> list[str]:
    """What was measured, and where."""
    chunks = (
        "the configs' chunks"
        if args.chunk_seconds is None
        else f"{args.chunk_seconds:g} s chunks (RoFormers, SCNet)"
    )
    overlap = (
        "the configs' num_overlap"
        if args.num_overlap is None
        else f"num_overlap {args.num_overlap}"
    )
    return [
        f"MSST families, engine against MSST's demix at batch 1, fp32 on the CPU: "
        f"{args.seconds:g} s stereo mix, {args.rounds} rounds, "
        f"{'tiny models' if args.small else 'published architectures, random weights'}; "
        f"{chunks}, {overlap}; engine batch {SERVICE_CPU_BATCH} (the service's on a CPU) "
        "and the config's",
        f"CPU {cpu_name(cpuinfo)}; torch {torch.__version__}, {torch.get_num_threads()} threads",
    ]


def build_parser() -> argparse.ArgumentParser:
    """The options, each with its help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=DEFAULT_SECONDS, help="mix length (default %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help="runs of each (default %(default)s)"
    )
    parser.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help=f"comma-separated, from {', '.join(FAMILIES)} (default: all)",
    )
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=DEFAULT_CHUNK_SECONDS,
        help="networks that take any length (the RoFormers, SCNet): chunks of this many "
        "seconds; 0 keeps the config's (default %(default)s)",
    )
    parser.add_argument(
        "--num-overlap",
        type=int,
        default=DEFAULT_NUM_OVERLAP,
        help="each sample in this many chunks; 0 keeps the config's (default %(default)s)",
    )
    parser.add_argument("--small", action="store_true", help="tiny models, for a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows here")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Measure each family asked, print the table and write the JSON."""
    parser = build_parser()
    args = parser.parse_args(argv)
    families = chosen_families(parser, args.families, list(FAMILIES))
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be positive and --rounds at least 1")
    if args.chunk_seconds < 0 or args.num_overlap < 0:
        parser.error("--chunk-seconds and --num-overlap must not be negative")
    args.chunk_seconds = args.chunk_seconds or None
    args.num_overlap = args.num_overlap or None
    cpuinfo = this_cpuinfo()
    header = header_lines(args, cpuinfo)
    print("\n".join([*header, COLUMNS]), flush=True)
    rows: list[Row] = []
    for family in families:
        rows.append(
            measure_family(
                family,
                seconds=args.seconds,
                rounds=args.rounds,
                small=args.small,
                chunk_seconds=args.chunk_seconds,
                num_overlap=args.num_overlap,
            )
        )
        print(format_rows(rows[-1:]).split("\n", 1)[1], flush=True)
    if args.json:
        write_family_report(args, header, [asdict(row) for row in rows])


if __name__ == "__main__":
    main()
