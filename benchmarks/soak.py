"""Soak the running service with Poisson arrivals and report what became of every task.

    python -m benchmarks.soak --url http://127.0.0.1:8000 --minutes 10 --rate 0.3 --seconds 5
    python -m benchmarks.soak --chaos --chaos-every-s 30 --minutes 10 --rate 0.5 --seconds 5

A few short synthetic songs are rendered once; then, for `--minutes`, tasks arrive at
`--rate` a second (exponential gaps from a seeded generator). Each arrival POSTs a song to
`/Extraction` (benchmarks/soakclient.py: with an Idempotency-Key, sent again after no
answer or a 5xx that is not a refusal by design) and polls `/byId` every 0.5 s until the
task is COMPLETED or FAILED, or until the deadline (`--deadline-minutes` after arrivals
end). At most `--concurrency-cap` tasks are in flight; an arrival that finds them all busy
is skipped by the client, never sent, and counted as such.

`--chaos` also kills a random actor of the application (benchmarks/chaos.py: a replica of
`--chaos-kinds`, or the webhook dispatcher) every `--chaos-every-s` while tasks arrive, and
gives every task a webhook to a receiver of its own (benchmarks/receiver.py; `--webhooks`
does that without chaos); it connects to the application's Ray cluster (`--ray-address`).
The kills stop when the arrival window ends; then the drain: tasks have until the deadline
to end and to deliver their webhooks, and the run ends as soon as all have. Every final
task is then read again and checked (benchmarks/audit.py): not final, ran to completion
twice, webhook lost, must all be 0.

Prints counts, latency percentiles of completed tasks (submit to the first poll that saw
COMPLETED, so within one poll interval), throughput in audio seconds per wall second, the
error rate (FAILED tasks and POSTs that never got a task, over submissions) beside the
rate of refusals by design (429 or 503 with Retry-After), and with chaos the kills and the
invariants; `--json` writes the same numbers and the arguments. Exits 1 when an invariant
is broken. It only ever talks to this machine: a `--url` on another host is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import ray

from benchmarks.audit import Audit, FinalView, TaskAudit, audit
from benchmarks.chaos import KINDS, chaos
from benchmarks.common import RATE
from benchmarks.receiver import WebhookLog, receiving
from benchmarks.soakclient import SoakClient, TaskOutcome
from benchmarks.soakreport import SoakReport, build_report, format_report
from models.audio.encode import StemEncoder
from models.testing.synth import render_music

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
RECHECK_TRIES = 5  # reads of a final task after the run, one a second, before it is unverified


class ForeignServiceError(ValueError):
    """The URL names a host other than this machine."""


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


async def soak(
    client: SoakClient,
    songs: Sequence[bytes],
    schedule: Sequence[float],
    *,
    started: float,
    deadline: float,
    concurrency_cap: int = 64,
) -> tuple[list[TaskOutcome], int]:
    """Run the schedule (offsets from `started`, loop time); return the outcomes of sent
    tasks and how many arrivals were skipped. Tasks stop polling at `deadline`."""
    loop = asyncio.get_running_loop()
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


async def await_webhooks(
    outcomes: Sequence[TaskOutcome], log: WebhookLog, *, deadline: float
) -> None:
    """Wait until every final task's webhook has arrived, or until `deadline` (loop time)."""
    loop = asyncio.get_running_loop()
    expected = {o.task_id for o in outcomes if o.final_status is not None}
    while loop.time() < deadline and not expected <= set(log.by_task()):
        await asyncio.sleep(0.5)  # polling a condition, with a deadline


async def recheck(client: SoakClient, task_id: str) -> FinalView | None:
    """A final task's state read again after the run; None if it cannot be read whole."""
    for attempt in range(RECHECK_TRIES):
        if attempt:
            await asyncio.sleep(1.0)  # a client's back-off before reading again
        conversion = await client.conversion(task_id)
        if conversion is not None:
            view = await client.final_view(conversion)
            if view is not None:
                return view
    return None


async def audit_run(
    client: SoakClient, outcomes: Sequence[TaskOutcome], log: WebhookLog | None
) -> Audit:
    """Read every accepted task again and check the invariants."""
    accepted = {o.task_id: o for o in outcomes if o.task_id is not None}
    seen = [task_id for task_id, o in accepted.items() if o.final_view is not None]
    views = await asyncio.gather(*(recheck(client, task_id) for task_id in seen))
    later = dict(zip(seen, views, strict=True))
    tasks = [
        TaskAudit(task_id, o.final_status, o.final_view, later.get(task_id))
        for task_id, o in accepted.items()
    ]
    return audit(tasks, log.by_task() if log else {}, expect_webhooks=log is not None)


@contextlib.asynccontextmanager
async def maybe_receiving(wanted: bool) -> AsyncIterator[WebhookLog | None]:
    """A webhook receiver while the block runs, if `wanted`."""
    if not wanted:
        yield None
        return
    async with receiving() as log:
        yield log


