"""Batches on S3 (moto's server, tests/s3server.py) and inputs fetched over http: listing a
prefix, the S3 output's markers and results, local copies of objects and URLs within the
limits and the outbound policy, and one end-to-end run of the command from bucket to
bucket on a local Ray."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import s3fs

from models.run import EngineOptions
from serve_app.batch.inputs import list_inputs, track_id
from serve_app.batch.outputs import DONE_MARKER, RESULTS, S3Output, open_output
from serve_app.batch.results import DONE, FAILED, SKIPPED, TrackResult
from serve_app.batch.sources import local_copy
from serve_app.batch.worker import SeparationSpec, TrackSeparator
from serve_app.outbound.fetch import FetchError, FetchLimits
from serve_app.outbound.netguard import OutboundPolicy
from serve_app.store.s3blobs import S3Location
from tests.serve_app.service import write_song

ROOT = Path(__file__).resolve().parents[3]
LOOPBACK = OutboundPolicy(allowed_networks=("127.0.0.0/8", "::1/128"))
DEFAULT_POLICY = OutboundPolicy()


@pytest.fixture
def bucket(s3_url: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, with the environment naming the local S3 as any AWS client reads it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    return S3Location.parse(s3_url).bucket


@pytest.fixture
def web_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over http on 127.0.0.1, and its base URL."""
    folder = tmp_path / "web"
    folder.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_prefix_lists_like_the_same_folder(
    bucket: str, s3_admin: s3fs.S3FileSystem, tmp_path: Path
) -> None:
    files = {"b.wav": b"b", "disc 2/a.flac": b"a", "out/t-1/vocals.wav": b"s"}
    for name, body in files.items():
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(body)
        s3_admin.pipe_file(f"{bucket}/songs/{name}", body)
    s3_admin.pipe_file(f"{bucket}/songs/disc 2/", b"")  # a "folder" placeholder
    s3_admin.pipe_file(f"{bucket}/songs2/c.wav", b"c")  # a sibling prefix, not under songs/
    s3_admin.pipe_file(f"{bucket}/other/d.wav", b"d")

    in_bucket = list_inputs(f"s3://{bucket}/songs", exclude=f"s3://{bucket}/songs/out")
    in_folder = list_inputs(tmp_path / "in", exclude=tmp_path / "in" / "out")
    assert [track.source for track in in_bucket] == [
        f"s3://{bucket}/songs/b.wav",
        f"s3://{bucket}/songs/disc 2/a.flac",
    ]
    assert [track.track_id for track in in_bucket] == [track.track_id for track in in_folder]
    whole = list_inputs(f"s3://{bucket}", exclude=tmp_path / "stems")
    assert whole[0].track_id == track_id("other/d.wav")
    assert len(whole) == 5


def test_an_empty_prefix_or_missing_bucket_is_refused(bucket: str) -> None:
    with pytest.raises(ValueError, match=f"no objects under s3://{bucket}/nothing"):
        list_inputs(f"s3://{bucket}/nothing")
    with pytest.raises(ValueError, match="input not found"):
        list_inputs("s3://no-such-bucket-here/songs")


def test_a_manifest_keeps_uris_as_written(tmp_path: Path) -> None:
    manifest = tmp_path / "list.txt"
    manifest.write_text("s3://label/a b.wav\nhttps://example.com/c.mp3?x=1\nlocal.wav\n")
    tracks = list_inputs(manifest)
    assert [track.source for track in tracks] == [
        "s3://label/a b.wav",
        "https://example.com/c.mp3?x=1",
        str(tmp_path / "local.wav"),
    ]
    assert tracks[0].track_id == track_id("s3://label/a b.wav")


def test_s3_output_writes_the_marker_after_every_stem(
    bucket: str, s3_admin: s3fs.S3FileSystem
) -> None:
    output = open_output(f"s3://{bucket}/stems")
    assert isinstance(output, S3Output)
    assert output.done() == {}
    row = TrackResult("in.wav", "t-1", DONE, duration_s=2.0, seconds=1.0, stems=("vocals.wav",))

    staging = output.staging("t-1")
    (staging / "vocals.wav").write_bytes(b"v")
    with pytest.raises(FileNotFoundError):  # a stem that cannot be uploaded: no marker
        output.commit(row, {"vocals.wav": staging / "vocals.wav", "bass.wav": staging / "gone"})
    assert s3_admin.cat_file(f"{bucket}/stems/t-1/vocals.wav") == b"v"
    assert output.done() == {}

    output.commit(row, {"vocals.wav": staging / "vocals.wav"})
    output.discard(staging)
    output.tidy()
    assert not staging.exists()
    assert sorted(s3_admin.find(f"{bucket}/stems")) == [
        f"{bucket}/stems/t-1/{DONE_MARKER}",
        f"{bucket}/stems/t-1/vocals.wav",
    ]
    assert output.done() == {"t-1": row}

    with pytest.raises(RuntimeError), output.open_results() as results:
        results.write(row.to_json() + "\n")
        raise RuntimeError("the run broke off")
    # The rows written before the failure are uploaded all the same.
    assert s3_admin.cat_file(f"{bucket}/stems/{RESULTS}").decode() == row.to_json() + "\n"

    with pytest.raises(ValueError, match="output bucket not found: s3://no-such-bucket-here/"):
        S3Output("s3://no-such-bucket-here/stems").done()


