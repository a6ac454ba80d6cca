"""Where a batch's tracks come from: a local folder (every regular file in it, recursively),
an `s3://bucket/prefix` (every object under it), or a manifest (one local path, `s3://`
object or `http(s)://` URL a line), each track with its stable id.

The track id is a readable slug of the path as the input names it (relative to the folder
or prefix, or the manifest's line) plus the first 12 hex digits of that path's sha256, so
two paths that slug alike still get different ids, the same path gets the same id on every
run, and a folder and a bucket holding the same files give the same ids.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from serve_app.batch.buckets import S3_SCHEME, is_s3, is_uri, s3_filesystem
from serve_app.store.s3blobs import S3Location

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


def list_inputs(location: str | Path, *, exclude: str | Path | None = None) -> list[InputTrack]:
    """The tracks of a local folder, an `s3://` prefix or a manifest file, in a stable
    order; files under `exclude` (the output, when it lies inside the input) are left out."""
    if is_s3(location):
        return _bucket(str(location), exclude)
    path = Path(location)
    if path.is_dir():
        return _folder(path, None if exclude is None or is_s3(exclude) else Path(exclude))
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


def _bucket(location: str, exclude: str | Path | None) -> list[InputTrack]:
    """Every object under an `s3://bucket/prefix`, by its key relative to the prefix; keys
    ending in "/" (the placeholders some tools make for folders) are left out."""
    where = S3Location.parse(location)
    skipped = S3Location.parse(str(exclude)) if exclude is not None and is_s3(exclude) else None
    root = f"{where.bucket}/{where.prefix}"
    try:
        found = s3_filesystem().find(root)  # one paginated listing, however deep
    except FileNotFoundError:
        raise ValueError(f"input not found: {location}") from None
    tracks = []
    for name in sorted(found):
        bucket, _, key = name.partition("/")
        if key.endswith("/") or not key.startswith(where.prefix):
            continue
        if skipped is not None and bucket == skipped.bucket and key.startswith(skipped.prefix):
            continue
        tracks.append(InputTrack(f"{S3_SCHEME}{name}", track_id(key[len(where.prefix) :])))
    if not tracks:
        raise ValueError(f"no objects under {location}")
    return tracks


def _manifest(manifest: Path) -> list[InputTrack]:
    """One track a non-blank line, `#` lines being comments; a URI (s3, http, https) is
    kept as written, a relative path is read from the manifest's folder; a line repeated is
    one track."""
    tracks: dict[str, InputTrack] = {}
    for line in manifest.read_text().splitlines():
        name = line.strip()
        if not name or name.startswith("#") or name in tracks:
            continue
        source = name if is_uri(name) else str(manifest.parent / name)
        tracks[name] = InputTrack(source, track_id(name))
    return list(tracks.values())
