"""serve_app/http/proxyguard.py: its settings and version check, and the guard at work inside
the session's real Serve proxy (conftest.PROXY: a 5 s header timeout, the default
bounds), against slow clients on raw sockets."""

from __future__ import annotations

import resource
import socket
import time
from contextlib import ExitStack

import pydantic
import pytest
import requests

from serve_app.http.internals import WRITTEN_FOR, check_versions, installed_versions
from serve_app.http.proxyguard import CALLBACK, CALLBACK_VARIABLE, ProxySettings
from tests.serve_app.conftest import KEY_A, PROXY, Service
from tests.serve_app.rawhttp import (
    ENDLESS_HEADERS,
    connect,
    read_until_closed,
    readable,
    status_of,
    trickle_until_closed,
)

# Slack for a loaded machine: how much later than its limit a timer may fire.
LATE_S = 5.0
SLOW_CLIENTS = 500
SLOW_SOURCES = [f"127.0.1.{n}" for n in range(1, 11)]  # 50 each: under the per-client bound


def port_of(service: Service) -> int:
    return int(service.url.rsplit(":", 1)[1])


def test_settings_come_from_stemsplit_proxy_variables() -> None:
    settings = ProxySettings.from_environ(
        {"STEMSPLIT_PROXY_HEADER_TIMEOUT_S": "3", "STEMSPLIT_PROXY_MAX_CONNECTIONS": "9"}
    )
    assert (settings.header_timeout_s, settings.max_connections) == (3.0, 9)
    assert settings.max_connections_per_client == 64  # the default
    environ = settings.environ()
    assert environ[CALLBACK_VARIABLE] == CALLBACK
    assert ProxySettings.from_environ(environ) == settings
    for wrong in (
        {"STEMSPLIT_PROXY_HEADER_TIMEOUT": "3"},
        {"STEMSPLIT_PROXY_HEADER_TIMEOUT_S": "0"},
    ):
        with pytest.raises(pydantic.ValidationError):
            ProxySettings.from_environ(wrong)


def test_other_versions_of_ray_or_uvicorn_are_refused() -> None:
    check_versions(installed_versions())
    with pytest.raises(RuntimeError, match=r"found ray 2\.61\.0: check serve_app/http/connguard"):
        check_versions({**installed_versions(), "ray": "2.61.0"})
    with pytest.raises(RuntimeError, match=r"found uvicorn 0\.55\.1"):
        check_versions({**installed_versions(), "uvicorn": "0.55.1"})
    assert set(WRITTEN_FOR) == {"ray", "uvicorn"}


def test_the_proxy_closes_a_slow_header_connection_with_408(service: Service) -> None:
    with connect(port_of(service)) as slow:
        took, answer = trickle_until_closed(slow, ENDLESS_HEADERS, 0.5, timeout_s=60)
    assert status_of(answer) == 408
    assert PROXY.header_timeout_s - 0.5 <= took < PROXY.header_timeout_s + LATE_S, took


def test_500_slow_header_connections_do_not_stop_a_normal_request(service: Service) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SLOW_CLIENTS + 512:  # 500 sockets beside what pytest and Ray hold
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, SLOW_CLIENTS + 1024), hard))
    with ExitStack() as held:
        opened = time.monotonic()
        slow: list[socket.socket] = []
        for n in range(SLOW_CLIENTS):
            sock = held.enter_context(connect(port_of(service), SLOW_SOURCES[n % 10]))
            sock.sendall(ENDLESS_HEADERS[:20])
            slow.append(sock)
        answer = requests.get(service.api("stems"), headers={"Authorization": KEY_A}, timeout=30)
        answered = time.monotonic()
        assert answer.status_code == 200
        # The request was answered while every slow connection was held open.
        assert answered - opened < PROXY.header_timeout_s, answered - opened
        assert not any(readable(sock, 0) for sock in slow)
        deadline = opened + PROXY.header_timeout_s + LATE_S
        statuses = {
            status_of(read_until_closed(sock, deadline - time.monotonic())) for sock in slow
        }
        assert statuses == {408}


def test_the_proxy_bounds_connections_per_client(service: Service) -> None:
    bound = PROXY.max_connections_per_client
    with ExitStack() as held:
        for _ in range(bound):
            held.enter_context(connect(port_of(service), "127.0.2.1"))
        with connect(port_of(service), "127.0.2.1") as over:
            answer = read_until_closed(over, timeout_s=LATE_S)
        assert status_of(answer) == 503
        assert f"more than {bound} open connections".encode() in answer
        other = requests.get(service.api("stems"), headers={"Authorization": KEY_A}, timeout=30)
        assert other.status_code == 200
