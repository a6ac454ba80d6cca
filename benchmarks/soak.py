"""Soak the running service with Poisson arrivals and report what became of every task.

    python -m benchmarks.soak --url http://127.0.0.1:8000 --minutes 10 --rate 0.3 --seconds 5

A few short synthetic songs are rendered once; then, for `--minutes`, tasks arrive at
`--rate` a second (exponential gaps from a seeded generator). Each arrival POSTs a song to
`/Extraction` and polls `/byId` every 0.5 s until the task is COMPLETED or FAILED, or
until the deadline (`--deadline-minutes` after arrivals end). At most `--concurrency-cap`
tasks are in flight; an arrival that finds them all busy is skipped by the client, never
sent, and counted as such. Prints counts, latency percentiles of completed tasks (submit
to the first poll that saw COMPLETED, so within one poll interval), throughput in audio
seconds per wall second and the error rate; `--json` writes the same numbers and the
arguments. Exits 1 when any accepted task was never seen final. It only ever talks to
this machine: a `--url` on another host is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from benchmarks.common import RATE
from models.encode import StemEncoder
from models.synth import render_music
from serve_app.records import FINAL, Status

PREFIX = "/api/public/v1"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
REJECTED = frozenset({429, 503})  # the service's overload answers


class ForeignServiceError(ValueError):
    """The URL names a host other than this machine."""


@dataclass(frozen=True)
class TaskOutcome:
    """What became of one submitted task; times are seconds since the run began."""

    submitted_at: float
    submit_status: int | None  # None when the POST got no answer
    task_id: str | None = None  # set when the service accepted the task
    final_status: str | None = None  # COMPLETED or FAILED, once a poll saw it
    ended_at: float | None = None  # the first poll that saw the final status
    poll_errors: int = 0  # polls that got no answer or a status other than 200


@dataclass(frozen=True)
class SoakReport:
    """The numbers of a soak run."""

    arrivals: int
    skipped_by_client: int
    submitted: int
    completed: int
    failed: int
    rejected: int
    client_errors: int
    not_final: int
    submit_statuses: dict[str, int]
    poll_errors: int
    latency_p50_s: float | None
    latency_p90_s: float | None
    latency_p99_s: float | None
    latency_max_s: float | None
    throughput_audio_s_per_s: float | None  # None when no task completed
    error_rate: float


def loopback_url(url: str) -> str:
    """`url` without a trailing slash, if it names this machine; else ForeignServiceError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
        raise ForeignServiceError(
            f"--url {url!r} is not this machine: give http://127.0.0.1, http://localhost "
            "or http://[::1] with a port; a soak run must never load a foreign service"
        )
    return url.rstrip("/")


