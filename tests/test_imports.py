"""The import rules of ARCHITECTURE.md, read from the source: which package may import which.

The rules are checked on the static import graph (every `import` and `from ... import` in a
module, also those inside functions, except under `if TYPE_CHECKING:`), and, for the one rule
that matters at run time (the HTTP layer loads no torch), by importing the modules in a
fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "serve_app")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the two packages, by dotted name."""
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, package: str) -> Iterator[str]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking(child):
            continue
        if isinstance(child, ast.Import):
            yield from (alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            # `from package import module` imports the module.
            yield from (f"{base}.{alias.name}" for alias in child.names)
        else:
            yield from _imports(child, package)


@cache
def imports_of(name: str) -> frozenset[str]:
    """What `name` imports: project modules by full name, others by their top-level name."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for imported in _imports(ast.parse(path.read_text()), package):
        top = imported.split(".")[0]
        if top not in PACKAGES:
            found.add(top)
        elif imported in modules():
            found.add(imported)
    return frozenset(found)


def loaded_with(name: str) -> set[str]:
    """Every module importing `name` loads: its parent packages and, in turn, their imports."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        parents = [".".join(parts[:i]) for i in range(1, len(parts))]
        todo.extend(parent for parent in parents if parent in modules())
        if current in modules():
            todo.extend(imports_of(current))
    return seen


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_graph_is_read() -> None:
    # A guard against a rule passing because the walk found nothing.
    assert "serve_app.app" in modules()
    assert "torch" in loaded_with("serve_app.app")
    assert "ray" in imports_of("serve_app.app")


def test_models_never_import_serve_app_or_ray() -> None:
    offenders = {
        name: sorted(
            imported
            for imported in imports_of(name)
            if imported.split(".")[0] in {"serve_app", "ray"}
        )
        for name in modules()
        if under(name, "models")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def family_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["models", "families"] else None


def test_families_never_import_each_other() -> None:
    offenders = {}
    for name in modules():
        family = family_of(name)
        if family is None:
            continue
        others = sorted(
            imported for imported in imports_of(name) if family_of(imported) not in {None, family}
        )
        if others:
            offenders[name] = others
    assert offenders == {}


def test_only_the_demucs_family_imports_demucs() -> None:
    importers = sorted(name for name in modules() if "demucs" in imports_of(name))
    assert importers
    assert [name for name in importers if not under(name, "models.families.demucs")] == []


def http_modules() -> list[str]:
    return [name for name in modules() if under(name, "serve_app.http")]


def test_http_never_imports_torch_even_through_models() -> None:
    offenders = {name: sorted(loaded_with(name) & {"torch", "demucs"}) for name in http_modules()}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_http_loads_without_torch_at_run_time() -> None:
    script = (
        "import importlib, sys\n"
        f"for name in {http_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('torch', 'demucs') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_only_deployments_and_the_app_import_deployments() -> None:
    offenders = {
        name: sorted(
            imported for imported in imports_of(name) if under(imported, "serve_app.deployments")
        )
        for name in modules()
        if not (under(name, "serve_app.deployments") or name == "serve_app.app")
    }
    assert {name: found for name, found in offenders.items() if found} == {}
