"""Where a batch's stems go: a local folder laid out as `<track id>/<stem>.<format>`, with
`<track id>/_done.json` (the track's result row) written last and atomically.

The done marker is what makes a batch resumable: a rerun lists the markers and processes
only the tracks without one. Stems are first written under `.staging/` in the same folder
and moved into place, so a track's folder never holds a half-encoded stem under its final
name, and a track killed mid-way is simply redone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from serve_app.batch.results import TrackResult

DONE_MARKER = "_done.json"
RESULTS = "results.jsonl"
STAGING = ".staging"


class LocalOutput:
    """A batch's output folder on the local file system."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def done(self) -> dict[str, TrackResult]:
        """The result row of every track with a done marker, by track id."""
        markers = {}
        for marker in sorted(self.root.glob(f"*/{DONE_MARKER}")):
            markers[marker.parent.name] = TrackResult.from_json(marker.read_text())
        return markers

    def staging(self, track_id: str) -> Path:
        """A fresh folder to write `track_id`'s stems into before `commit`."""
        folder = self.root / STAGING
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{track_id}.", dir=folder))

    def commit(self, row: TrackResult, staged: Mapping[str, Path]) -> None:
        """Move the staged stem files (by file name) into the track's folder, then write
        its done marker holding `row`."""
        folder = self.root / row.track_id
        folder.mkdir(parents=True, exist_ok=True)
        for name, path in staged.items():
            os.replace(path, folder / name)
        self._write_atomically(folder / DONE_MARKER, row.to_json() + "\n")

    def discard(self, staging: Path) -> None:
        """Remove a staging folder and whatever is left in it."""
        shutil.rmtree(staging, ignore_errors=True)

    def tidy(self) -> None:
        """Remove the staging folder if no track is being written into it."""
        with contextlib.suppress(OSError):
            (self.root / STAGING).rmdir()

    def results_path(self) -> Path:
        """results.jsonl, this run's rows."""
        return self.root / RESULTS

    @staticmethod
    def _write_atomically(path: Path, text: str) -> None:
        """Write `text` to a temporary file beside `path` and rename it over `path`."""
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "w") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
