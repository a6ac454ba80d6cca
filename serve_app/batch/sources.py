"""A track's audio as a local file for the separating worker, whatever the input names:
a local path as it is, an `s3://` object downloaded, an `http(s)://` URL fetched through
the service's outbound guard (serve_app/outbound/fetch.py), with the service's limits.

A download goes to a temporary folder that is removed when the block ends, whatever
happens; any failure raises, and the worker turns it into a `failed` row with the reason.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from serve_app.batch.buckets import is_s3, s3_filesystem, s3_path
from serve_app.outbound.fetch import FetchError, FetchLimits, describe_size, fetch_audio
from serve_app.outbound.netguard import OutboundPolicy

HTTP_SCHEMES = ("http://", "https://")


@contextmanager
def local_copy(source: str, *, fetch: FetchLimits, policy: OutboundPolicy) -> Iterator[str]:
    """The path of a local file holding `source`'s bytes for the block; an object or URL
    larger than `fetch.max_bytes` is refused, a URL `policy` refuses is never fetched."""
    if not (is_s3(source) or source.startswith(HTTP_SCHEMES)):
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="batch-source-") as folder:
        # The suffix is kept for the decoder's sake; the name itself may be anything.
        copy = Path(folder) / f"source{PurePosixPath(urlsplit(source).path).suffix}"
        if is_s3(source):
            _download(source, copy, fetch.max_bytes)
        else:
            asyncio.run(fetch_audio(source, copy, fetch, policy=policy))
        yield str(copy)


def _download(url: str, copy: Path, max_bytes: int) -> None:
    """Download the object at `url` into `copy`, refusing it first if it is too large."""
    s3 = s3_filesystem()
    try:
        size = int(s3.info(s3_path(url))["size"])
    except FileNotFoundError:
        raise FetchError(f"{url} does not exist") from None
    if size > max_bytes:
        raise FetchError(
            f"{url} is {describe_size(size)}, larger than the limit of {describe_size(max_bytes)}"
        )
    s3.get_file(s3_path(url), str(copy))
