"""The soak's chaos mode (benchmarks/soak.py --chaos) against the session's application: for
a minute tasks arrive while a Separator, Pipeline, Preprocessor or Ingress replica or the
webhook dispatcher is killed every 13 s (each kind once), and afterwards every task must be
final, none may have completed twice, and every webhook must have arrived. Marked `faults`:
it kills parts of the running service. It leaves every deployment healthy for the tests
that follow."""

from __future__ import annotations

import asyncio

import pytest
import ray
from ray import serve

from benchmarks.chaos import KINDS
from benchmarks.soak import check_args, parser, render_songs, run
from benchmarks.soakreport import format_report
from tests.serve_app.service import APP, KEY_A, Service
from tests.waiting import wait_until

pytestmark = pytest.mark.faults

EVERY_S = 13.0
WINDOW_S = 5 * EVERY_S + 3  # five kills, one of each kind, then arrivals end


def test_chaos_soak_keeps_every_invariant(service: Service) -> None:
    command = parser()
    args = command.parse_args(
        [
            f"--url={service.url}",
            f"--key={KEY_A}",
            f"--minutes={WINDOW_S / 60}",
            "--rate=0.4",
            "--seconds=3",
            "--preprocessing=Denoise",  # so that tasks go through the Preprocessor too
            "--chaos",
            f"--chaos-every-s={EVERY_S}",
            "--deadline-minutes=1.5",
            f"--app={APP}",
            "--seed=12",
        ]
    )
    base_url = check_args(command, args)
    try:
        report = asyncio.run(run(args, base_url, render_songs(args.seconds, seed=args.seed)))
    finally:
        wait_healthy()
    print(format_report(report))  # shown when the test fails
    assert report.kills == dict.fromkeys(sorted(KINDS), 1), report
    assert report.missed_kills == 0
    assert report.audit is not None
    assert report.audit.problems == ()
    assert (report.not_final, report.audit.run_twice, report.audit.webhooks_lost) == (0, 0, 0)
    assert report.audit.unverified == 0
    # A kill costs time, never the task: every task the service accepted completed.
    assert report.completed == report.submitted - report.rejected > 0, report
    assert report.failed == report.client_errors == 0


def wait_healthy(timeout_s: float = 120.0) -> None:
    """Block until every deployment of the application is healthy and the dispatcher runs
    again, so the tests after this one meet a whole service."""
    wait_until(whole, timeout_s=timeout_s, every_s=0.5, failure="the application did not recover")


def whole() -> bool:
    """Every deployment of the application is healthy and its webhook dispatcher runs."""
    application = serve.status().applications.get(APP)
    healthy = application is not None and all(
        deployment.status == "HEALTHY" for deployment in application.deployments.values()
    )
    dispatcher = any(
        isinstance(actor, dict) and actor["name"] == f"{APP}-webhooks"
        for actor in ray.util.list_named_actors(all_namespaces=True)
    )
    return healthy and dispatcher
