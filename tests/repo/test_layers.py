"""The packages form layers: `fleetcli` (the `fleet` command) imports `api` and `worker`, `api`
imports `worker`, and `worker` imports neither of the others; `api` never imports `fleetcli`.

Read from each module's syntax tree, so an import inside a function counts as much as one at the
top of the file.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.harness import ROOT

# package -> the top-level packages of this repository it must never import
FORBIDDEN = {"worker": {"api", "fleetcli"}, "api": {"fleetcli"}}


def imported_packages(source: str) -> set[str]:
    """The top-level package of every absolute import in `source` (relative imports stay inside
    their own package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


def forbidden_imports(package: str) -> list[str]:
    """`path: name` for every module under `package` that imports a package it must not."""
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        names = imported_packages(path.read_text()) & FORBIDDEN[package]
        bad += [f"{path.relative_to(ROOT)}: imports {name}" for name in sorted(names)]
    return bad


def test_the_import_reader_sees_every_kind_of_import() -> None:
    source = (
        "import api\nimport api.main as m\nfrom fleetcli.main import main\n"
        "def f():\n    from api import deps\n"
        "from . import keys\nfrom .api import x\nimport worker.keys\n"
    )
    assert imported_packages(source) == {"api", "fleetcli", "worker"}


def test_worker_imports_neither_api_nor_fleetcli() -> None:
    assert list((ROOT / "worker").rglob("*.py")), "the worker package was read"
    assert forbidden_imports("worker") == []


def test_api_does_not_import_fleetcli() -> None:
    assert forbidden_imports("api") == []


def test_python_dash_m_fleetcli_is_the_fleet_command() -> None:
    """`fleet up` starts its children with `python -m fleetcli`; the tests' harness falls back on it."""
    out = subprocess.run(
        [sys.executable, "-m", "fleetcli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: fleet ")