async def run(args: argparse.Namespace, base_url: str, songs: list[bytes]) -> SoakReport:
    """Soak the service at `base_url` as the arguments say and report. With `args.chaos`,
    Ray must already be connected to the cluster that runs the application `args.app`."""
    duration_s = args.minutes * 60
    schedule = arrival_times(args.rate, duration_s, seed=args.seed)
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=args.concurrency_cap)
    async with (
        maybe_receiving(args.webhooks or args.chaos) as log,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        client = SoakClient(
            session,
            base_url,
            stems=args.stems.split(","),
            key=args.key,
            preprocessing=args.preprocessing.split(",") if args.preprocessing else (),
            webhook_url=log.url if log else None,
            submit_retries=args.submit_retries,
        )
        started = loop.time()
        deadline = started + duration_s + args.deadline_minutes * 60
        window_over = asyncio.Event()  # chaos stops when the arrival window ends
        loop.call_at(started + duration_s, window_over.set)
        killer = None
        if args.chaos:
            kinds = args.chaos_kinds.split(",")
            killer = asyncio.create_task(
                chaos(
                    args.app,
                    kinds,
                    args.chaos_every_s,
                    window_over,
                    started=started,
                    seed=args.seed,
                )
            )
        outcomes, skipped = await soak(
            client,
            songs,
            schedule,
            started=started,
            deadline=deadline,
            concurrency_cap=args.concurrency_cap,
        )
        kills = await killer if killer is not None else []
        checked = None
        if log is not None:
            await await_webhooks(outcomes, log, deadline=deadline)
            checked = await audit_run(client, outcomes, log)
    return build_report(
        outcomes, skipped=skipped, song_seconds=args.seconds, kills=kills, checked=checked
    )


def parser() -> argparse.ArgumentParser:
    """The command line."""
    parse = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parse.add_argument("--url", default="http://127.0.0.1:8000", help="loopback only")
    parse.add_argument("--minutes", type=float, default=10.0, help="how long tasks arrive")
    parse.add_argument("--rate", type=float, default=0.3, help="tasks a second, on average")
    parse.add_argument("--seconds", type=float, default=5.0, help="length of each song")
    parse.add_argument("--key", help="API key, sent as the Authorization header")
    parse.add_argument("--stems", default="drums", help="comma-separated stems to ask for")
    parse.add_argument("--preprocessing", default="", help="e.g. Denoise (comma-separated)")
    parse.add_argument("--concurrency-cap", type=int, default=64, help="tasks in flight")
    parse.add_argument("--submit-retries", type=int, default=2, help="resends of a failed POST")
    parse.add_argument(
        "--deadline-minutes", type=float, default=10.0, help="polling after arrivals end"
    )
    parse.add_argument("--webhooks", action="store_true", help="check webhooks (implied by chaos)")
    parse.add_argument("--chaos", action="store_true", help="kill actors while tasks arrive")
    parse.add_argument("--chaos-every-s", type=float, default=30.0, help="seconds between kills")
    parse.add_argument("--chaos-kinds", default=",".join(KINDS), help="comma-separated kinds")
    parse.add_argument("--app", default="stemsplit", help="the Serve application, for chaos")
    parse.add_argument(
        "--ray-address", default="auto", help="the application's Ray cluster, for chaos"
    )
    parse.add_argument("--json", type=Path, help="write the report and arguments here")
    parse.add_argument("--seed", type=int, default=0)
    return parse


def check_args(parse: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Refuse arguments out of range; the base URL."""
    if min(args.minutes, args.rate, args.seconds, args.chaos_every_s) <= 0:
        parse.error("--minutes, --rate, --seconds and --chaos-every-s must be positive")
    if args.concurrency_cap < 1 or args.submit_retries < 0:
        parse.error("--concurrency-cap must be positive and --submit-retries not negative")
    if args.deadline_minutes < 0:
        parse.error("--deadline-minutes must not be negative")
    unknown = set(args.chaos_kinds.split(",")) - set(KINDS)
    if unknown:
        parse.error(f"--chaos-kinds: unknown {sorted(unknown)}; choose from {', '.join(KINDS)}")
    try:
        return loopback_url(args.url)
    except ForeignServiceError as refusal:
        parse.error(str(refusal))


def main() -> int:
    """Parse the arguments, soak the service, print the report and write it as JSON."""
    parse = parser()
    args = parse.parse_args()
    base_url = check_args(parse, args)
    songs = render_songs(args.seconds, seed=args.seed)
    chaos_note = f", killing one of {args.chaos_kinds} every {args.chaos_every_s:g} s"
    print(
        f"soak {base_url}: {args.minutes:g} min at {args.rate:g} tasks/s, "
        f"{args.seconds:g} s songs, stems {args.stems}, at most {args.concurrency_cap} in flight"
        + (chaos_note if args.chaos else "")
    )
    if args.chaos:
        ray.init(address=args.ray_address, log_to_driver=False, logging_level=logging.ERROR)
    try:
        report = asyncio.run(run(args, base_url, songs))
    finally:
        if args.chaos:
            ray.shutdown()
    print(format_report(report))
    if args.json is not None:
        # Never write the API key itself into a results file.
        arguments: dict[str, Any] = {
            **vars(args),
            "json": str(args.json),
            "key": "given" if args.key else None,
        }
        args.json.write_text(
            json.dumps({"arguments": arguments, **asdict(report)}, indent=2, default=str)
        )
    return 1 if report.broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
