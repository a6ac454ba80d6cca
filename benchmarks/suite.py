"""`make bench`: issue 17's scenarios, each against its baseline in the same run, as one
table (printed, and written with its figures as JSON).

    python -m benchmarks.suite [--profile quick|full] [--precisions fp32,auto]
        [--scenarios 1,2,3,4,5] [--out DIR] [--small]

The service is started from configs/local.yaml once per precision (engine.precision set
to it; `auto` is bf16 where the CPU has it natively) with a random-weight copy of the
full htdemucs_6s architecture, which computes what the real weights compute. The
baselines run in this process: demucs's `apply_model` at fp32 (split, overlap 0.25, no
shifts), timed in alternation with the service.
1. One track, warm service: from the start of the upload to the COMPLETED webhook,
   against `apply_model` on the decoded track; once, against the `demucs` command line
   on the same file, start-up, model loading and writing WAVs included.
2. Throughput: N tracks uploaded at once against `apply_model` on each in turn.
3. Length: latency and the peak resident memory of every replica, per length (the last
   precision only).
4. Where the time goes: the first scenario-1 track's seconds per stage, as the Pipeline
   and the Separator count them (`stage_totals`, `batch_stats`); "transfer" is the time
   the Pipeline waited for Separator answers beyond their forward passes (the object
   store, queueing); "around" is the time outside the task's stages (the upload, the
   wait for a Pipeline to claim it, the webhook); "outside" is all but the forward passes.
5. The MSST families, in this process: the engine against MSST's chunked inference
   (`demix`) of the same network at batch 1 (benchmarks/msst_speed.py).

Ratios are the service's time over the baseline's, so lower is better; issue 17's
targets are printed beside them. The quick profile keeps the whole run near 15 minutes on
a 2-core machine; `full` runs the sizes the issue names (an hour or more there).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from demucs.apply import BagOfModels

from benchmarks.common import cpu_name, model_folder, write_song
from benchmarks.replicas import StageProbe, StageSnapshot, peaks_mb, replica_processes, reset_peaks
from benchmarks.service_speed import (
    MODEL,
    Completions,
    running_service,
    separate_by_demucs,
    separate_by_service,
)
from models.engine.devices import cpu_flags, resolve_precision, this_cpuinfo
from models.families.demucs.loading import load_model
from serve_app.deployments.separator import separator_name

APP = "stemsplit"
SCENARIOS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Profile:
    """The sizes of one run."""

    one_track_s: tuple[float, ...]  # scenario 1
    concurrent: tuple[int, ...]  # scenario 2: tracks at once
    concurrent_s: float  # scenario 2: each track's length
    lengths_min: tuple[float, ...]  # scenario 3
    rounds: int  # service and baseline each, alternating (scenarios 1 and 2)
    msst_seconds: float  # scenario 5
    msst_small: bool


PROFILES = {
    # A minute or two with --small: checks that the suite runs, measures nothing.
    "smoke": Profile((3.0,), (1, 2), 2.0, (0.05,), 1, 0.5, True),
    "quick": Profile((60.0,), (1, 4, 16), 5.0, (0.5, 1.0, 2.0), 1, 2.0, True),
    "full": Profile((60.0, 180.0), (1, 4, 16), 60.0, (1.0, 5.0, 20.0), 2, 8.0, False),
}


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    case: str
    precision: str
    service: str
    baseline: str
    ratio: float | None = None  # service / baseline: lower is better
    target: str = ""
    met: bool | None = None
    figures: dict[str, Any] = field(default_factory=dict)


def target_row(row: Row, at_most: float | None) -> Row:
    """`row` with its target set and judged."""
    if at_most is not None and row.ratio is not None:
        row.target = f"<= {at_most:.2f}"
        row.met = row.ratio <= at_most
    return row


# Issue 17's CPU targets as service / apply_model time, by precision: one 60 s track,
# and four concurrent tracks (fp32: at least 0.95 of the sequential throughput).
ONE_TRACK_TARGET = {"fp32": 1.10, "bf16": 0.65}
FOUR_TRACKS_TARGET = {"fp32": 1 / 0.95, "bf16": 0.70}


def seconds(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.1f} s"


class Run:
    """One service (one precision) and the baselines it is compared with."""

    def __init__(self, url: str, bag: BagOfModels, probe: StageProbe, precision: str) -> None:
        self.url = url
        self.bag = bag
        self.probe = probe
        self.precision = precision
        self.completions = Completions()

    def close(self) -> None:
        self.completions.close()

    def service(self, song: Path) -> float:
        return separate_by_service(self.url, song, self.completions)

    def concurrent(self, song: Path, tracks: int) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(tracks) as pool:
            list(pool.map(lambda _: self.service(song), range(tracks)))
        return time.perf_counter() - started

    def one_track(self, song: Path, length_s: float, rounds: int) -> tuple[Row, Row | None]:
        """Scenario 1 for one length, and scenario 4 from its first service run."""
        service_s: list[float] = []
        demucs_s: list[float] = []
        stages: Row | None = None
        for number in range(rounds):
            before = self.probe.snapshot()
            service_s.append(self.service(song))
            if number == 0:
                stages = stage_row(
                    self.probe.snapshot().since(before), service_s[0], length_s, self.precision
                )
            demucs_s.append(separate_by_demucs(self.bag, song))
        ratio = statistics.median(service_s) / statistics.median(demucs_s)
        row = Row(
            "1 one track",
            f"{length_s:g} s",
            self.precision,
            seconds(service_s),
            f"apply_model {seconds(demucs_s)}",
            ratio,
            figures={"service_s": service_s, "apply_model_s": demucs_s},
        )
        target = ONE_TRACK_TARGET.get(self.precision) if length_s == 60.0 else None
        return target_row(row, target), stages

    def throughput(self, song: Path, tracks: int, length_s: float, rounds: int) -> Row:
        """Scenario 2 for `tracks` at once."""
        service_s: list[float] = []
        demucs_s: list[float] = []
        for _ in range(rounds):
            service_s.append(self.concurrent(song, tracks))
            demucs_s.append(sum(separate_by_demucs(self.bag, song) for _ in range(tracks)))
        audio = tracks * length_s
        service, demucs = statistics.median(service_s), statistics.median(demucs_s)
        row = Row(
            "2 throughput",
            f"{tracks} x {length_s:g} s",
            self.precision,
            f"{audio / service:.2f} audio s/s",
            f"apply_model {audio / demucs:.2f} audio s/s",
            service / demucs,
            figures={"service_s": service_s, "apply_model_sequential_s": demucs_s},
        )
        return target_row(row, FOUR_TRACKS_TARGET.get(self.precision) if tracks == 4 else None)

    def length(self, song: Path, minutes: float) -> Row:
        """Scenario 3 for one length: latency and each replica's peak memory."""
        pids = replica_processes(APP)
        reset_peaks(pids)
        latency = self.service(song)
        peaks = peaks_mb(pids)
        listed = ", ".join(
            f"{name.split('_')[0]} {peak:.0f}"
            for name, peak in sorted(peaks.items(), key=lambda item: -item[1])
        )
        return Row(
            "3 length",
            f"{minutes:g} min",
            self.precision,
            f"{latency:.1f} s, {minutes * 60 / latency:.2f} audio s/s",
            f"peak MiB: {listed}",
            figures={"latency_s": latency, "peak_mib": peaks},
        )


