"""Tests of serve_app.deployments.replicas against a real replica that dies mid-call: a small Serve
deployment, in the session's Ray, whose process exits while it works on a call it was told
to die on (the count of deaths is kept in a file, since each death takes its memory)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray import serve
from ray.exceptions import ActorDiedError
from ray.serve.handle import DeploymentResponse, DeploymentResponseGenerator

from serve_app.app import deployment
from serve_app.deployments import replicas
from tests.serve_app.service import Service

pytestmark = pytest.mark.faults

MORTAL = "mortal"


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Mortal:
    """Doubles a number; dies mid-call while the call's `deaths` are not used up."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def double(self, number: int, deaths: int) -> int:
        """2 x `number`, once the replica has died `deaths` times on this number."""
        record = self.folder / f"deaths-{number}"
        died = int(record.read_text()) if record.exists() else 0
        if died < deaths:
            record.write_text(str(died + 1))
            os._exit(1)  # the replica's process ends with the call unanswered
        return 2 * number


@pytest.fixture(scope="module")
def mortal(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Mortal deployment, deployed beside the session's application; its folder."""
    folder = tmp_path_factory.mktemp("mortal")
    serve.run(deployment(Mortal).bind(str(folder)), name=MORTAL, route_prefix=None)
    try:
        yield folder
    finally:
        serve.delete(MORTAL)


class Doubling:
    """The call `Mortal.double(number, deaths)` to hand to `replicas`: counts how often it
    is sent."""

    def __init__(self, number: int, deaths: int) -> None:
        self.handle = serve.get_deployment_handle("Mortal", app_name=MORTAL)
        self.number = number
        self.deaths = deaths
        self.sent = 0

    def __call__(self) -> DeploymentResponse[Any] | DeploymentResponseGenerator[Any]:
        self.sent += 1
        return self.handle.double.remote(self.number, self.deaths)


def deaths(folder: Path, number: int) -> int:
    return int((folder / f"deaths-{number}").read_text())


def test_a_call_whose_replica_died_is_answered_by_the_next(mortal: Path) -> None:
    call = Doubling(21, deaths=1)
    assert replicas.result(call, "test") == 42
    assert deaths(mortal, 21) == 1
    # Never more sends than deaths + 1; fewer when Serve itself resent the dead call.
    assert 1 <= call.sent <= deaths(mortal, 21) + 1


def test_a_call_already_sent_is_sent_again(mortal: Path) -> None:
    call = Doubling(22, deaths=1)
    sent = call()
    assert replicas.result(call, "test", sent=sent) == 44
    assert deaths(mortal, 22) == 1
    assert 1 <= call.sent <= deaths(mortal, 22) + 1


class DiedResponse:
    """A response whose replica died: what Ray raises for it, every time. A real replica
    cannot stand in here, as Serve itself sometimes sends such a call again and the call
    then succeeds: the resend bound is this module's, and tested on its own."""

    def __init__(self) -> None:
        self.calls = 0

    def result(self) -> object:
        self.calls += 1
        raise ActorDiedError()


def test_past_its_resends_the_replica_death_is_raised() -> None:
    dying = DiedResponse()
    with pytest.raises(replicas.REPLICA_GONE):
        replicas.result(lambda: dying, "test", resends=2)
    assert dying.calls == 3
