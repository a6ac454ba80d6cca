"""The Dockerfile read as text, with no Docker daemon: every stage starts from Ray's
official GPU image for Python 3.11, the final image runs as a non-root user, installs the
project from its wheel (never editable) and the CUDA build of the torch `make test`
tests. test_manifests.py checks that its Ray is the RayService's and pyproject's.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
MAKEFILE = ROOT / "Makefile"
BASE_IMAGE = "rayproject/ray:${RAY_VERSION}-py${PYTHON_TAG}-gpu"
ROOT_USERS = {"root", "0"}


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments), continuation lines joined, comments out."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            found.append((instruction.upper(), arguments.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    every = instructions()
    (*_, last_from) = [
        index for index, (instruction, _) in enumerate(every) if instruction == "FROM"
    ]
    return every[last_from:]


def final(kind: str) -> list[str]:
    """The arguments of every `kind` instruction (RUN, USER...) of the final stage."""
    return [arguments for instruction, arguments in final_stage() if instruction == kind]


def build_arguments() -> dict[str, str]:
    """The default of every `ARG NAME=value`."""
    declared = [arguments for instruction, arguments in instructions() if instruction == "ARG"]
    return dict(each.split("=", 1) for each in declared if "=" in each)


def test_every_stage_starts_from_rays_gpu_image_for_python_3_11() -> None:
    bases = [
        arguments.split()[0] for instruction, arguments in instructions() if instruction == "FROM"
    ]
    assert bases and set(bases) == {BASE_IMAGE}
    assert build_arguments()["PYTHON_TAG"] == "311"  # `make test` runs on 3.11 (Makefile)


def test_the_image_runs_as_a_non_root_user() -> None:
    users = final("USER")
    assert users, "the final stage names no USER: it would run as the base image's"
    assert users[-1].split(":")[0] not in ROOT_USERS


def test_the_project_is_installed_from_its_wheel_never_editable() -> None:
    installs = [command for command in final("RUN") if "pip install" in command]
    assert any(re.search(r"stemsplit-\*\.whl", command) for command in installs)
    assert not any(re.search(r"(^|\s)(-e|--editable)(\s|$)", command) for command in installs)
    # The sources go into the wheel stage only: the final image holds no checkout.
    assert not any(copied.split()[0] in {".", "./"} for copied in final("COPY"))


def test_torch_is_the_cuda_build_of_the_version_make_test_runs() -> None:
    (torch,) = [command for command in final("RUN") if "torch==" in command]
    # The CPU builds come from PyTorch's /cpu index or carry a `+cpu` local version.
    assert "/cpu" not in torch and "+cpu" not in torch
    assert "--index-url" not in torch and "--extra-index-url" not in torch
    assert '"torch==${TORCH_VERSION}"' in torch
    version = build_arguments()["TORCH_VERSION"]
    (tested,) = re.findall(r"^TORCH_CPU \?= torch==(\S+)$", MAKEFILE.read_text(), flags=re.M)
    assert version == tested
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = [
        Requirement(each) for each in project["dependencies"] if Requirement(each).name == "torch"
    ]
    assert requirement.specifier.contains(version)