def stage_row(counted: StageSnapshot, latency: float, length_s: float, precision: str) -> Row:
    """Scenario 4: where one track's `latency` went, as shares of it."""
    stages = dict(counted.stages)
    waited = stages.pop("model", 0.0)
    parts = {
        "forward": counted.forward_s,
        "transfer": max(0.0, waited - counted.forward_s),
        **stages,
    }
    # The upload, the wait for a Pipeline to claim the task, the webhook: outside its stages.
    parts["around"] = max(0.0, latency - sum(parts.values()))
    shares = {name: value / latency for name, value in parts.items()}
    outside = 1.0 - shares["forward"]
    listed = ", ".join(
        f"{name} {share:.1%}"
        for name, share in sorted(shares.items(), key=lambda item: -item[1])
        if share >= 0.001
    )
    return Row(
        "4 where the time goes",
        f"{length_s:g} s",
        precision,
        listed,
        "",
        outside,
        target="outside forward < 10%",
        met=outside < 0.10,
        figures={"seconds": parts, "latency_s": latency},
    )


def demucs_command_line(models: Path, song: Path, out: Path) -> float:
    """Wall seconds of the `demucs` command line on `song`, start-up included."""
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "demucs",
            "--repo",
            str(models),
            "-n",
            MODEL,
            "-d",
            "cpu",
            "--shifts",
            "0",
            "--overlap",
            "0.25",
            "-o",
            str(out),
            str(song),
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def progress(message: str) -> None:
    sys.stderr.write(f"[{datetime.now(UTC):%H:%M:%S}] {message}\n")
    sys.stderr.flush()


