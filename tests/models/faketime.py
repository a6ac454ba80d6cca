"""A time source for StageClock tests that moves only when a test moves it."""

from __future__ import annotations


class FakeTime:
    """Seconds that advance only through `advance`, the same in every thread."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the time on by `seconds`."""
        self.now += seconds
