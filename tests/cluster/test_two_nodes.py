"""The application across two Ray nodes on this machine: configs/cluster.yaml, deployed with
`serve deploy` and CPU overrides, runs its Separator on the second node (pinned there by a
custom resource), keeps tasks in PostgreSQL and blobs in S3 (moto), and serves MusicGPT's
sample request over HTTP. Then the second node dies mid-task: once a new one joins, the
task still ends (COMPLETED, or FAILED with a reason) and nothing is lost.

The cluster is the test's own (`ray start` processes, tests/cluster/raycluster.py), apart from
the Ray instance the rest of the suite runs in the pytest process."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import s3fs
import yaml

from serve_app.store.schema import task_table
from serve_app.store.tasks import TaskStore
from tests.cluster.raycluster import RayCluster, RayNode, ray_cluster, ray_program
from tests.pgserver import PostgresServer
from tests.s3server import FAKE_AWS_ENVIRONMENT
from tests.serve_app.service import (
    KEY_A,
    SECRET,
    free_port,
    poll,
    post_musicgpt_sample,
    samples_of,
    write_song,
)
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_CONFIG = ROOT / "configs" / "cluster.yaml"
APP = "stemsplit"
SEPARATOR = "Separator_htdemucs_6s"
SEPARATOR_RESOURCE = "separator_node"
# The head's own: every other deployment asks for a sliver of it, since Serve spreads
# replicas over the nodes and would otherwise fill the Separator's node.
HEAD_RESOURCE = "head_node"
LEASE_S = 6.0  # a task whose replica is gone is taken again this soon
DEPLOY_TIMEOUT_S = 240.0

pytestmark = pytest.mark.slow


def migrate_as_the_job_does(config_path: Path, environment: dict[str, str]) -> None:
    """`python -m serve_app migrate CONFIG`, the command of k8s/migrate-job.yaml, with the
    database URL in the variable the config names."""
    migrated = subprocess.run(
        [sys.executable, "-m", "serve_app", "migrate", str(config_path)],
        env={**os.environ, **environment, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr


@dataclass
class TwoNodeApp:
    """The application running on the two-node cluster."""

    cluster: RayCluster
    separator_node: RayNode
    url: str
    data_dir: Path
    database_url: str
    bucket: str
    s3: s3fs.S3FileSystem

    def api(self, path: str) -> str:
        """The full URL of an API path."""
        return f"{self.url}/api/public/v1/{path.lstrip('/')}"


def cpu_overrides(
    config: dict[str, Any],
    *,
    port: int,
    data_dir: Path,
    blob_url: str,
    s3_endpoint: str,
    model_dir: Path,
) -> dict[str, Any]:
    """configs/cluster.yaml as this machine can run it: the CPU, loopback addresses, one
    HTTP proxy, the test's stores and models, short leases, and the Separator pinned to the
    second node.
    Everything else stays as the file has it."""
    config = copy.deepcopy(config)
    config["http_options"]["port"] = port
    # Both nodes share this machine's address, so a proxy on every node would share the
    # port (SO_REUSEPORT) and the kernel would hand connections to the Separator node's
    # proxy, which dies with it. In a cluster each node has its own address and the load
    # balancer drops a dead one.
    config["proxy_location"] = "HeadOnly"
    (app,) = config["applications"]
    args = app["args"]
    args.update(
        data_dir=str(data_dir),
        blob_url=blob_url,
        s3={"endpoint_url": s3_endpoint},
        public_url=f"http://127.0.0.1:{port}",
        model_dir=str(model_dir),
        use_hub=False,
    )
    args["outbound"]["allow_private"] = True  # audio and webhooks on loopback
    args["engine"]["device"] = "cpu"
    args["pipeline"].update(lease_s=LEASE_S, poll_s=0.5)
    separators = args["separators"]
    separators["ray_actor_options"].update(num_gpus=0, resources={SEPARATOR_RESOURCE: 1})
    separators["autoscaling_config"]["min_replicas"] = 1
    deployments = {deployment["name"]: deployment for deployment in app["deployments"]}
    # The head node has 2 CPUs for Ingress, Pipeline, Housekeeping and the Preprocessor.
    deployments["Ingress"]["ray_actor_options"]["num_cpus"] = 0.25
    deployments["Pipeline"]["ray_actor_options"]["num_cpus"] = 0.5
    deployments["Preprocessor"]["ray_actor_options"].update(num_cpus=0.25, num_gpus=0)
    for name in ("Ingress", "Pipeline", "Housekeeping", "Preprocessor"):
        deployments[name]["ray_actor_options"]["resources"] = {HEAD_RESOURCE: 0.01}
    return config


@pytest.fixture(scope="module")
def app(
    postgres: PostgresServer,
    model_dir: Path,
    s3_endpoint: str,
    s3_admin: s3fs.S3FileSystem,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TwoNodeApp]:
    """configs/cluster.yaml deployed on a head node and a Separator node."""
    folder = tmp_path_factory.mktemp("twonode")
    database_url = postgres.new_database()
    bucket = f"blobs-{uuid.uuid4().hex[:16]}"
    s3_admin.call_s3("create_bucket", Bucket=bucket)
    environment = {
        **FAKE_AWS_ENVIRONMENT,
        "STEMSPLIT_DATABASE_URL": database_url,
        "STEMSPLIT_API_KEYS": f"tester:{KEY_A}",
        "STEMSPLIT_WEBHOOK_SECRET": SECRET,
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_app.http.proxyguard:install",
    }
    with ray_cluster(folder / "ray", environment, resources={HEAD_RESOURCE: 1}) as cluster:
        separator_node = cluster.add_node(
            "separator", num_cpus=2, resources={SEPARATOR_RESOURCE: 1}
        )
        port = free_port()
        data_dir = folder / "data"
        config = cpu_overrides(
            yaml.safe_load(CLUSTER_CONFIG.read_text()),
            port=port,
            data_dir=data_dir,
            blob_url=f"s3://{bucket}/blobs",
            s3_endpoint=s3_endpoint,
            model_dir=model_dir,
        )
        (folder / "serve.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        migrate_as_the_job_does(folder / "serve.yaml", environment)
        serve_deploy(cluster, config, folder / "serve.yaml")
        yield TwoNodeApp(
            cluster=cluster,
            separator_node=separator_node,
            url=f"http://127.0.0.1:{port}",
            data_dir=data_dir,
            database_url=database_url,
            bucket=bucket,
            s3=s3_admin,
        )


def serve_deploy(cluster: RayCluster, config: dict[str, Any], path: Path) -> None:
    """`serve deploy` the config through the head's dashboard, and wait until it runs."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    serve = str(Path(ray_program()).parent / "serve")
    deployed = subprocess.run(
        [serve, "deploy", str(path), "--address", cluster.dashboard_url],
        env=cluster.environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    wait_until(
        lambda: app_status(cluster),
        lambda status: status in ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY"),
        timeout_s=DEPLOY_TIMEOUT_S,
        every_s=1.0,
        failure="the application did not start",
    )
    assert app_status(cluster) == "RUNNING", serve_details(cluster)


def serve_details(cluster: RayCluster) -> dict[str, Any]:
    """Serve's view of its applications (`GET /api/serve/applications/`)."""
    answer = requests.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=30)
    answer.raise_for_status()
    details: dict[str, Any] = answer.json()
    return details