def service_rows(args: argparse.Namespace, profile: Profile, root: Path) -> list[Row]:
    """Scenarios 1 to 4, one service per precision, each in a fresh process: Serve's
    handles keep their first cluster's connection for the life of a process."""
    rows: list[Row] = []
    scenarios = frozenset(args.scenarios)
    models = model_folder(root / "models", MODEL, small=args.small)
    songs = {
        length: write_song(root / f"track-{length:g}s.wav", length)
        for length in profile.one_track_s
    }
    write_song(root / "short.wav", profile.concurrent_s)
    cli_s = None
    if 1 in scenarios:
        progress("the demucs command line on one track")
        cli_s = demucs_command_line(models, songs[profile.one_track_s[0]], root / "demucs-cli")
    for number, setting in enumerate(args.precisions):
        last = number == len(args.precisions) - 1
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows += pool.submit(
                precision_rows, scenarios, profile, root, models, setting, lengths=last
            ).result()
    if cli_s is not None:
        rows = with_command_line(rows, cli_s, profile.one_track_s[0])
    return rows


def precision_rows(
    scenarios: frozenset[int],
    profile: Profile,
    root: Path,
    models: Path,
    setting: str,
    *,
    lengths: bool,
) -> list[Row]:
    """Scenarios 1, 2, 4 and (if `lengths`) 3 on one service with `setting`."""
    rows: list[Row] = []
    precision = str(resolve_precision(setting, torch.device("cpu")))
    bag = load_model(MODEL, model_dir=models, use_hub=False)
    short = root / "short.wav"
    progress(f"starting the service, precision {setting} ({precision})")
    with running_service(
        None, models, root / f"service-{setting}", engine={"precision": setting}
    ) as url:
        probe = StageProbe(APP, separator_name(MODEL))
        run = Run(url, bag, probe, precision)
        try:
            run.service(short)  # a warm-up: first-call costs are not the subject
            for length in profile.one_track_s if scenarios & {1, 4} else ():
                progress(f"[{precision}] one {length:g} s track")
                song = root / f"track-{length:g}s.wav"
                row, stages = run.one_track(song, length, profile.rounds)
                if 1 in scenarios:
                    rows.append(row)
                if 4 in scenarios and stages is not None and length == profile.one_track_s[0]:
                    rows.append(stages)
            for tracks in profile.concurrent if 2 in scenarios else ():
                progress(f"[{precision}] {tracks} concurrent tracks")
                rows.append(run.throughput(short, tracks, profile.concurrent_s, profile.rounds))
            if 3 in scenarios and lengths:
                for minutes in profile.lengths_min:
                    progress(f"[{precision}] a {minutes:g} min track")
                    song = write_song(root / f"length-{minutes:g}.wav", minutes * 60)
                    rows.append(run.length(song, minutes))
                    song.unlink()
        finally:
            run.close()
            probe.close()
    return rows


def with_command_line(rows: list[Row], cli_s: float, length_s: float) -> list[Row]:
    """`rows` with a row comparing each scenario-1 row of `length_s` with the `demucs`
    command line's `cli_s`, start-up included, after it."""
    out = []
    for row in rows:
        out.append(row)
        if row.scenario == "1 one track" and row.case == f"{length_s:g} s":
            service = statistics.median(row.figures["service_s"])
            out.append(
                Row(
                    row.scenario,
                    row.case,
                    row.precision,
                    row.service,
                    f"demucs command line {cli_s:.1f} s (start-up included)",
                    service / cli_s,
                    figures={"demucs_cli_s": cli_s},
                )
            )
    return out


