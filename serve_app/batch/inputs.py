"""Where a batch's tracks come from: a local folder (every regular file in it, recursively)
or a manifest (one local path a line), each track with its stable id.

The track id is a readable slug of the path as the input names it (relative to the folder,
or the manifest's line) plus the first 12 hex digits of that path's sha256, so two paths
that slug alike still get different ids, and the same path gets the same id on every run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

SLUG_CHARS = 60  # the readable part of a track id, before its hash


@dataclass(frozen=True)
class InputTrack:
    """One track of a batch: where to read it and the id its outputs are filed under."""

    source: str
    track_id: str


def track_id(name: str) -> str:
    """The stable, collision-free id of the track the input names `name`."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:SLUG_CHARS].strip("-")
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{slug or 'track'}-{digest}"


def list_inputs(location: str | Path, *, exclude: Path | None = None) -> list[InputTrack]:
    """The tracks of a local folder or manifest file, in a stable order; files under
    `exclude` (the output folder, when it lies inside the input) are left out."""
    path = Path(location)
    if path.is_dir():
        return _folder(path, exclude)
    if path.is_file():
        return _manifest(path)
    raise ValueError(f"input not found: {location}")


def _folder(folder: Path, exclude: Path | None) -> list[InputTrack]:
    """Every regular file under `folder`, by its path relative to the folder."""
    skipped = exclude.resolve() if exclude is not None else None
    tracks = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        if skipped is not None and path.resolve().is_relative_to(skipped):
            continue
        name = path.relative_to(folder).as_posix()
        tracks.append(InputTrack(str(path), track_id(name)))
    return tracks


def _manifest(manifest: Path) -> list[InputTrack]:
    """One track a non-blank line, `#` lines being comments; a relative path is read from
    the manifest's folder; a line repeated is one track."""
    tracks: dict[str, InputTrack] = {}
    for line in manifest.read_text().splitlines():
        name = line.strip()
        if not name or name.startswith("#") or name in tracks:
            continue
        tracks[name] = InputTrack(str(manifest.parent / name), track_id(name))
    return list(tracks.values())
