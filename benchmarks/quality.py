"""Separation quality on a MUSDB18-style folder: SDR per stem, the median over tracks.

    python -m benchmarks.quality DIR [--routing FILE] [--model-dir DIR] [--no-hub]
        [--device auto|cpu|cuda] [--precision fp32|bf16] [--batch-size N] [--json FILE]

DIR holds one folder per track with `mixture.<ext>` and one `<stem>.<ext>` per reference
stem (MUSDB18-HQ's `test/` folder, say; any extension models/audio/decode.py reads). Each
mixture goes through the command line's job path (`separate_file`: the routing's plan,
16-bit WAV stems) for the stems that are both in the folder and served by the routing;
stems with no catalogue name (MUSDB's `other`) or that the routing does not serve are
skipped, said once. References are decoded at the mixture's rate and channels and scored
with SiSEC18's SDR (models/testing/quality.py): per track the median over one-second
windows, then the median over tracks. The table goes to stdout, progress to stderr, and
`--json FILE` writes the same figures (a figure that is not finite is written as null, as
museval writes it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.audio.decode import DecodeLimits, Track, decode
from models.audio.domain import to_model_input
from models.engine.devices import DEVICES, PRECISIONS, resolve_device
from models.errors import SeparationError
from models.run import EngineOptions, ModelStore, separate_file
from models.stems.catalogue import ALL_STEMS
from models.stems.routing import DEFAULT_ROUTING_PATH, load_routing
from models.testing.quality import nan_median, track_sdr

MIXTURE_NAME = "mixture"
AUDIO_SUFFIXES = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".mkv", ".webm"}
)


@dataclass(frozen=True)
class TrackFolder:
    """One track of the data set: its mixture and the reference of each stem to score."""

    name: str
    mixture: Path
    references: Mapping[str, Path]


@dataclass(frozen=True)
class DataSet:
    """The tracks to score, and the stems found in the folder but not scored."""

    tracks: tuple[TrackFolder, ...]
    uncatalogued: frozenset[str]
    unserved: frozenset[str]


def find_tracks(root: Path, served: Sequence[str]) -> DataSet:
    """Every sub-folder of `root` with a mixture, each with its references among `served`."""
    if not root.is_dir():
        raise SeparationError(f"data set folder not found: {root}")
    tracks: list[TrackFolder] = []
    uncatalogued: set[str] = set()
    unserved: set[str] = set()
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        files = _audio_files(folder)
        if MIXTURE_NAME not in files:
            continue
        references: dict[str, Path] = {}
        for stem, path in files.items():
            if stem == MIXTURE_NAME:
                continue
            if stem not in ALL_STEMS:
                uncatalogued.add(stem)
            elif stem not in served:
                unserved.add(stem)
            else:
                references[stem] = path
        ordered = {stem: references[stem] for stem in ALL_STEMS if stem in references}
        tracks.append(TrackFolder(folder.name, files[MIXTURE_NAME], ordered))
    if not tracks:
        raise SeparationError(f"no track folder with a {MIXTURE_NAME} file in {root}")
    if not any(track.references for track in tracks):
        raise SeparationError(f"no stem in {root} is a catalogue stem the routing serves")
    return DataSet(tuple(tracks), frozenset(uncatalogued), frozenset(unserved))


def _audio_files(folder: Path) -> dict[str, Path]:
    """The audio files of a track folder by name; refuses a name given twice."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        if path.stem in files:
            raise SeparationError(
                f"{folder}: two files for {path.stem!r}: {files[path.stem].name} and {path.name}"
            )
        files[path.stem] = path
    return files


def score_track(
    track: TrackFolder,
    store: ModelStore,
    options: EngineOptions,
    work: Path,
    limits: DecodeLimits | None = None,
) -> dict[str, float]:
    """Separate the track's mixture into its reference stems and score each, in dB."""
    stems = list(track.references)
    if not stems:
        return {}
    limits = limits or DecodeLimits()
    mixture = decode(track.mixture, limits)  # for its format: the job decodes it again
    rate, channels = mixture.sample_rate, mixture.channels
    del mixture
    paths = separate_file(track.mixture, stems, work, store=store, options=options, limits=limits)
    references = [
        _in_format(decode(track.references[stem], limits), rate, channels) for stem in stems
    ]
    frames = min(reference.shape[-1] for reference in references)
    # Every stem is as long as the mixture; track_sdr fits them to the references.
    estimates = np.stack([decode(paths[stem], limits).samples for stem in stems])
    scores = track_sdr(
        np.stack([reference[:, :frames] for reference in references]), estimates, rate
    )
    return {stem: float(score) for stem, score in zip(stems, scores, strict=True)}