def msst_rows(profile: Profile) -> list[Row]:
    """Scenario 5: each MSST family, the engine at the CPU's batch size against `demix`
    at batch 1 (benchmarks/msst_speed.py's defaults for chunks and overlap)."""
    from benchmarks.msst_speed import FAMILIES, measure_family

    rows = []
    for family in FAMILIES:
        progress(f"MSST family {family}")
        measured = measure_family(family, profile.msst_seconds, 1, small=profile.msst_small)
        engine = measured.engine[0]
        rows.append(
            Row(
                "5 MSST families",
                f"{measured.model}{' (small)' if profile.msst_small else ''}, "
                f"{measured.audio_s:g} s",
                "fp32",
                f"engine {engine.seconds:.2f} s (batch {engine.batch_size}), "
                f"SDR {engine.sdr_db:.0f} dB",
                f"demix batch 1 {measured.baseline_s:.2f} s",
                engine.ratio,
                figures=asdict(measured),
            )
        )
    return rows


COLUMNS: tuple[tuple[str, Callable[[Row], str]], ...] = (
    ("scenario", lambda row: row.scenario),
    ("case", lambda row: row.case),
    ("prec", lambda row: row.precision),
    ("service", lambda row: row.service),
    ("baseline", lambda row: row.baseline),
    ("ratio", lambda row: "" if row.ratio is None else f"{row.ratio:.2f}"),
    ("target", lambda row: row.target),
    ("met", lambda row: {None: "", True: "yes", False: "NO"}[row.met]),
)


def format_table(rows: Sequence[Row], header: Sequence[str]) -> str:
    """The rows as a fixed-width table under `header` lines."""
    cells = [[name for name, _ in COLUMNS]] + [[cell(row) for _, cell in COLUMNS] for row in rows]
    widths = [max(len(line[column]) for line in cells) for column in range(len(COLUMNS))]
    lines = [*header, ""]
    for line in cells:
        lines.append(
            "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def header_lines(args: argparse.Namespace, started: datetime, took_s: float) -> list[str]:
    cpuinfo = this_cpuinfo()
    flags = cpu_flags(cpuinfo)
    native = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return [
        f"stemsplit benchmark, {started:%Y-%m-%d %H:%M} UTC, profile {args.profile}, "
        f"{took_s / 60:.1f} min",
        f"{cpu_name(cpuinfo) or platform.machine()}, {os.cpu_count()} cores "
        f"(native bf16: {', '.join(native) or 'no'}), torch {torch.__version__}",
        f"model {MODEL}, random weights, "
        + ("small (a smoke run)" if args.small else "the real architecture's compute")
        + "; ratio = service / baseline time, lower is better",
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument(
        "--precisions",
        type=lambda text: text.split(","),
        default=["fp32", "auto"],
        help="engine.precision settings, one service each (default fp32,auto)",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: [int(part) for part in text.split(",")],
        default=list(SCENARIOS),
        help="which of 1-5 to run (default all)",
    )
    parser.add_argument("--out", type=Path, default=Path("data/bench"), help="JSON goes here")
    parser.add_argument("--small", action="store_true", help="tiny model, for a smoke run")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}: choose from {SCENARIOS}")
    profile = PROFILES[args.profile]
    started = datetime.now(UTC)
    clock = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        if set(args.scenarios) & {1, 2, 3, 4}:
            rows += service_rows(args, profile, root)
    if 5 in args.scenarios:
        rows += msst_rows(profile)
    header = header_lines(args, started, time.perf_counter() - clock)
    table = format_table(rows, header)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = f"{started:%Y%m%d-%H%M}"
    (args.out / f"bench-{stamp}.txt").write_text(table + "\n")
    report = {"header": header, "profile": asdict(profile), "rows": [asdict(r) for r in rows]}
    (args.out / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    progress(f"written to {args.out}/bench-{stamp}.json and .txt")


if __name__ == "__main__":
    main()
