"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, a fresh
cluster in a temporary folder, listening on loopback only, run for a test session.

initdb refuses to run as root, so as root the server runs as the `postgres` user that the
Debian package creates. The cluster trades durability for speed (no fsync): it is thrown
away when the session ends. Each test gets a database of its own from `new_database`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

HOST = "127.0.0.1"
SUPERUSER = "postgres"
START_TIMEOUT_S = 30.0
SERVER_USER = "postgres"
"""The system user that runs the server when the tests run as root."""


class PostgresMissingError(RuntimeError):
    """The PostgreSQL server binaries are not installed (`make test` installs them)."""


class PostgresServer:
    """A running server: its port, its folder and how to run its programs; `stop` and
    `start` take it down and bring it back on the same port with the same data."""

    def __init__(self, port: int, folder: Path, bin_dir: Path, as_root: bool) -> None:
        self.port = port
        self.folder = folder
        self.bin_dir = bin_dir
        self._as_root = as_root
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self._process is not None:
            raise RuntimeError("the server is already running")
        log = self.folder / "server.log"
        self._process = _start(
            self.bin_dir, self.folder / "data", self.folder, self.port, log, self._as_root
        )
        _wait_ready(self.bin_dir, self.port, self._process, log)

    def stop(self) -> None:
        """Stop the server at once, dropping every connection: `pg_ctl stop -m fast`, which
        returns once the server is down (as root the server is runuser's child, which a
        signal to runuser would not reach)."""
        process, self._process = self._process, None
        if process is None:
            return
        pg_ctl = [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.folder / "data")]
        stopped = subprocess.run(
            _as_server_user([*pg_ctl, "-m", "fast", "-t", "30"], self._as_root),
            capture_output=True,
            check=False,
        )
        try:
            process.wait(timeout=15 if stopped.returncode == 0 else 1)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL (psycopg 3) of `database` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        name = "test_" + uuid.uuid4().hex[:16]
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, statement: str, database: str = "postgres") -> str:
        """Run one SQL statement as the superuser and return what psql printed."""
        done = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                HOST,
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed on {statement!r}: {done.stderr.strip()}")
        return done.stdout.strip()


def postgres_bin_dir() -> Path:
    """The folder of initdb and postgres: STEMSPLIT_PG_BIN, pg_config's answer, or the
    newest Debian version under /usr/lib/postgresql."""
    chosen = os.environ.get("STEMSPLIT_PG_BIN")
    candidates = [Path(chosen)] if chosen else []
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if found.returncode == 0:
            candidates.append(Path(found.stdout.strip()))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted(
            (p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        candidates += [version / "bin" for version in reversed(versions)]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise PostgresMissingError(
        "PostgreSQL's server programs (initdb, postgres) were not found: install Debian's "
        "`postgresql` package (`make test` does) or set STEMSPLIT_PG_BIN"
    )


@contextmanager
def local_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server on a free loopback port that runs for the block."""
    bin_dir = postgres_bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="stemsplit-pg-"))
    data = folder / "data"
    as_root = os.geteuid() == 0
    if as_root:
        shutil.chown(folder, user=SERVER_USER)
    _run_as_server_user(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ],
        as_root,
    )
    server = PostgresServer(_free_port(), folder, bin_dir, as_root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _start(
    bin_dir: Path, data: Path, folder: Path, port: int, log: Path, as_root: bool
) -> subprocess.Popen[bytes]:
    command = [
        str(bin_dir / "postgres"),
        "-D",
        str(data),
        "-h",
        HOST,
        "-p",
        str(port),
        "-k",
        str(folder),
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=200",
    ]
    with log.open("ab") as sink:
        return subprocess.Popen(
            _as_server_user(command, as_root), stdout=sink, stderr=subprocess.STDOUT
        )


def _wait_ready(bin_dir: Path, port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited at start:\n{log.read_text()[-2000:]}")
        ready = subprocess.run(
            [str(bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(port), "-t", "1"],
            check=False,
        )
        if ready.returncode == 0:
            return
        time.sleep(0.05)  # polling a starting server: nothing to wait on but its socket
    raise RuntimeError(f"PostgreSQL did not start in {START_TIMEOUT_S:.0f} s")


def _run_as_server_user(command: list[str], as_root: bool) -> None:
    done = subprocess.run(
        _as_server_user(command, as_root), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {done.stderr.strip() or done.stdout.strip()}")


def _as_server_user(command: list[str], as_root: bool) -> list[str]:
    if not as_root:
        return command
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running the tests as root needs `runuser` to start PostgreSQL")
    return [runuser, "-u", SERVER_USER, "--", *command]


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])