def _in_format(track: Track, rate: int, channels: int) -> npt.NDArray[np.float32]:
    """A reference's samples at the mixture's rate and channel count."""
    if track.sample_rate == rate and track.channels == channels:
        return track.samples
    return to_model_input(track, rate, channels)


def medians(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per stem, the median over the tracks that scored it (NaN figures left out)."""
    stems = [stem for stem in ALL_STEMS if any(stem in track for track in scores.values())]
    return {
        stem: nan_median([track[stem] for track in scores.values() if stem in track])
        for stem in stems
    }


def format_table(scores: Mapping[str, Mapping[str, float]], median: Mapping[str, float]) -> str:
    """The per-track figures and their medians as an aligned text table, in dB."""
    stems = list(median)
    label = "median"
    width = max(len(name) for name in [*scores, label, "track"])
    columns = [max(8, len(stem)) for stem in stems]

    def row(name: str, cells: Sequence[str]) -> str:
        padded = [cell.rjust(size) for cell, size in zip(cells, columns, strict=True)]
        return "  ".join([name.ljust(width), *padded]).rstrip()

    lines = [row("track", stems)]
    for name, track in scores.items():
        lines.append(row(name, [_cell(track.get(stem)) for stem in stems]))
    lines.append(row(label, [_cell(median[stem]) for stem in stems]))
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    """One table cell: the figure to 0.01 dB, or `-` where there is none."""
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def report(
    scores: Mapping[str, Mapping[str, float]],
    median: Mapping[str, float],
    settings: Mapping[str, object],
    skipped: Sequence[str],
) -> dict[str, object]:
    """The figures as a JSON-ready dictionary; figures that are not finite become None."""
    return {
        "metric": "SDR in dB, BSS-eval v4 (museval): median over 1 s windows, then tracks",
        "settings": dict(settings),
        "skipped_stems": list(skipped),
        "tracks": {name: _finite(track) for name, track in scores.items()},
        "median": _finite(median),
    }


def _finite(figures: Mapping[str, float]) -> dict[str, float | None]:
    """`figures` with every NaN or infinity replaced by None (JSON's null)."""
    return {stem: value if math.isfinite(value) else None for stem, value in figures.items()}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, each option as in `python -m models separate`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dir", type=Path, help="folder of track folders, MUSDB18 style")
    parser.add_argument(
        "--routing",
        type=Path,
        default=DEFAULT_ROUTING_PATH,
        help="model routing file (default: the one shipped)",
    )
    parser.add_argument("--model-dir", type=Path, help="local folder with model weights")
    parser.add_argument("--no-hub", action="store_true", help="never download weights")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="(default: auto)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="(default: fp32)")
    parser.add_argument("--batch-size", type=int, default=1, help="segments per forward pass")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Score the data set, print the table and write the JSON; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        resolve_device(args.device)
        routing = load_routing(args.routing)
        data = find_tracks(args.dir, routing.served_stems())
    except (SeparationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if data.uncatalogued:
        print(
            f"skipping stems with no catalogue name: {', '.join(sorted(data.uncatalogued))}",
            file=sys.stderr,
        )
    if data.unserved:
        print(
            f"skipping stems the routing does not serve: {', '.join(sorted(data.unserved))}",
            file=sys.stderr,
        )
    store = ModelStore(routing, model_dir=args.model_dir, use_hub=not args.no_hub)
    options = EngineOptions(
        batch_size=args.batch_size, device=args.device, precision=args.precision
    )
    scores: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="quality-") as work:
        for number, track in enumerate(data.tracks, start=1):
            try:
                scores[track.name] = score_track(track, store, options, Path(work) / str(number))
            except (SeparationError, ValueError) as exc:
                print(f"error: {track.name}: {exc}", file=sys.stderr)
                return 1
            figures = ", ".join(f"{stem} {_cell(v)}" for stem, v in scores[track.name].items())
            print(f"[{number}/{len(data.tracks)}] {track.name}: {figures}", file=sys.stderr)
    median = medians(scores)
    print(format_table(scores, median))
    if args.json is not None:
        settings = {
            "routing": str(args.routing),
            "device": args.device,
            "precision": args.precision,
            "batch_size": args.batch_size,
        }
        skipped = sorted(data.uncatalogued | data.unserved)
        document = report(scores, median, settings, skipped)
        args.json.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