def arrival_times(rate: float, duration_s: float, *, seed: int) -> list[float]:
    """Poisson arrival offsets in [0, duration_s) at `rate` a second, the same for a seed."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("the rate and the duration must be positive")
    generator = random.Random(seed)
    times: list[float] = []
    now = generator.expovariate(rate)
    while now < duration_s:
        times.append(now)
        now += generator.expovariate(rate)
    return times


def percentile(values: Sequence[float], percent: float) -> float:
    """The `percent` percentile, interpolating linearly between ranks (as numpy does)."""
    if not values:
        raise ValueError("no values to take a percentile of")
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be within 0 and 100, not {percent}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * percent / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def outcome_kind(outcome: TaskOutcome) -> str:
    """completed, failed, rejected, client error (any other answer, or none) or not final."""
    if outcome.submit_status in REJECTED:
        return "rejected"
    if outcome.submit_status != 200 or outcome.task_id is None:
        return "client error"
    if outcome.final_status == Status.COMPLETED:
        return "completed"
    if outcome.final_status == Status.FAILED:
        return "failed"
    return "not final"


def build_report(
    outcomes: Sequence[TaskOutcome], *, skipped: int, song_seconds: float
) -> SoakReport:
    """The report of a run: `outcomes` of the submitted tasks, `skipped` arrivals not sent."""
    kinds = Counter(outcome_kind(outcome) for outcome in outcomes)
    statuses = Counter(
        "no answer" if outcome.submit_status is None else str(outcome.submit_status)
        for outcome in outcomes
    )
    finished = [
        (o.submitted_at, o.ended_at)
        for o in outcomes
        if outcome_kind(o) == "completed" and o.ended_at is not None
    ]
    latencies = [end - start for start, end in finished]
    # Undefined without a completion: the span ends at the last one.
    throughput = None
    if finished:
        span = max(end for _, end in finished) - min(o.submitted_at for o in outcomes)
        throughput = len(finished) * song_seconds / span if span > 0 else None
    errors = kinds["failed"] + kinds["rejected"] + kinds["client error"]

    def latency(percent: float) -> float | None:
        return percentile(latencies, percent) if latencies else None

    return SoakReport(
        arrivals=len(outcomes) + skipped,
        skipped_by_client=skipped,
        submitted=len(outcomes),
        completed=kinds["completed"],
        failed=kinds["failed"],
        rejected=kinds["rejected"],
        client_errors=kinds["client error"],
        not_final=kinds["not final"],
        submit_statuses=dict(sorted(statuses.items())),
        poll_errors=sum(outcome.poll_errors for outcome in outcomes),
        latency_p50_s=latency(50),
        latency_p90_s=latency(90),
        latency_p99_s=latency(99),
        latency_max_s=latency(100),
        throughput_audio_s_per_s=throughput,
        error_rate=errors / len(outcomes) if outcomes else 0.0,
    )


def format_report(report: SoakReport) -> str:
    """The report as a small table."""

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    throughput = (
        "-"
        if report.throughput_audio_s_per_s is None
        else f"{report.throughput_audio_s_per_s:.3f} audio s per wall s"
    )
    statuses = ", ".join(f"{status}: {count}" for status, count in report.submit_statuses.items())
    rows = [
        ("arrivals", str(report.arrivals)),
        ("skipped by client", f"{report.skipped_by_client} (concurrency cap full; never sent)"),
        ("submitted", str(report.submitted)),
        ("completed", str(report.completed)),
        ("failed", str(report.failed)),
        ("rejected (429/503)", str(report.rejected)),
        ("client errors", str(report.client_errors)),
        ("not final", f"{report.not_final} (must be 0)"),
        ("submit answers", statuses or "-"),
        ("poll errors", str(report.poll_errors)),
        ("latency p50", seconds(report.latency_p50_s)),
        ("latency p90", seconds(report.latency_p90_s)),
        ("latency p99", seconds(report.latency_p99_s)),
        ("latency max", seconds(report.latency_max_s)),
        ("throughput", throughput),
        ("error rate", f"{report.error_rate:.2%}"),
    ]
    return "\n".join(f"  {name:20s} {value}" for name, value in rows)


def render_songs(seconds: float, *, seed: int, count: int = 3) -> list[bytes]:
    """`count` synthetic stereo songs of `seconds`, as 16-bit WAV bytes."""
    songs = []
    with tempfile.TemporaryDirectory() as root:
        for index in range(count):
            path = Path(root) / f"song-{index}.wav"
            with StemEncoder(path, "wav", sample_rate=RATE, channels=2, layout="stereo") as out:
                out.write(render_music(seconds, RATE, seed + index))
            songs.append(path.read_bytes())
    return songs


class SoakClient:
    """Submits songs to the service and follows each task until it is final or too late."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        stems: Sequence[str],
        key: str | None = None,
        poll_every_s: float = 0.5,
        submit_timeout_s: float = 120.0,
        poll_timeout_s: float = 10.0,
    ) -> None:
        self._session = session
        self._base_url = base_url
        self._stems = json.dumps(list(stems))
        self._headers = {"Authorization": key} if key else {}
        self._poll_every_s = poll_every_s
        self._submit_timeout = aiohttp.ClientTimeout(total=submit_timeout_s)
        self._poll_timeout = aiohttp.ClientTimeout(total=poll_timeout_s)

    async def run_task(self, song: bytes, *, started: float, deadline: float) -> TaskOutcome:
        """Submit `song`, then poll until final or `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        submitted_at = loop.time() - started
        status, task_id = await self._submit(song)
        if status != 200 or task_id is None:
            return TaskOutcome(submitted_at, status)
        poll_errors = 0
        while loop.time() < deadline:
            await asyncio.sleep(self._poll_every_s)
            final = await self._poll(task_id)
            if final is None:
                poll_errors += 1
            elif final in FINAL:
                return TaskOutcome(
                    submitted_at, status, task_id, final, loop.time() - started, poll_errors
                )
        return TaskOutcome(submitted_at, status, task_id, poll_errors=poll_errors)

    async def _submit(self, song: bytes) -> tuple[int | None, str | None]:
        """The POST's status and the task id it answered, if any."""
        form = aiohttp.FormData()
        form.add_field("audio_file", song, filename="song.wav", content_type="audio/wav")
        form.add_field("stems", self._stems)
        try:
            async with self._session.post(
                f"{self._base_url}{PREFIX}/Extraction",
                data=form,
                headers=self._headers,
                timeout=self._submit_timeout,
            ) as response:
                if response.status != 200:
                    return response.status, None
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError):
            return None, None
        except ValueError:  # a 200 whose body is not JSON
            return 200, None
        task_id = body.get("task_id") if isinstance(body, dict) else None
        return 200, task_id if isinstance(task_id, str) else None

    async def _poll(self, task_id: str) -> str | None:
        """The task's status from byId, or None when the poll failed."""
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
        status = conversion.get("status") if isinstance(conversion, dict) else None
        return status if isinstance(status, str) else None