def app_status(cluster: RayCluster) -> str:
    """The application's status, or NOT_STARTED while Serve has none."""
    application = serve_details(cluster).get("applications", {}).get(APP)
    return str(application["status"]) if application else "NOT_STARTED"


def replica_nodes(cluster: RayCluster, name: str) -> list[str]:
    """The node ids of a deployment's running replicas."""
    deployment = serve_details(cluster)["applications"][APP]["deployments"][name]
    return [
        str(replica["node_id"])
        for replica in deployment["replicas"]
        if replica["state"] == "RUNNING"
    ]


def submit_sample(app: TwoNodeApp, song: Path) -> str:
    """MusicGPT's sample request with an uploaded file; the task's id."""
    answer = post_musicgpt_sample(app.api("Extraction"), song)
    assert answer.status_code == 200, answer.text
    task_id: str = answer.json()["task_id"]
    return task_id


def assert_stems_download(app: TwoNodeApp, conversion: dict[str, Any], song: Path) -> None:
    """Every stem of a COMPLETED task downloads as audio as long as the song."""
    assert conversion["status"] == "COMPLETED", conversion
    assert set(conversion["stems"]) == {"vocals", "instrumental", "drums"}
    mixture = samples_of(song.read_bytes())
    for stem, url in conversion["stems"].items():
        answer = requests.get(url, headers={"Authorization": KEY_A}, timeout=60)
        assert answer.status_code == 200, (stem, answer.text)
        assert samples_of(answer.content).shape == mixture.shape, stem


