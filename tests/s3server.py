"""A local S3 for the tests: moto's server on loopback, in a child process so
that its copies of objects never count against the memory of the process under test. Run
as a module it serves until its standard input closes, after printing its port."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer

HOST = "127.0.0.1"

# Credentials moto accepts, and no AWS profile or config file of the machine's user.
FAKE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


@contextmanager
def local_s3() -> Iterator[str]:
    """The endpoint URL of a moto S3 server that runs for the block."""
    child = subprocess.Popen(
        [sys.executable, "-m", __name__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        port = child.stdout.readline().strip()  # the server listens once this arrives
        if not port.isdigit():
            raise RuntimeError(f"the moto server did not start (it said {port!r})")
        yield f"http://{HOST}:{port}"
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def serve() -> None:
    """Serve on a free loopback port, print it, and stop when standard input closes."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    serve()
