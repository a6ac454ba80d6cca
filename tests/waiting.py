"""Waiting in tests for a condition that another thread or process brings about: one
polling loop with a deadline, used wherever a test has nothing to block on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    look: Callable[[], T],
    done: Callable[[T], bool] = bool,
    *,
    timeout_s: float = 60.0,
    every_s: float = 0.1,
    failure: str = "the condition did not hold",
) -> T:
    """Call `look()` every `every_s` until `done` holds for what it returns, and return that;
    fail the test with `failure` and the last look after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()  # never set: only a polling interval
    while True:
        seen = look()
        if done(seen):
            return seen
        assert time.monotonic() < deadline, f"{failure} in {timeout_s} s; last seen: {seen!r}"
        pause.wait(every_s)