def test_sample_request_separates_on_the_second_node(app: TwoNodeApp, tmp_path: Path) -> None:
    song = tmp_path / "song.wav"
    write_song(song, 4.0, seed=1)
    task_id = submit_sample(app, song)
    conversion = poll(app.api("byId"), task_id, timeout_s=180)
    assert_stems_download(app, conversion, song)
    """The sample request completes with its Separator on the second node, its stems in
    S3 and its task in PostgreSQL; the data folder holds neither."""
    assert replica_nodes(app.cluster, SEPARATOR) == [app.separator_node.node_id]
    stored = set(app.s3.find(f"{app.bucket}/blobs"))
    stems = {f"{app.bucket}/blobs/stems/{task_id}/{stem}.wav" for stem in conversion["stems"]}
    assert stems <= stored, stored
    assert any(key.startswith(f"{app.bucket}/blobs/inputs/") for key in stored), stored
    assert not (app.data_dir / "blobs").exists()
    assert not (app.data_dir / "tasks.db").exists()


def test_a_task_survives_the_loss_of_the_separator_node(app: TwoNodeApp, tmp_path: Path) -> None:
    """The Separator's node dies while a task is separated; a new node joins and the
    Separator comes back there. The task ends (COMPLETED with its stems, or FAILED with a
    reason), a task sent meanwhile completes, and no task is left unfinished."""
    cluster = app.cluster
    song = tmp_path / "long.wav"
    write_song(song, 90.0, seed=2)
    task_id = submit_sample(app, song)
    poll(
        app.api("byId"),
        task_id,
        until=lambda seen: seen["status"] == "PROCESSING" and seen["progress"] > 0,
        timeout_s=120,
    )
    app.separator_node.kill()
    killed_at = poll(app.api("byId"), task_id, until=lambda seen: True)
    assert killed_at["status"] == "PROCESSING", killed_at  # the node died mid-task
    other = tmp_path / "other.wav"
    write_song(other, 3.0, seed=3)
    other_id = submit_sample(app, other)
    replacement = cluster.add_node("separator-again", num_cpus=2, resources={SEPARATOR_RESOURCE: 1})
    final = poll(app.api("byId"), task_id, timeout_s=180)
    if final["status"] == "COMPLETED":
        assert_stems_download(app, final, song)
    else:
        assert final["status"] == "FAILED" and final["status_msg"], final
    assert_stems_download(app, poll(app.api("byId"), other_id, timeout_s=120), other)
    assert replica_nodes(cluster, SEPARATOR) == [replacement.node_id]
    assert_nothing_stuck(app.database_url)
    # Its Pipeline replica, on the head, held the task throughout: no lease ran out.
    assert claims_of(app.database_url, task_id) == 1


def assert_nothing_stuck(database_url: str) -> None:
    """Every task of the database is final and holds no lease: none was lost or left
    PROCESSING by a replica that is gone."""
    store = TaskStore(database_url)
    try:
        with store.engine.connect() as connection:
            rows = connection.execute(
                task_table.select().with_only_columns(
                    task_table.c.task_id, task_table.c.status, task_table.c.lease_until
                )
            ).all()
    finally:
        store.close()
    assert rows, "the database holds no task"
    stuck = [row for row in rows if row.status not in ("COMPLETED", "FAILED") or row.lease_until]
    assert not stuck, stuck


def claims_of(database_url: str, task_id: str) -> int:
    """How many times a Pipeline replica claimed the task."""
    store = TaskStore(database_url)
    try:
        record = store.tasks.get(task_id)
    finally:
        store.close()
    assert record is not None, task_id
    return record.claims