async def soak(
    client: SoakClient,
    songs: Sequence[bytes],
    schedule: Sequence[float],
    *,
    duration_s: float,
    deadline_s: float,
    concurrency_cap: int = 64,
) -> tuple[list[TaskOutcome], int]:
    """Run the schedule; return the outcomes of sent tasks and how many arrivals were skipped.

    Every task stops polling `deadline_s` after the last possible arrival (`duration_s`).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + duration_s + deadline_s
    in_flight = asyncio.Semaphore(concurrency_cap)
    running: list[asyncio.Task[TaskOutcome]] = []
    skipped = 0

    async def follow(song: bytes) -> TaskOutcome:
        try:
            return await client.run_task(song, started=started, deadline=deadline)
        finally:
            in_flight.release()

    for index, offset in enumerate(schedule):
        await asyncio.sleep(max(0.0, started + offset - loop.time()))
        if in_flight.locked():
            skipped += 1
            continue
        await in_flight.acquire()  # free, as checked: returns at once
        running.append(asyncio.create_task(follow(songs[index % len(songs)])))
    return list(await asyncio.gather(*running)), skipped


async def run(args: argparse.Namespace, base_url: str, songs: list[bytes]) -> SoakReport:
    """Soak the service at `base_url` as the arguments say and report."""
    duration_s = args.minutes * 60
    schedule = arrival_times(args.rate, duration_s, seed=args.seed)
    connector = aiohttp.TCPConnector(limit=args.concurrency_cap)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = SoakClient(session, base_url, stems=args.stems.split(","), key=args.key)
        outcomes, skipped = await soak(
            client,
            songs,
            schedule,
            duration_s=duration_s,
            deadline_s=args.deadline_minutes * 60,
            concurrency_cap=args.concurrency_cap,
        )
    return build_report(outcomes, skipped=skipped, song_seconds=args.seconds)


def main() -> int:
    """Parse the arguments, soak the service, print the report and write it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="loopback only")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long tasks arrive")
    parser.add_argument("--rate", type=float, default=0.3, help="tasks a second, on average")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each song")
    parser.add_argument("--key", help="API key, sent as the Authorization header")
    parser.add_argument("--stems", default="drums", help="comma-separated stems to ask for")
    parser.add_argument("--concurrency-cap", type=int, default=64, help="tasks in flight")
    parser.add_argument(
        "--deadline-minutes", type=float, default=10.0, help="polling after arrivals end"
    )
    parser.add_argument("--json", type=Path, help="write the report and arguments here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.minutes, args.rate, args.seconds) <= 0 or args.concurrency_cap < 1:
        parser.error("--minutes, --rate, --seconds and --concurrency-cap must be positive")
    if args.deadline_minutes < 0:
        parser.error("--deadline-minutes must not be negative")
    try:
        base_url = loopback_url(args.url)
    except ForeignServiceError as refusal:
        parser.error(str(refusal))

    songs = render_songs(args.seconds, seed=args.seed)
    print(
        f"soak {base_url}: {args.minutes:g} min at {args.rate:g} tasks/s, "
        f"{args.seconds:g} s songs, stems {args.stems}, at most {args.concurrency_cap} in flight"
    )
    report = asyncio.run(run(args, base_url, songs))
    print(format_report(report))
    if args.json is not None:
        # Never write the API key itself into a results file.
        arguments: dict[str, Any] = {
            **vars(args),
            "json": str(args.json),
            "key": "given" if args.key else None,
        }
        args.json.write_text(json.dumps({"arguments": arguments, **asdict(report)}, indent=2))
    return 1 if report.not_final else 0


if __name__ == "__main__":
    raise SystemExit(main())