def test_an_object_is_copied_within_the_size_limit(
    bucket: str, s3_admin: s3fs.S3FileSystem
) -> None:
    s3_admin.pipe_file(f"{bucket}/songs/a.wav", b"x" * 2048)
    url = f"s3://{bucket}/songs/a.wav"
    with local_copy(url, fetch=FetchLimits(max_bytes=2048), policy=DEFAULT_POLICY) as copy:
        assert Path(copy).read_bytes() == b"x" * 2048
        assert copy.endswith(".wav")
    assert not Path(copy).exists()
    with (
        pytest.raises(FetchError, match="is 2 KB, larger than the limit of 1 KB"),
        local_copy(url, fetch=FetchLimits(max_bytes=1024), policy=DEFAULT_POLICY),
    ):
        pass
    with (
        pytest.raises(FetchError, match="does not exist"),
        local_copy(f"{url}.missing", fetch=FetchLimits(), policy=DEFAULT_POLICY),
    ):
        pass
    with local_copy("/songs/local.wav", fetch=FetchLimits(), policy=DEFAULT_POLICY) as copy:
        assert copy == "/songs/local.wav"


def test_a_url_goes_through_the_outbound_guard(
    web_folder: tuple[Path, str], model_dir: Path, tmp_path: Path
) -> None:
    folder, base = web_folder
    write_song(folder / "song.wav", 1.0)
    url = f"{base}/song.wav"

    def separator(policy: OutboundPolicy) -> TrackSeparator:
        spec = SeparationSpec(
            model_dir=model_dir,
            use_hub=False,
            options=EngineOptions(device="cpu"),
            outbound=policy,
        )
        return TrackSeparator(spec, str(tmp_path / "stems"))

    refused = separator(DEFAULT_POLICY).separate(url, "song")
    assert refused.status == FAILED
    assert "FetchError" in refused.reason and "loopback" in refused.reason

    fetched = separator(LOOPBACK).separate(url, "song")
    assert fetched.status == DONE, fetched.reason
    assert fetched.duration_s == pytest.approx(1.0, abs=1e-3)
    assert sorted(path.name for path in (tmp_path / "stems" / "song").iterdir()) == sorted(
        [DONE_MARKER, *fetched.stems]
    )


def run_batch_s3(source: str, output: str, model_dir: Path) -> str:
    """Run the batch command to completion in a subprocess with this test's environment
    (the fake credentials and the local S3's endpoint); return its summary line."""
    environment = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    environment["PYTHONPATH"] = str(ROOT)
    finished = subprocess.run(
        [
            *(sys.executable, "-m", "serve_app.batch", source, output),
            *("--model-dir", str(model_dir), "--no-hub", "--workers", "1:1"),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    return finished.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_batch_from_bucket_to_bucket_resumes(
    bucket: str, s3_admin: s3fs.S3FileSystem, model_dir: Path, tmp_path: Path
) -> None:
    names = [f"song-{number}.wav" for number in range(3)]
    for number, name in enumerate(names):
        write_song(tmp_path / name, 1.0, seed=number)
        s3_admin.put_file(str(tmp_path / name), f"{bucket}/songs/{name}")
    s3_admin.pipe_file(f"{bucket}/songs/notes.txt", b"liner notes, not audio\n")
    s3_admin.call_s3("create_bucket", Bucket=f"{bucket}-out")
    source, output = f"s3://{bucket}/songs", f"s3://{bucket}-out/stems"

    def results() -> list[TrackResult]:
        text = s3_admin.cat_file(f"{bucket}-out/stems/{RESULTS}").decode()
        return [TrackResult.from_json(line) for line in text.splitlines()]

    def markers() -> dict[str, bytes]:
        found = s3_admin.glob(f"{bucket}-out/stems/*/{DONE_MARKER}")
        return {name: s3_admin.cat_file(name) for name in found}

    assert run_batch_s3(source, output, model_dir).startswith("done 3, failed 1, skipped 0")
    first = {row.track_id: row for row in results()}
    assert {key for key, row in first.items() if row.status == DONE} == {
        track_id(name) for name in names
    }
    assert first[track_id("notes.txt")].status == FAILED
    assert "not a recognised audio file" in first[track_id("notes.txt")].reason
    for name in names:
        row = first[track_id(name)]
        assert row.input == f"s3://{bucket}/songs/{name}"
        assert row.stems
        for stem in row.stems:
            assert s3_admin.info(f"{bucket}-out/stems/{row.track_id}/{stem}")["size"] > 0
    done = markers()
    assert set(done) == {f"{bucket}-out/stems/{track_id(name)}/{DONE_MARKER}" for name in names}

    assert run_batch_s3(source, output, model_dir).startswith("done 0, failed 1, skipped 3")
    assert {row.track_id for row in results() if row.status == SKIPPED} == set(
        track_id(name) for name in names
    )
    assert markers() == done
