"""The layout of a task's files: keys as they have always been written, and names read back."""

from __future__ import annotations

import re
import uuid

from serve_app.store.layout import (
    new_input_key,
    stem_file,
    stem_key,
    stems_prefix,
    upload_prefix,
    work_folder_name,
    work_folder_owner,
)


def test_each_upload_gets_a_folder_of_its_own() -> None:
    first, second = new_input_key(".mp3"), new_input_key("")
    assert re.fullmatch(r"inputs/[0-9a-f]{32}/audio\.mp3", first)
    assert re.fullmatch(r"inputs/[0-9a-f]{32}/audio", second)
    assert upload_prefix(first) == first.removesuffix("audio.mp3")
    assert upload_prefix(first) != upload_prefix(second)


def test_keys_outside_an_uploads_folder_have_no_upload() -> None:
    for key in ("inputs/loose.mp3", "stems/t1/vocals.wav", "inputs"):
        assert upload_prefix(key) is None


def test_stem_keys_and_names() -> None:
    assert stem_file("vocals", "flac") == "vocals.flac"
    assert stems_prefix("t1") == "stems/t1/"
    assert stem_key("t1", "vocals", "flac") == "stems/t1/vocals.flac"


def test_work_folder_names_read_back() -> None:
    task_id = str(uuid.uuid4())
    name = work_folder_name(task_id, "replica-1-ab12")
    assert name == f"{task_id}-replica-1-ab12"
    assert work_folder_owner(name) == (task_id, "replica-1-ab12")
    for other in ("notes", f"{task_id}-", f"{task_id}x-w", "not-a-uuid-at-all-but-36-chars-long-w"):
        assert work_folder_owner(other) is None
