"""The versions of Ray and uvicorn whose internals serve_app replaces, and the check.

serve_app/http/connguard.py subclasses uvicorn's HttpToolsProtocol and serve_app/http/bodyqueue.py
subclasses two classes of Ray Serve's private HTTP plumbing. Private code changes
without notice, so they are installed only on the versions they were read against;
any other version stops the process with a message saying what to re-check.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version

WRITTEN_FOR = {"ray": "2.60.", "uvicorn": "0.54."}


def installed_versions() -> dict[str, str]:
    """The installed versions of the packages named in WRITTEN_FOR."""
    return {name: version(name) for name in WRITTEN_FOR}


def check_versions(installed: Mapping[str, str]) -> None:
    """Raise unless every package is at the version its replacements were written for."""
    wrong = {
        name: installed[name]
        for name, prefix in WRITTEN_FOR.items()
        if not installed[name].startswith(prefix)
    }
    if wrong:
        found = ", ".join(f"{name} {release}" for name, release in wrong.items())
        expected = ", ".join(f"{name} {prefix}x" for name, prefix in WRITTEN_FOR.items())
        raise RuntimeError(
            f"serve_app replaces internals of {expected} but found {found}: check "
            "serve_app/http/connguard.py and serve_app/http/bodyqueue.py against the new code, "
            "then update WRITTEN_FOR in serve_app/http/internals.py"
        )
