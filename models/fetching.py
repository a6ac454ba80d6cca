"""Download one checkpoint file into a model folder: resumable, verified, atomic.

`fetch_file` streams an HTTP(S) URL into `<dest>.part` beside the destination, with a
progress bar, checks the whole file against the pinned sha256 (or a prefix of it) and only
then renames it into place, so a model folder never holds a file that failed its digest. A
rerun is cheap: a destination with the right digest is left alone without a request, and an
interrupted download continues from its partial file with a Range request when the server
honours it (206), or starts over when it does not (200). Every limit (seconds per network
operation, bytes) has a default.
"""

from __future__ import annotations

import enum
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from models.errors import SeparationError

DEFAULT_TIMEOUT_S = 30.0  # per connect and per read, not for the whole download
DEFAULT_MAX_BYTES = 4 << 30  # the largest published MSST checkpoints are under 1 GiB
BLOCK = 1 << 20
PART_SUFFIX = ".part"
SCHEMES = ("http", "https")
# How a sha256 is pinned everywhere (routing, loaders, fetch): the whole hex digest or a
# prefix of at least 8 digits of it, matched without regard to case.
SHA256_PIN = re.compile(r"[0-9a-fA-F]{8,64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class FetchError(SeparationError):
    """A file could not be downloaded; the message names the file and the reason."""


class FetchInterruptedError(FetchError):
    """The transfer stopped before the end (cut, timed out, unreachable); the partial file,
    if any, is kept so that the next run resumes it."""


class FetchLimitError(FetchError):
    """The file is larger than the byte limit; nothing of it is kept."""


class FetchChecksumError(FetchError):
    """The downloaded file's sha256 is not the expected one; nothing of it is kept."""

    def __init__(self, file: str, url: str, expected: str, actual: str) -> None:
        self.file = file
        self.url = url
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"checksum mismatch for {file} from {url}: expected sha256 {expected}, "
            f"got {actual}; the download was deleted"
        )


class FetchOutcome(enum.Enum):
    """What a call did: nothing (already there), a whole download, or the rest of one."""

    PRESENT = "present"
    DOWNLOADED = "downloaded"
    RESUMED = "resumed"


@dataclass(frozen=True)
class FetchResult:
    """The verified file, its digest and size, and how many bytes this call received."""

    path: Path
    sha256: str
    size: int
    outcome: FetchOutcome
    received: int


def part_path(dest: Path) -> Path:
    """Where the download of `dest` is written until it is verified."""
    return dest.with_name(dest.name + PART_SUFFIX)


