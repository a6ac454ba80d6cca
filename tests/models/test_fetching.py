"""fetch_file against a real loopback HTTP server: success, checksum mismatch, interruption
and resume, a server that ignores Range, reruns, and every limit."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.errors import SeparationError
from models.fetching import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT_S,
    FetchChecksumError,
    FetchError,
    FetchInterruptedError,
    FetchLimitError,
    FetchOutcome,
    FetchResult,
    fetch_file,
    part_path,
)
from tests.models.loopback import LoopbackServer, SeenRequest, serving

NAME = "model.ckpt"
PAYLOAD = os.urandom(300_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
CUT = 100_000


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with serving({NAME: PAYLOAD}) as running:
        yield running


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "models" / NAME


def fetch(
    server: LoopbackServer,
    dest: Path,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FetchResult:
    return fetch_file(
        server.url(NAME),
        dest,
        sha256=DIGEST,
        progress=False,
        timeout_s=timeout_s,
        max_bytes=max_bytes,
    )


def interrupt(server: LoopbackServer, dest: Path) -> None:
    """One download cut after CUT bytes, leaving the partial file."""
    server.behaviour.cut_after, server.behaviour.cuts_left = CUT, 1
    with pytest.raises(FetchInterruptedError, match="run again"):
        fetch(server, dest)
    assert part_path(dest).stat().st_size == CUT
    assert not dest.exists()


def test_downloads_verifies_and_renames(server: LoopbackServer, dest: Path) -> None:
    result = fetch_file(server.url(NAME), dest, sha256=DIGEST.upper(), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()
    assert (result.outcome, result.received, result.size) == (
        FetchOutcome.DOWNLOADED,
        len(PAYLOAD),
        len(PAYLOAD),
    )
    assert result.sha256 == DIGEST
    assert [seen.range for seen in server.seen] == [None]


def test_progress_bar_goes_to_stderr(
    server: LoopbackServer, dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fetch_file(server.url(NAME), dest, sha256=DIGEST)
    assert NAME in capsys.readouterr().err


def test_checksum_mismatch_keeps_nothing(server: LoopbackServer, dest: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(FetchChecksumError) as raised:
        fetch_file(server.url(NAME), dest, sha256=wrong, progress=False)
    message = str(raised.value)
    assert NAME in message and wrong in message and DIGEST in message
    assert isinstance(raised.value, SeparationError)
    assert not dest.exists() and not part_path(dest).exists()


def test_cut_connection_then_resumes_with_range(server: LoopbackServer, dest: Path) -> None:
    interrupt(server, dest)
    result = fetch(server, dest)
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()
    assert server.seen[-1].range == f"bytes={CUT}-"
    assert (result.outcome, result.received) == (FetchOutcome.RESUMED, len(PAYLOAD) - CUT)


def test_server_ignoring_range_restarts_from_zero(server: LoopbackServer, dest: Path) -> None:
    interrupt(server, dest)
    server.behaviour.honour_range = False
    result = fetch(server, dest)
    assert server.seen[-1].range == f"bytes={CUT}-"
    assert dest.read_bytes() == PAYLOAD
    assert (result.outcome, result.received) == (FetchOutcome.DOWNLOADED, len(PAYLOAD))


def test_partial_longer_than_the_file_restarts(server: LoopbackServer, dest: Path) -> None:
    dest.parent.mkdir(parents=True)
    part_path(dest).write_bytes(PAYLOAD + b"stale tail")
    result = fetch(server, dest)
    assert dest.read_bytes() == PAYLOAD
    assert [seen.range for seen in server.seen] == [f"bytes={len(PAYLOAD) + 10}-", None]
    assert result.outcome == FetchOutcome.DOWNLOADED


def test_whole_partial_is_verified_without_a_body(server: LoopbackServer, dest: Path) -> None:
    """A run that stopped between the last byte and the rename."""
    dest.parent.mkdir(parents=True)
    part_path(dest).write_bytes(PAYLOAD)
    result = fetch(server, dest)
    assert dest.read_bytes() == PAYLOAD
    assert (result.outcome, result.received) == (FetchOutcome.RESUMED, 0)
    assert len(server.seen) == 1


def test_rerun_fetches_nothing(server: LoopbackServer, dest: Path) -> None:
    fetch(server, dest)
    result = fetch(server, dest)
    assert len(server.seen) == 1
    assert (result.outcome, result.received) == (FetchOutcome.PRESENT, 0)


def test_wrong_existing_file_is_fetched_again(server: LoopbackServer, dest: Path) -> None:
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"an older checkpoint")
    result = fetch(server, dest)
    assert dest.read_bytes() == PAYLOAD
    assert result.outcome == FetchOutcome.DOWNLOADED


def test_a_partial_file_over_the_limit_is_restarted(server: LoopbackServer, dest: Path) -> None:
    dest.parent.mkdir(parents=True)
    part_path(dest).write_bytes(bytes(len(PAYLOAD) + 1))
    result = fetch(server, dest, max_bytes=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert [seen.range for seen in server.seen] == [None]  # from zero, not resumed
    assert result.outcome == FetchOutcome.DOWNLOADED


def test_declared_size_over_the_limit_keeps_nothing(server: LoopbackServer, dest: Path) -> None:
    with pytest.raises(FetchLimitError, match="over the limit"):
        fetch(server, dest, max_bytes=len(PAYLOAD) - 1)
    assert not dest.exists() and not part_path(dest).exists()


def test_undeclared_size_is_cut_at_the_limit(server: LoopbackServer, dest: Path) -> None:
    server.behaviour.send_length = False
    with pytest.raises(FetchLimitError, match="more than the limit"):
        fetch(server, dest, max_bytes=CUT)
    assert not dest.exists() and not part_path(dest).exists()


def test_exact_size_is_within_the_limit(server: LoopbackServer, dest: Path) -> None:
    server.behaviour.send_length = False
    fetch(server, dest, max_bytes=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_stalled_server_times_out_and_keeps_the_partial(server: LoopbackServer, dest: Path) -> None:
    interrupt(server, dest)
    server.behaviour.stall_s = 5.0
    with pytest.raises(FetchInterruptedError, match="timed out"):
        fetch(server, dest, timeout_s=0.2)
    assert part_path(dest).stat().st_size == CUT


def test_missing_file_names_the_status(server: LoopbackServer, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_file(server.url("absent.ckpt"), tmp_path / "absent.ckpt", sha256=DIGEST)
    assert not (tmp_path / "absent.ckpt").exists()


def test_unreachable_server_is_an_interruption(dest: Path) -> None:
    with serving({}) as stopped:
        url = stopped.url(NAME)
    with pytest.raises(FetchInterruptedError, match="stopped"):
        fetch_file(url, dest, sha256=DIGEST, progress=False, timeout_s=2)


def test_redirect_is_followed_with_the_range(server: LoopbackServer, dest: Path) -> None:
    """Hubs answer a download with a redirect to their CDN."""
    server.redirects["hub/model.ckpt"] = server.url(NAME)
    interrupt(server, dest)
    fetch_file(server.url("hub/model.ckpt"), dest, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.seen[-2:] == [
        SeenRequest("/hub/model.ckpt", f"bytes={CUT}-"),
        SeenRequest(f"/{NAME}", f"bytes={CUT}-"),
    ]


def test_redirect_off_http_is_refused(server: LoopbackServer, dest: Path) -> None:
    server.redirects["hub/model.ckpt"] = "ftp://127.0.0.1/model.ckpt"
    with pytest.raises(FetchError, match="not http"):
        fetch_file(server.url("hub/model.ckpt"), dest, sha256=DIGEST, progress=False)
    assert not dest.exists()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/model.ckpt"])
def test_only_http_urls(url: str, dest: Path) -> None:
    with pytest.raises(FetchError, match="only http and https"):
        fetch_file(url, dest, sha256=DIGEST, progress=False)


def test_digest_must_be_a_sha256_or_a_prefix_of_8_digits(
    server: LoopbackServer, dest: Path
) -> None:
    for pin in (DIGEST[:7], DIGEST + "0", "g" * 64):
        with pytest.raises(ValueError, match="8-64 hex digits"):
            fetch_file(server.url(NAME), dest, sha256=pin, progress=False)
    assert server.seen == []
    result = fetch_file(server.url(NAME), dest, sha256=DIGEST[:8].upper(), progress=False)
    assert result.sha256 == DIGEST
