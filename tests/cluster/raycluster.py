"""A real Ray cluster of separate nodes on this machine, for the tests of the application
across nodes: each node is a `ray start --block` child process with its own temporary folder,
free ports and environment, in its own process group, so that a test can stop one node
(its raylet, workers and all) without `ray stop`, which would end every Ray process on the
machine, the test session's own Ray included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from tests.serve_app.service import free_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 30.0
NODE_LABEL = "stemsplit-test-node"  # names each node in Ray's node list


def ray_program() -> str:
    """The `ray` command of the interpreter running the tests."""
    return str(Path(sys.executable).parent / "ray")


@dataclass
class RayNode:
    """One node: the `ray start --block` process that owns its Ray processes."""

    name: str
    process: subprocess.Popen[bytes]
    temp_dir: Path
    log: Path
    node_id: str | None = None  # Ray's, once the node has joined

    def alive(self) -> bool:
        """The node's `ray start` process still runs."""
        return self.process.poll() is None

    def kill(self) -> None:
        """Stop the node at once, as a machine that loses power does: SIGKILL to every
        process of its group (raylet, workers, agents)."""
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)
        wait_until(
            lambda: _group_members(self.process.pid),
            lambda members: not members,
            timeout_s=STOP_TIMEOUT_S,
            failure=f"processes of node {self.name} outlived it",
        )


def _group_members(pgid: int) -> list[int]:
    """The live processes of a process group (zombies waiting to be reaped are gone)."""
    members = []
    for process in psutil.process_iter(["pid", "status"]):
        with suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
    return members


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError):  # the group has ended already
        os.killpg(pgid, signum)


@dataclass
class RayCluster:
    """A head node and worker nodes started from one environment."""

    folder: Path  # each node's log, kept after the test
    temp_root: Path  # each node's Ray folder: a short path, for Ray's socket names
    environment: dict[str, str]
    gcs_address: str
    dashboard_url: str
    nodes: list[RayNode] = field(default_factory=list)

    def add_node(
        self, name: str, *, num_cpus: float, resources: Mapping[str, float] | None = None
    ) -> RayNode:
        """Start a worker node joining the head, and wait until the cluster lists it."""
        node = _start(
            name,
            self.folder,
            self.temp_root,
            self.environment,
            [f"--address={self.gcs_address}", *_common_args(name, num_cpus, resources)],
        )
        self.nodes.append(node)
        self._wait_joined(node)
        return node

    def _wait_joined(self, node: RayNode) -> None:
        """Wait until a node of that name that was not there before is alive, and note its
        id (a restarted node of the same name gets a new one)."""
        known = {other.node_id for other in self.nodes}
        named = wait_until(
            lambda: [
                seen
                for seen in self.alive_nodes()
                if seen.get("labels", {}).get(NODE_LABEL) == node.name
                and seen["node_id"] not in known
            ],
            timeout_s=90,
            every_s=0.5,
            failure=f"node {node.name} did not join the cluster (see {node.log})",
        )
        node.node_id = str(named[0]["node_id"])

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The cluster's live nodes, as the dashboard's state API lists them."""
        return [node for node in self.state("nodes") if node["state"] == "ALIVE"]

    def state(self, resource: str) -> list[dict[str, Any]]:
        """`GET /api/v0/<resource>` of the dashboard (Ray's state API), every entry."""
        answer = requests.get(
            f"{self.dashboard_url}/api/v0/{resource}", params={"limit": 10000}, timeout=30
        )
        answer.raise_for_status()
        found: list[dict[str, Any]] = answer.json()["data"]["result"]["result"]
        return found


def _common_args(name: str, num_cpus: float, resources: Mapping[str, float] | None) -> list[str]:
    args = [
        "--node-ip-address=127.0.0.1",
        f"--labels={json.dumps({NODE_LABEL: name})}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        f"--object-store-memory={150 * 1024**2}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--disable-usage-stats",
    ]
    if resources:
        args.append(f"--resources={json.dumps(dict(resources))}")
    return args


def _start(
    name: str, folder: Path, temp_root: Path, environment: dict[str, str], args: list[str]
) -> RayNode:
    temp_dir = temp_root / name
    temp_dir.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [ray_program(), "start", "--block", f"--temp-dir={temp_dir}", *args],
            env=environment,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped alone
        )
    return RayNode(name=name, process=process, temp_dir=temp_dir, log=log)


@contextmanager
def ray_cluster(
    folder: Path,
    environment: Mapping[str, str],
    *,
    num_cpus: float = 2,
    resources: Mapping[str, float] | None = None,
) -> Iterator[RayCluster]:
    """A head node for the block, with `environment` added to every node's and custom
    `resources`; worker nodes join with `RayCluster.add_node`. Every node is stopped on
    the way out."""
    full = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RAY_") and key != "PYTEST_CURRENT_TEST"
    }
    # A loopback cluster of the test's own: no token for the dashboard and `serve deploy`.
    full["RAY_AUTH_MODE"] = "disabled"
    full.update(environment)
    # The checkout under test, not whatever copy of the project the virtualenv installed.
    full["PYTHONPATH"] = os.pathsep.join(
        path for path in (str(ROOT), full.get("PYTHONPATH", "")) if path
    )
    folder.mkdir(parents=True, exist_ok=True)
    gcs_port = free_port()
    dashboard_port = free_port()
    # Ray's socket paths must fit in 107 bytes: its folders go in a short one.
    with tempfile.TemporaryDirectory(prefix="ray-") as temp:
        cluster = RayCluster(
            folder=folder,
            temp_root=Path(temp),
            environment=full,
            gcs_address=f"127.0.0.1:{gcs_port}",
            dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        )
        try:
            head = _start(
                "head",
                folder,
                cluster.temp_root,
                full,
                [
                    "--head",
                    f"--port={gcs_port}",
                    "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard_port}",
                    f"--ray-client-server-port={free_port()}",
                    *_common_args("head", num_cpus, resources),
                ],
            )
            cluster.nodes.append(head)
            wait_until(
                lambda: _answers(cluster) or not head.alive(),
                timeout_s=90,
                every_s=0.5,
                failure=f"the head node did not start (see {head.log})",
            )
            assert head.alive(), f"the head node stopped (see {head.log})"
            cluster._wait_joined(head)
            yield cluster
        finally:
            # At once rather than gracefully: on SIGTERM a node drains for up to 30 s, and
            # nothing of this throwaway cluster needs saving.
            for node in reversed(cluster.nodes):
                node.kill()


def _answers(cluster: RayCluster) -> bool:
    try:
        return len(cluster.alive_nodes()) >= 1
    except requests.RequestException:
        return False
