"""The batch command line:

    python -m serve_app.batch songs/ stems/ --stems vocals,drums --format flac --workers 1:4

INPUT is a local folder (every regular file in it, recursively), an `s3://bucket/prefix`
(every object under it) or a manifest file (one local path, `s3://bucket/key` or
`http(s)://` URL a line; URLs are fetched through the service's outbound guard, within its
download limits); OUTPUT is a local folder or an `s3://bucket/prefix`. S3's endpoint and
credentials come from the environment as for any AWS client (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...). Tracks already done there (their done marker
written) are skipped; failed ones are retried. Errors the user can fix (a missing input, an
unknown stem) end with a one-line message on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from models.audio.encode import FORMATS
from models.engine.devices import REQUESTED_PRECISIONS
from models.errors import SeparationError
from models.preprocess.catalogue import STEPS
from models.run import EngineOptions
from models.stems.catalogue import ALL_STEMS
from models.stems.routing import DEFAULT_ROUTING_PATH
from serve_app.batch.inputs import list_inputs
from serve_app.batch.job import Workers, run_batch
from serve_app.batch.outputs import open_output
from serve_app.batch.results import TrackResult
from serve_app.batch.worker import SeparationSpec
from serve_app.settings import AppArgs


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with every option documented for --help."""
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.batch",
        description="Separate every track of a folder, bucket or manifest into stems on Ray, "
        "resumably: OUTPUT/<track id>/<stem>.<format> and OUTPUT/results.jsonl.",
    )
    parser.add_argument(
        "input",
        help="a local folder, an s3://bucket/prefix, or a manifest file (one local path, "
        "s3://bucket/key or http(s):// URL a line)",
    )
    parser.add_argument(
        "output",
        help="a local folder or an s3://bucket/prefix (S3 endpoint and credentials from the "
        "environment: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)",
    )
    parser.add_argument(
        "--stems",
        default="",
        help=f"comma-separated stems (default: the routing's default); "
        f"known: {', '.join(ALL_STEMS)}",
    )
    parser.add_argument(
        "--preprocess",
        default="",
        help=f"comma-separated steps to apply first, run in the order {', '.join(STEPS)}",
    )
    parser.add_argument("--format", choices=FORMATS, default="wav", help="(default: wav)")
    parser.add_argument(
        "--routing",
        type=Path,
        default=DEFAULT_ROUTING_PATH,
        help="model routing file (default: the one shipped in models/stems/models.yaml)",
    )
    parser.add_argument("--model-dir", type=Path, help="local folder with model weights")
    parser.add_argument(
        "--no-hub", action="store_true", help="never download weights from the Hugging Face hub"
    )
    parser.add_argument(
        "--workers",
        type=Workers.parse,
        default=Workers(),
        metavar="MIN:MAX",
        help="separating actors, autoscaled between MIN and MAX, starting at MIN (default: 1:2)",
    )
    parser.add_argument(
        "--tracks-per-worker",
        type=int,
        default=Workers().tracks,
        help="tracks each actor separates at once, their segments batched together "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        default=Workers().gpus,
        help="GPUs each actor asks Ray for; 0 runs on the CPU, a fraction shares a GPU "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=EngineOptions().batch_size,
        help="segments each track hands the model at a time; a forward pass holds up to "
        "this many of every track an actor holds (default: %(default)s)",
    )
    parser.add_argument(
        "--precision",
        choices=REQUESTED_PRECISIONS,
        default=EngineOptions().precision,
        help="bf16 autocasts: faster, slightly different; auto is bf16 where the workers' "
        "CPU or GPU does bf16 natively, else fp32 (default: %(default)s)",
    )
    parser.add_argument(
        "--limit", type=int, help="separate at most this many of the tracks not yet done"
    )
    parser.add_argument(
        "--max-duration-s",
        type=float,
        default=AppArgs().decode.max_duration_s,
        help="tracks longer than this many seconds fail (default: the service's, %(default)s); "
        "the other decode limits are the service's",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.limit is not None and args.limit < 0:
            raise ValueError("--limit must be at least 0")
        if args.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        workers = replace(args.workers, tracks=args.tracks_per_worker, gpus=args.gpus_per_worker)
        spec = SeparationSpec(
            stems=_names(args.stems) or None,
            fmt=args.format,
            preprocessing=_names(args.preprocess),
            routing=args.routing,
            model_dir=args.model_dir,
            use_hub=not args.no_hub,
            limits=replace(AppArgs().decode, max_duration_s=args.max_duration_s),
            options=EngineOptions(
                device="auto", batch_size=args.batch_size, precision=args.precision
            ),
        )
        spec.job()  # refuse an unknown stem, step or format before Ray starts
        output = open_output(args.output)
        tracks = list_inputs(args.input, exclude=output.location)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        summary = run_batch(tracks, output, spec, workers=workers, limit=args.limit, on_row=_log)
    except (SeparationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary.line())
    return 0


def _log(row: TrackResult) -> None:
    """One log line per track as its row arrives."""
    reason = f": {row.reason}" if row.reason else ""
    logging.info("%s %s (%s)%s", row.status, row.track_id, row.input, reason)


def _names(text: str) -> tuple[str, ...]:
    """The names of a comma-separated option, blanks dropped."""
    return tuple(name.strip() for name in text.split(",") if name.strip())
