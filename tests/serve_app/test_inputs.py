"""Uploads the decoder reads but a header check used to refuse, and inputs that decode but
not whole, over real HTTP: what the caller is told at upload, in byId and in the webhook."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import av
import pytest

from tests.models.audio.media import (
    UNKNOWN_LENGTH,
    add_video,
    tone,
    wav_bytes,
    write_unknown_length,
    write_video,
)
from tests.serve_app.service import Recorder, Service, submit, wait_final

SUFFIXES = {
    "flac-streamed": "flac",
    "webm-recording": "webm",
    "adts-aac": "aac",
    "mp3-without-xing": "mp3",
}


def test_uploads_without_a_declared_length_are_accepted_and_complete(
    service: Service, tmp_path: Path
) -> None:
    created = {}
    for kind in UNKNOWN_LENGTH:
        path = tmp_path / f"{kind}.{SUFFIXES[kind]}"
        path.write_bytes(write_unknown_length(kind, path, seconds=2.0))
        answer = submit(service, song=path, stems=json.dumps(["drums"]))
        assert answer.status_code == 200, (kind, answer.text)
        # No length known at upload: the estimates say so, as for an audio_url.
        assert (answer.json()["eta"], answer.json()["credit_estimate"]) == (-1, 0)
        created[kind] = answer.json()["task_id"]

    for kind, task_id in created.items():
        conversion = wait_final(service, task_id)
        assert conversion["status"] == "COMPLETED", (kind, conversion["status_msg"])
        assert conversion["duration_s"] == pytest.approx(2.0, abs=0.06), kind
        assert conversion["warnings"] == [], kind
        assert conversion["status_msg"] == "", kind


def test_a_truncated_upload_completes_with_its_warning_in_byid_and_the_webhook(
    service: Service, tmp_path: Path, recorder: Recorder
) -> None:
    # The header says 12 s, the data holds 2 s.
    path = tmp_path / "cut.wav"
    path.write_bytes(wav_bytes(tone(44100, 2 * 44100, 2), 44100, data_size=12 * 44100 * 4))
    warning = (
        "the input is shorter than its header declares: 2.0 s of audio decoded of the "
        "12.0 s declared; the stems cover the decoded part"
    )
    before = len(recorder.posts)

    answer = submit(
        service, song=path, stems=json.dumps(["drums"]), webhook_url=f"{recorder.url}/cut"
    )

    assert answer.status_code == 200, answer.text
    conversion = wait_final(service, answer.json()["task_id"])
    assert conversion["status"] == "COMPLETED", conversion["status_msg"]
    assert conversion["status_msg"] == warning
    assert conversion["warnings"] == [warning]
    assert conversion["duration_s"] == 2.0
    assert list(conversion["stems"]) == ["drums"]
    recorder.wait_for_posts(before + 1)
    sent = next(json.loads(post[2]) for post in recorder.posts[before:] if post[0] == "/cut")
    assert sent["status"] == "COMPLETED"
    assert sent["warnings"] == [warning]
    assert sent["status_msg"] == warning


def test_uploads_that_are_not_decodable_audio_are_422_saying_why(
    service: Service, tmp_path: Path
) -> None:
    silent_film = tmp_path / "silent.mp4"
    with av.open(str(silent_film), mode="w", format="mp4") as container:
        write_video(container, add_video(container, "mpeg4"), seconds=1.0)
    odd_codec = tmp_path / "odd.wav"
    data = bytearray(wav_bytes(tone(8000, 800, 1), 8000))
    data[20:22] = struct.pack("<H", 0x1234)  # a format tag no decoder knows
    odd_codec.write_bytes(bytes(data))

    for path, reason in (
        (silent_film, "audio_file: no audio stream found"),
        (odd_codec, "audio_file: the audio codec (WAVE format tag 0x1234) is not one"),
    ):
        answer = submit(service, song=path)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "audio_file"
        assert answer.json()["error"].startswith(reason), answer.json()
