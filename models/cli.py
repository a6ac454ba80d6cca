"""The local command line: separate a file into stems, fetch checkpoints, write test models.

    python -m models separate song.mp3 --stems vocals,drums --out stems/ [--timings]
    python -m models preprocess song.mp3 --steps Denoise,Dereverb --out clean.wav
    python -m models fetch --all --model-dir models/ --accept-licence CC-BY-NC-4.0
    python -m models make-test-model DIR --like htdemucs_6s --small
    python -m models make-test-model DIR --routing configs/routing/community.yaml --small

Errors the user can fix (bad input, unknown stem, missing weights) end with a one-line
message on stderr and exit status 1; usage errors exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from models.audio.decode import DecodeLimits, decode
from models.audio.encode import FORMATS, StemEncoder
from models.checkpoints import fetch_models
from models.engine.devices import DEVICES, REQUESTED_PRECISIONS, resolve_device
from models.errors import SeparationError
from models.families.demucs.testmodel import LAYOUTS, RECIPES, make_test_model
from models.preprocess.catalogue import STEPS, parse_steps
from models.preprocess.steps import preprocess
from models.run import EngineOptions, ModelStore, check_format, separate_file
from models.stages import NO_CLOCK, OTHER, StageClock, describe
from models.stems.catalogue import ALL_STEMS, DEFAULT_STEMS
from models.stems.routing import DEFAULT_ROUTING_PATH, load_routing
from models.testing.models import DEFAULT_CONFIGS, write_test_models


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with every option documented for --help."""
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    separate = commands.add_parser(
        "separate",
        help="split an audio file into stems",
        description="Split an audio file into one file per stem, each as long as the input.",
    )
    separate.add_argument("input", type=Path, help="audio or video file to separate")
    separate.add_argument(
        "--stems",
        default=",".join(DEFAULT_STEMS),
        help=f"comma-separated stems (default: %(default)s); known: {', '.join(ALL_STEMS)}",
    )
    separate.add_argument("--out", type=Path, required=True, help="folder for the stem files")
    separate.add_argument("--format", choices=FORMATS, default="wav", help="(default: wav)")
    separate.add_argument(
        "--preprocess",
        default="",
        help=f"comma-separated steps to apply first, run in the order {', '.join(STEPS)}",
    )
    separate.add_argument("--model-dir", type=Path, help="local folder with model weights")
    separate.add_argument(
        "--no-hub", action="store_true", help="never download weights from the Hugging Face hub"
    )
    separate.add_argument(
        "--routing",
        type=Path,
        default=DEFAULT_ROUTING_PATH,
        help="model routing file (default: the one shipped in models/stems/models.yaml)",
    )
    separate.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto (the default) is CUDA when present, else the CPU",
    )
    separate.add_argument(
        "--precision",
        choices=REQUESTED_PRECISIONS,
        default="fp32",
        help="bf16 autocasts (and allows TF32 on CUDA): faster, slightly different; auto is "
        "bf16 where the CPU or GPU does bf16 natively, else fp32 (default: %(default)s)",
    )
    separate.add_argument("--batch-size", type=int, default=1, help="segments per forward pass")
    separate.add_argument("--overlap", type=float, default=0.25, help="segment overlap")
    separate.add_argument(
        "--shifts", type=int, default=0, help="random time shifts to average (0: deterministic)"
    )
    separate.add_argument("--seed", type=int, default=0, help="seed for --shifts")
    separate.add_argument(
        "--max-duration",
        type=float,
        default=DecodeLimits().max_duration_s,
        help="refuse inputs longer than this many seconds (default: %(default)s)",
    )
    separate.add_argument(
        "--timings",
        action="store_true",
        help="print to stderr where the time went: seconds and share of each stage",
    )

    clean = commands.add_parser(
        "preprocess",
        help="clean an audio file (Denoise, Deecho, Dereverb) without separating it",
        description="Write the input, cleaned by the named steps, to FILE; the format "
        "follows FILE's suffix (.wav, .flac or .mp3).",
    )
    clean.add_argument("input", type=Path, help="audio or video file to clean")
    clean.add_argument("--steps", required=True, help=f"comma-separated, from {', '.join(STEPS)}")
    clean.add_argument("--out", type=Path, required=True, help="file to write")
    clean.add_argument("--device", choices=DEVICES, default="auto", help="(default: auto)")

    fetch = commands.add_parser(
        "fetch",
        help="download the routing's checkpoints into a model folder, verified",
        description="Download the config and weights of routed models into DIR from their "
        "'source:' URLs, checking each against its pinned sha256. Files already there and "
        "verified are not fetched again; an interrupted download resumes. Models whose "
        "licence is not permissive are refused unless --accept-licence names it.",
    )
    chosen = fetch.add_mutually_exclusive_group(required=True)
    chosen.add_argument("models", nargs="*", default=[], metavar="MODEL", help="model keys")
    chosen.add_argument("--all", action="store_true", help="every model of the routing")
    fetch.add_argument(
        "--model-dir", type=Path, required=True, metavar="DIR", help="folder to fetch into"
    )
    fetch.add_argument(
        "--accept-licence",
        action="append",
        default=[],
        metavar="NAME",
        help="fetch models under this licence, exactly as the routing spells it "
        "(repeatable; 'unstated' too)",
    )
    fetch.add_argument(
        "--routing",
        type=Path,
        default=DEFAULT_ROUTING_PATH,
        help="model routing file (default: the one shipped in models/stems/models.yaml)",
    )
    fetch.add_argument(
        "--hub", action="store_true", help="download demucs hub models into its cache now"
    )
    fetch.add_argument("--no-progress", action="store_true", help="no progress bars")

    make = commands.add_parser(
        "make-test-model",
        help="write random-weight models for tests (their stems are noise)",
        description="Write a random-weight copy of a released demucs model into DIR, "
        "loadable with --model-dir DIR under the released name; or, with --routing, one "
        "of every model the routing names (MSST ones from their published configs) and "
        "DIR/routing.yaml, that routing with the written files' checksums.",
    )
    make.add_argument("dir", type=Path, help="model folder to write into")
    make.add_argument(
        "--like",
        choices=sorted(RECIPES),
        default="htdemucs_6s",
        help="released model whose architecture and name to copy (default: %(default)s)",
    )
    make.add_argument("--routing", type=Path, help="write every model this routing names")
    make.add_argument(
        "--model",
        action="append",
        default=[],
        help="with --routing: only this model (repeatable)",
    )
    make.add_argument(
        "--configs",
        type=Path,
        default=DEFAULT_CONFIGS,
        help="with --routing: folder of the published MSST configs (default: %(default)s)",
    )
    make.add_argument("--small", action="store_true", help="tiny widths for fast tests")
    make.add_argument(
        "--layout", choices=LAYOUTS, default="th", help="demucs .th files or hub safetensors"
    )
    make.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "separate":
            return _separate(args)
        if args.command == "preprocess":
            return _preprocess(args)
        if args.command == "fetch":
            return _fetch(args)
        if args.routing is not None:
            written = write_test_models(
                args.routing,
                args.dir,
                names=args.model,
                small=args.small,
                configs=args.configs,
                seed=args.seed,
            )
            print(written)
            return 0
        if args.model:
            raise SeparationError("--model needs --routing")
        bag_file = make_test_model(
            args.dir, args.like, small=args.small, layout=args.layout, seed=args.seed
        )
        print(bag_file)
        return 0
    except (SeparationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _separate(args: argparse.Namespace) -> int:
    """The `separate` command."""
    resolve_device(args.device)  # refuse a missing CUDA device before decoding anything
    if not args.input.is_file():
        raise SeparationError(f"input file not found: {args.input}")
    store = ModelStore(
        load_routing(args.routing), model_dir=args.model_dir, use_hub=not args.no_hub
    )
    options = EngineOptions(
        batch_size=args.batch_size,
        overlap=args.overlap,
        shifts=args.shifts,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
    )
    stems = _names(args.stems)
    limits = DecodeLimits(max_duration_s=args.max_duration)
    clock = StageClock() if args.timings else NO_CLOCK
    with (
        clock.stage(OTHER),
        tqdm(total=100, unit="%", disable=not sys.stderr.isatty(), file=sys.stderr) as bar,
    ):

        def on_progress(fraction: float) -> None:
            bar.update(round(fraction * 100) - bar.n)

        paths = separate_file(
            args.input,
            stems,
            args.out,
            fmt=args.format,
            store=store,
            options=options,
            limits=limits,
            preprocessing=_names(args.preprocess),
            on_progress=on_progress,
            on_warning=_warn,
            clock=clock,
        )
    if args.timings:
        print(f"timings: {describe(clock.totals())}", file=sys.stderr)
    for path in paths.values():
        print(path)
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    """The `preprocess` command."""
    fmt = args.out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise SeparationError(f"--out must end in one of .{', .'.join(FORMATS)}")
    steps = parse_steps(_names(args.steps))
    if not steps:
        raise SeparationError(f"--steps names no step; choose from {', '.join(STEPS)}")
    device = resolve_device(args.device).type
    if not args.input.is_file():
        raise SeparationError(f"input file not found: {args.input}")
    track = decode(args.input)
    for warning in track.warnings:
        _warn(warning)
    check_format(fmt, track)
    cleaned = preprocess(track.samples, track.sample_rate, steps, device=device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with StemEncoder(
        args.out, fmt, sample_rate=track.sample_rate, channels=track.channels, layout=track.layout
    ) as encoder:
        encoder.write(cleaned)
    print(args.out)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    """The `fetch` command: 0 when every chosen model is ready, 1 otherwise."""
    routing = load_routing(args.routing)
    names = list(routing.all_models()) if args.all else args.models
    results = fetch_models(
        routing,
        names,
        args.model_dir,
        accept=frozenset(args.accept_licence),
        hub=args.hub,
        progress=not args.no_progress,
    )
    failed = [result for result in results if not result.ok]
    if failed:
        listed = ", ".join(f"{result.name} ({result.state.value})" for result in failed)
        print(
            f"error: {len(failed)} of {len(results)} model(s) not ready: {listed}", file=sys.stderr
        )
        return 1
    return 0


def _warn(warning: str) -> None:
    """Tell the user about an input that did not decode whole; the work goes on."""
    print(f"warning: {warning}", file=sys.stderr)


def _names(value: str) -> list[str]:
    """Split a comma-separated option into names."""
    return [name.strip() for name in value.split(",") if name.strip()]
