"""The project as a wheel: built from a copy of its sources, installed into a fresh venv
outside the repository, and run from a folder outside it, so that whatever the package
needs at runtime (the default routing, models/stems/models.yaml; the task database's
migrations) ships inside it. Its metadata: the Python classifiers say what requires-python
allows, and lint and type checks target the oldest of those Pythons.

Offline: the wheel is built without build isolation and installed without its
dependencies, which the fresh venv borrows from this one through a .pth file.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from packaging.specifiers import SpecifierSet

from models.audio.encode import StemEncoder
from serve_app.store.migrate import head

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "models", "serve_app")
PYTHON_CLASSIFIER = "Programming Language :: Python :: "


def run(*command: str | Path, cwd: Path) -> str:
    """Run a command with no trace of this checkout on its path; its stdout."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def installed_venv(root: Path) -> Path:
    """A fresh venv under `root` holding the project's wheel; its python."""
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    pip = (sys.executable, "-m", "pip")
    build = ("wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", root / "dist")
    run(*pip, *build, source, cwd=root)
    (wheel,) = (root / "dist").glob("stemsplit-*.whl")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    python = venv / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = Path(run(python, "-c", where, cwd=root).strip())
    # The dependencies (torch, demucs, ...) of this venv, after the fresh one's own
    # packages; the editable install here is a .pth file, which this does not read.
    borrowed = [*site.getsitepackages(), sysconfig.get_path("purelib")]
    (purelib / "borrowed-dependencies.pth").write_text("\n".join(dict.fromkeys(borrowed)))
    run(*pip, "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel, cwd=root)
    return python


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding the project's wheel, built once per module."""
    return installed_venv(tmp_path_factory.mktemp("wheel"))


@pytest.mark.slow
def test_installed_wheel_separates_with_its_packaged_routing(
    wheel_python: Path, tmp_path: Path
) -> None:
    python = wheel_python
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = "from models.stems.routing import DEFAULT_ROUTING_PATH; print(DEFAULT_ROUTING_PATH)"
    location = run(python, "-c", where, cwd=elsewhere)
    assert Path(location.strip()).is_relative_to(python.parents[1])
    song = elsewhere / "song.flac"
    samples = np.random.default_rng(0).normal(0, 0.1, size=(2, 44100)).astype(np.float32)
    with StemEncoder(song, "flac", sample_rate=44100, channels=2, layout="stereo") as encoder:
        encoder.write(samples)
    run(python, "-m", "models", "make-test-model", "weights", "--small", cwd=elsewhere)
    separate = ("separate", "song.flac", "--stems", "vocals,drums", "--out", "stems")
    printed = run(
        python, "-m", "models", *separate, "--model-dir", "weights", "--no-hub", cwd=elsewhere
    )
    assert sorted(path.name for path in (elsewhere / "stems").iterdir()) == [
        "drums.wav",
        "vocals.wav",
    ]
    assert printed.split() == ["stems/vocals.wav", "stems/drums.wav"]


@pytest.mark.slow
def test_installed_wheel_migrates_a_database_with_its_packaged_revisions(
    wheel_python: Path, tmp_path: Path
) -> None:
    printed = run(wheel_python, "-m", "serve_app", "migrate", cwd=tmp_path)
    assert printed.strip() == f"task database: no revision -> {head()}"
    assert (tmp_path / "data" / "tasks.db").is_file()
    where = "import serve_app.store.migrate as m; print(m.MIGRATIONS)"
    location = run(wheel_python, "-c", where, cwd=tmp_path)
    assert Path(location.strip()).is_relative_to(wheel_python.parents[1])


def pyproject() -> dict[str, Any]:
    document: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
    return document


def supported_pythons() -> list[str]:
    """Every Python 3 minor release requires-python allows, oldest first (it has an upper
    bound: a release the project has never run on is not claimed)."""
    allowed = SpecifierSet(pyproject()["project"]["requires-python"])
    return [f"3.{minor}" for minor in range(100) if allowed.contains(f"3.{minor}")]


def test_python_classifiers_are_the_pythons_requires_python_allows() -> None:
    classifiers = pyproject()["project"]["classifiers"]
    versions = [
        each.removeprefix(PYTHON_CLASSIFIER)
        for each in classifiers
        if each.startswith(PYTHON_CLASSIFIER + "3.")
    ]
    assert versions == supported_pythons()
    assert PYTHON_CLASSIFIER + "3 :: Only" in classifiers
    (tested,) = re.findall(r"^PYTHON \?= python(\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert tested in versions  # `make test`'s own Python


def test_lint_and_type_checks_target_the_oldest_supported_python() -> None:
    """Syntax or a standard-library name newer than the oldest Python would pass the checks
    run on a newer one and break there."""
    oldest = supported_pythons()[0]
    tools = pyproject()["tool"]
    assert tools["ruff"]["target-version"] == "py" + oldest.replace(".", "")
    assert tools["mypy"]["python_version"] == oldest
