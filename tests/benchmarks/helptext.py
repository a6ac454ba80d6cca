"""What a benchmark's `--help` prints, for the tests that check its options are named."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest


def help_text(
    main: Callable[[], object],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """Run `main` with `--help`; assert it exits 0 and return what it printed."""
    monkeypatch.setattr(sys, "argv", ["benchmark", "--help"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    return capsys.readouterr().out
