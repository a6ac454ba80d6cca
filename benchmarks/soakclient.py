"""The soak's client: submits songs to the service as a careful client does and follows each
task until it is final, recording what it saw (`TaskOutcome`).

Each POST carries an `Idempotency-Key`; one that gets no answer, or a 5xx that is not a
refusal by design (429 or 503 with `Retry-After`), is sent again with the same key, so a
task the service created before failing to answer is not created twice. Once a task is
final its byId answer and the ETags of its stem files are kept (`FinalView`), to compare
with a second read after the run.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from benchmarks.audit import FinalView
from serve_app.store.records import FINAL

PREFIX = "/api/public/v1"
REJECTED = frozenset({429, 503})  # the service's overload answers, when they carry Retry-After


@dataclass(frozen=True)
class TaskOutcome:
    """What became of one submitted task; times are seconds since the run began."""

    submitted_at: float
    submit_status: int | None  # the last POST's status; None when it got no answer
    task_id: str | None = None  # set when the service accepted the task
    final_status: str | None = None  # COMPLETED or FAILED, once a poll saw it
    ended_at: float | None = None  # the first poll that saw the final status
    poll_errors: int = 0  # polls that got no answer or a status other than 200
    retry_after: bool = False  # the refusing answer carried Retry-After
    submit_retries: int = 0  # POSTs sent again after no answer or a failure
    final_view: FinalView | None = None  # byId's answer once final, stem ETags included


@dataclass(frozen=True)
class SubmitAnswer:
    """What one POST got."""

    status: int | None
    task_id: str | None = None
    retry_after: bool = False

    @property
    def worth_retrying(self) -> bool:
        """No answer, or a server failure that is not a refusal by design."""
        if self.status is None:
            return True
        return self.status >= 500 and not (self.status in REJECTED and self.retry_after)


class SoakClient:
    """Submits songs to the service and follows each task until it is final or too late."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        stems: Sequence[str],
        key: str | None = None,
        preprocessing: Sequence[str] = (),
        webhook_url: str | None = None,
        poll_every_s: float = 0.5,
        submit_timeout_s: float = 120.0,
        poll_timeout_s: float = 10.0,
        submit_retries: int = 2,
        retry_pause_s: float = 1.0,
    ) -> None:
        self._session = session
        self._base_url = base_url
        self._fields = {"stems": json.dumps(list(stems))}
        if preprocessing:
            self._fields["preprocessing_options"] = json.dumps(list(preprocessing))
        if webhook_url is not None:
            self._fields["webhook_url"] = webhook_url
        self._headers = {"Authorization": key} if key else {}
        self._poll_every_s = poll_every_s
        self._submit_timeout = aiohttp.ClientTimeout(total=submit_timeout_s)
        self._poll_timeout = aiohttp.ClientTimeout(total=poll_timeout_s)
        self._submit_retries = submit_retries
        self._retry_pause_s = retry_pause_s

    async def run_task(self, song: bytes, *, started: float, deadline: float) -> TaskOutcome:
        """Submit `song`, then poll until final or `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        submitted_at = loop.time() - started
        key = f"soak-{uuid.uuid4().hex}"
        answer = await self._submit(song, key)
        retries = 0
        while answer.worth_retrying and retries < self._submit_retries:
            retries += 1
            await asyncio.sleep(self._retry_pause_s)  # a client's back-off, not a wait for an event
            answer = await self._submit(song, key)
        if answer.status != 200 or answer.task_id is None:
            return TaskOutcome(
                submitted_at, answer.status, retry_after=answer.retry_after, submit_retries=retries
            )
        task_id = answer.task_id
        poll_errors = 0
        final: str | None = None
        ended_at: float | None = None
        while loop.time() < deadline:
            await asyncio.sleep(self._poll_every_s)
            conversion = await self.conversion(task_id)
            status = None if conversion is None else conversion.get("status")
            if conversion is None or not isinstance(status, str):
                poll_errors += 1
                continue
            if status not in FINAL:
                continue
            if final is None:
                final, ended_at = status, loop.time() - started
            # Keep reading until the whole final state (stem ETags too) could be read.
            view = await self.final_view(conversion)
            if view is not None:
                return TaskOutcome(
                    submitted_at,
                    200,
                    task_id,
                    final,
                    ended_at,
                    poll_errors,
                    submit_retries=retries,
                    final_view=view,
                )
        return TaskOutcome(
            submitted_at, 200, task_id, final, ended_at, poll_errors, submit_retries=retries
        )

    async def final_view(self, conversion: dict[str, Any]) -> FinalView | None:
        """The final state a byId answer shows, with its stems' ETags; None if a stem could
        not be read."""
        stems = conversion.get("stems") or {}
        etags = []
        for stem in sorted(stems):
            etag = await self._etag(stems[stem])
            if etag is None:
                return None
            etags.append((stem, etag))
        deliveries = conversion.get("webhook") or []
        return FinalView(
            status=str(conversion.get("status")),
            updated_at=conversion.get("updatedAt"),
            webhook_ids=tuple(str(delivery.get("webhook_id")) for delivery in deliveries),
            stem_etags=tuple(etags),
        )

    async def conversion(self, task_id: str) -> dict[str, Any] | None:
        """The task's conversion object from byId, or None when the poll failed."""
        try:
            async with self._session.get(
                f"{self._base_url}{PREFIX}/byId",
                params={"conversionType": "EXTRACTION", "task_id": task_id},
                headers=self._headers,
                timeout=self._poll_timeout,
            ) as response:
                if response.status != 200:
                    return None
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        conversion = body.get("conversion") if isinstance(body, dict) else None
        return conversion if isinstance(conversion, dict) else None

    async def _etag(self, url: str) -> str | None:
        """A stem file's ETag (its modification time and size), reading one byte of it."""
        headers = {**self._headers, "Range": "bytes=0-0"}
        try:
            async with self._session.get(url, headers=headers, timeout=self._poll_timeout) as got:
                await got.read()
                return got.headers.get("ETag") if got.status in (200, 206) else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _submit(self, song: bytes, key: str) -> SubmitAnswer:
        """POST the song with the idempotency `key`."""
        form = aiohttp.FormData()
        form.add_field("audio_file", song, filename="song.wav", content_type="audio/wav")
        for name, value in self._fields.items():
            form.add_field(name, value)
        try:
            async with self._session.post(
                f"{self._base_url}{PREFIX}/Extraction",
                data=form,
                headers={**self._headers, "Idempotency-Key": key},
                timeout=self._submit_timeout,
            ) as response:
                retry_after = "Retry-After" in response.headers
                if response.status != 200:
                    return SubmitAnswer(response.status, retry_after=retry_after)
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError):
            return SubmitAnswer(None)
        except ValueError:  # a 200 whose body is not JSON
            return SubmitAnswer(200)
        task_id = body.get("task_id") if isinstance(body, dict) else None
        return SubmitAnswer(200, task_id if isinstance(task_id, str) else None)