def sha256_of(path: Path) -> str:
    """The hex sha256 of the file at `path`, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    progress: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FetchResult:
    """Make `dest` hold the file at `url` whose sha256 is `sha256`, downloading only what is
    missing. Raises FetchChecksumError, FetchLimitError (nothing kept) or
    FetchInterruptedError (the partial file kept for the next call).

    `sha256` is pinned as SHA256_PIN says (the digest or a prefix of 8 digits or more).
    None pins nothing: a file already at `dest` is kept, a download is
    taken as it comes, and the result's `sha256` is the one to pin.
    """
    expected = None if sha256 is None else sha256.lower()
    if expected is not None and not SHA256_PIN.fullmatch(expected):
        raise ValueError(f"sha256 for {dest.name} must be 8-64 hex digits, got {sha256!r}")
    scheme = url.partition(":")[0].lower()
    if scheme not in SCHEMES:
        raise FetchError(f"{dest.name}: only http and https URLs are fetched, got {url!r}")
    if dest.is_file():
        present = sha256_of(dest)
        if expected is None or present.startswith(expected):
            return FetchResult(dest, present, dest.stat().st_size, FetchOutcome.PRESENT, 0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    offset = part.stat().st_size if part.is_file() else 0
    if offset > max_bytes:
        part.unlink()
        offset = 0
    transfer = _Transfer(url, dest, part, timeout_s=timeout_s, max_bytes=max_bytes)
    received, resumed = transfer.run(offset, progress=progress)
    actual = sha256_of(part)
    if expected is not None and not actual.startswith(expected):
        part.unlink()
        raise FetchChecksumError(dest.name, url, expected, actual)
    os.replace(part, dest)
    outcome = FetchOutcome.RESUMED if resumed else FetchOutcome.DOWNLOADED
    return FetchResult(dest, actual, dest.stat().st_size, outcome, received)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects (hubs send downloads to a CDN) only to http and https URLs."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if newurl.partition(":")[0].lower() not in SCHEMES:
            fp.close()
            raise FetchError(f"{req.full_url} redirects to {newurl!r}, which is not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Transfer:
    """One download of `url` into `part`, continuing from an offset where it can."""

    def __init__(
        self, url: str, dest: Path, part: Path, *, timeout_s: float, max_bytes: int
    ) -> None:
        self.url = url
        self.name = dest.name
        self.part = part
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.opener = urllib.request.build_opener(_HttpOnlyRedirects)

    def run(self, offset: int, *, progress: bool) -> tuple[int, bool]:
        """Fill the partial file; return the bytes received and whether it resumed."""
        try:
            response = self._open(offset)
            if response is None:  # 416 on a partial file that is already whole
                return 0, True
            with response:
                start, total = self._start_and_total(response, offset)
                mode = "ab" if start else "wb"
                with self.part.open(mode) as sink:
                    received = self._copy(response, sink, start, total, progress=progress)
                    sink.flush()
                    os.fsync(sink.fileno())
        except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts included
            if isinstance(exc, urllib.error.HTTPError):
                raise FetchError(
                    f"{self.name}: {self.url} answered HTTP {exc.code} {exc.reason}"
                ) from exc
            kept = self.part.stat().st_size if self.part.is_file() else 0
            raise FetchInterruptedError(
                f"{self.name}: download from {self.url} stopped: {_reason(exc)} (limit "
                f"{self.timeout_s:g} s per read); {kept} bytes kept in {self.part.name}, "
                "run again to resume"
            ) from exc
        return received, start > 0

    def _open(self, offset: int) -> http.client.HTTPResponse | None:
        """The response for the bytes from `offset` on, or None when the partial file
        already holds all of them. A range the server cannot satisfy (the partial file is
        longer than the file) starts the download over."""
        try:
            return self._request(offset)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not offset:
                raise
            found = _UNSATISFIED_RANGE.fullmatch(exc.headers.get("Content-Range", "").strip())
            exc.close()
            if found and int(found.group(1)) == offset:
                return None
            self.part.unlink()
            return self._request(0)

    def _request(self, offset: int) -> http.client.HTTPResponse:
        headers = {"Accept-Encoding": "identity", "User-Agent": "stemsplit-fetch"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(self.url, headers=headers)
        response: http.client.HTTPResponse = self.opener.open(request, timeout=self.timeout_s)
        return response

    def _start_and_total(
        self, response: http.client.HTTPResponse, offset: int
    ) -> tuple[int, int | None]:
        """Where this response's body starts in the file, and the file's size if known."""
        length = response.headers.get("Content-Length")
        if response.status == 206:
            found = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if found is None or int(found.group(1)) != offset:
                self.part.unlink()
                raise FetchInterruptedError(
                    f"{self.name}: {self.url} answered a range other than bytes={offset}-; "
                    "run again to start over"
                )
            total = None if found.group(3) == "*" else int(found.group(3))
            start = offset
        else:  # 200: the server ignored the range, or none was asked; start over
            total = int(length) if length is not None and length.isdigit() else None
            start = 0
        if total is not None and total > self.max_bytes:
            self.part.unlink(missing_ok=True)
            raise FetchLimitError(
                f"{self.name}: {self.url} is {total} bytes, over the limit of "
                f"{self.max_bytes} bytes"
            )
        return start, total

    def _copy(
        self,
        response: http.client.HTTPResponse,
        sink: IO[bytes],
        start: int,
        total: int | None,
        *,
        progress: bool,
    ) -> int:
        """Append the body to `sink`; stop at the byte limit whatever the headers said."""
        received = 0
        with tqdm(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=self.name,
            disable=not progress,
        ) as bar:
            for block in iter(lambda: response.read1(BLOCK), b""):
                received += len(block)
                if start + received > self.max_bytes:
                    sink.close()
                    self.part.unlink()
                    raise FetchLimitError(
                        f"{self.name}: {self.url} sent more than the limit of "
                        f"{self.max_bytes} bytes"
                    )
                sink.write(block)
                bar.update(len(block))
        if total is not None and start + received != total:
            raise FetchInterruptedError(
                f"{self.name}: {self.url} ended after {start + received} of {total} bytes; "
                "run again to resume"
            )
        return received


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, str):
        return _reason(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
