"""Where a task's files live: the blob keys of uploads ("inputs/<upload>/audio.<ext>") and
stems ("stems/<task_id>/<stem>.<format>"), and the names of the Pipeline's work folders
("<task_id>-<worker>", on the replica's own disk, not in the blob store). Every module that
builds or reads such a name asks this one, so the layout can change in one place. Each
upload has a folder of its own, so deleting an upload's folder deletes that upload only."""

from __future__ import annotations

import uuid

INPUTS = "inputs"
STEMS = "stems"
UPLOAD_NAME = "audio"
# A task id is a UUID in its canonical form, 36 characters.
_TASK_ID_LENGTH = 36


# The suffixes an upload keeps in its key (so that tools can tell its kind); others are dropped.
INPUT_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".mp4", ".webm"})


def new_input_key(suffix: str) -> str:
    """The key of a new upload, in a folder of its own; `suffix` is "" or like ".mp3"."""
    return f"{INPUTS}/{uuid.uuid4().hex}/{UPLOAD_NAME}{suffix}"


def upload_prefix(key: str) -> str | None:
    """The folder prefix ("inputs/<upload>/") of a blob in an upload's folder; None for a
    key outside any."""
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != INPUTS:
        return None
    return f"{INPUTS}/{parts[1]}/"


def stem_file(stem: str, output_format: str) -> str:
    """The file name of a stem in its task's folder and URL."""
    return f"{stem}.{output_format}"


def stems_prefix(task_id: str) -> str:
    """The prefix of every stem key of a task."""
    return f"{STEMS}/{task_id}/"


def stem_key(task_id: str, stem: str, output_format: str) -> str:
    """The blob key of a stem's file."""
    return stems_prefix(task_id) + stem_file(stem, output_format)


def work_folder_name(task_id: str, worker: str) -> str:
    """The name of the folder a Pipeline `worker` computes `task_id` in."""
    return f"{task_id}-{worker}"


def work_folder_owner(name: str) -> tuple[str, str] | None:
    """The task id and worker a work folder's name holds; None for another name."""
    task_id, dash, worker = (
        name[:_TASK_ID_LENGTH],
        name[_TASK_ID_LENGTH : _TASK_ID_LENGTH + 1],
        name[_TASK_ID_LENGTH + 1 :],
    )
    try:
        uuid.UUID(task_id)
    except ValueError:
        return None
    return (task_id, worker) if dash == "-" and worker else None
