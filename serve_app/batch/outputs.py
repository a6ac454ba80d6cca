"""Where a batch's stems go: a local folder or an `s3://bucket/prefix`, laid out as
`<track id>/<stem>.<format>`, with `<track id>/_done.json` (the track's result row) written
last, and `results.jsonl` at the top.

The done marker is what makes a batch resumable: a rerun lists the markers and processes
only the tracks without one. Locally, stems are first written under `.staging/` in the same
folder and moved into place, so a track's folder never holds a half-encoded stem under its
final name, and a track killed mid-way is simply redone. On S3 they are staged in a local
temporary folder and uploaded, each object appearing whole, the marker after every stem.

A killed run cannot clean up after itself, so a run starts by discarding what an earlier
one left half-written in a local output (`discard_leftovers`). That assumes one run at a
time writes to an output folder: a second, concurrent run would delete the first one's
staged stems.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from serve_app.batch.buckets import is_s3, s3_filesystem
from serve_app.batch.results import TrackResult
from serve_app.store.s3blobs import S3Location

DONE_MARKER = "_done.json"
RESULTS = "results.jsonl"
STAGING = ".staging"


class LocalOutput:
    """A batch's output folder on the local file system."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

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

    def discard_leftovers(self) -> None:
        """Remove the staged stems and half-written done markers of runs that were killed.
        Only safe before this run starts writing, with no other run writing here."""
        shutil.rmtree(self.root / STAGING, ignore_errors=True)
        for marker in self.root.glob(f"*/.{DONE_MARKER}.*"):
            marker.unlink(missing_ok=True)

    def tidy(self) -> None:
        """Remove the staging folder if no track is being written into it."""
        with contextlib.suppress(OSError):
            (self.root / STAGING).rmdir()

    @contextmanager
    def open_results(self) -> Iterator[TextIO]:
        """results.jsonl, this run's rows, written in place as they come."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / RESULTS).open("w") as results:
            yield results

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


class S3Output:
    """A batch's output under an `s3://bucket/prefix`; stems are staged in local temporary
    folders and uploaded by `commit`."""

    def __init__(self, location: str) -> None:
        self.location = location
        where = S3Location.parse(location)
        self.root = f"{where.bucket}/{where.prefix}".rstrip("/")
        self.s3 = s3_filesystem()

    def done(self) -> dict[str, TrackResult]:
        """The result row of every track with a done marker, by track id: one listing of
        the prefix, then the markers read together. A missing bucket is a ValueError."""
        try:
            found = self.s3.find(self.root)
        except FileNotFoundError:
            raise ValueError(f"output bucket not found: {self.location}") from None
        markers = sorted(
            name
            for name in found
            if name.endswith(f"/{DONE_MARKER}")
            and name.removeprefix(f"{self.root}/").count("/") == 1
        )
        contents = self.s3.cat(markers) if markers else {}
        return {
            name.split("/")[-2]: TrackResult.from_json(contents[name].decode()) for name in markers
        }

    def staging(self, track_id: str) -> Path:
        """A fresh local folder to write `track_id`'s stems into before `commit`."""
        return Path(tempfile.mkdtemp(prefix=f"batch-{track_id}."))

    def commit(self, row: TrackResult, staged: Mapping[str, Path]) -> None:
        """Upload the staged stem files (by file name) to the track's prefix, then its done
        marker holding `row`, so that a marker means every stem is there."""
        folder = f"{self.root}/{row.track_id}"
        for name, path in staged.items():
            self.s3.put_file(str(path), f"{folder}/{name}")
        self.s3.pipe_file(f"{folder}/{DONE_MARKER}", (row.to_json() + "\n").encode())

    def discard(self, staging: Path) -> None:
        """Remove a local staging folder and whatever is left in it."""
        shutil.rmtree(staging, ignore_errors=True)

    def discard_leftovers(self) -> None:
        """Nothing here to discard: no S3 object is ever half-written, and a killed run's
        stems were staged in the temporary folder of the machine it ran on (a RayJob retry
        starts a new cluster)."""

    def tidy(self) -> None:
        """Nothing to tidy: every staging folder is removed by `discard`."""

    @contextmanager
    def open_results(self) -> Iterator[TextIO]:
        """results.jsonl, written locally as rows come and uploaded when the block ends,
        even when it ends by an error, so the rows written so far are kept."""
        with tempfile.TemporaryDirectory(prefix="batch-results-") as folder:
            path = Path(folder) / RESULTS
            try:
                with path.open("w") as results:
                    yield results
            finally:
                self.s3.put_file(str(path), f"{self.root}/{RESULTS}")


BatchOutput = LocalOutput | S3Output


def open_output(location: str | Path) -> BatchOutput:
    """The output at `location`: an `s3://bucket/prefix` or a local folder."""
    if is_s3(location):
        return S3Output(str(location))
    return LocalOutput(location)
