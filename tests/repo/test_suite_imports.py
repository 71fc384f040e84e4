"""No test module imports another test module.

Test modules share code through tests/conftest.py (fixtures) and helper modules beside them
(tests/harness.py, tests/unit_parts.py, tests/ops/helpers.py, ...). A test module that imports
another one runs that module's import-time code, ties the two together so neither can be moved
or split alone, and, with a `from` import of a fixture, registers the fixture twice. Benchmarks
(bench/) follow the same rule: they use the helper modules, never a test module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.harness import ROOT


def _is_test_module(dotted: str) -> bool:
    return dotted.rpartition(".")[2].startswith("test_")


def imported_test_modules(source: str, package: str) -> list[str]:
    """The test modules (a last dotted name `test_*`) that `source`, a module of the dotted
    `package`, imports: `import tests.test_x`, `from tests.test_x import y`, `from tests import
    test_x`, and the relative forms, at any depth (inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _is_test_module(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".") if package else []
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if node.module and _is_test_module(module):
                found.append(module)
            else:
                found += [f"{module}.{a.name}" for a in node.names if a.name.startswith("test_")]
    return found


def checked_files() -> list[Path]:
    """Every test module under tests/ and every module under bench/."""
    return sorted([*(ROOT / "tests").rglob("test_*.py"), *(ROOT / "bench").rglob("*.py")])


def test_the_check_finds_every_form_of_a_test_module_import() -> None:
    imports = [
        "from tests.test_api import assert_error",
        "import tests.test_api",
        "from tests import test_api",
        "from .test_api import assert_error",
        "from . import test_api",
        "from ..test_api import assert_error",
        "def helper():\n    from tests.ops.test_compose import x\n",
    ]
    for source in imports:
        assert imported_test_modules(source, "tests.ops"), source
    assert imported_test_modules("from .test_api import x", "tests") == ["tests.test_api"]
    assert imported_test_modules("from ..test_api import x", "tests.ops") == ["tests.test_api"]


def test_the_check_leaves_helper_modules_alone() -> None:
    fine = [
        "from tests.harness import Fleet",
        "from tests.ops.helpers import load_compose",
        "from . import helpers",
        "import pytest",
        "from tests.unit_parts import KEYS",
        "from worker.run.store import RunStore",
    ]
    for source in fine:
        assert imported_test_modules(source, "tests.ops") == [], source


def test_no_test_module_or_benchmark_imports_a_test_module() -> None:
    files = checked_files()
    assert any(p.parent.name == "ops" for p in files) and any(p.parent.name == "bench" for p in files)
    offenders = []
    for path in files:
        package = ".".join(path.parent.relative_to(ROOT).parts)
        for module in imported_test_modules(path.read_text(), package):
            offenders.append(f"{path.relative_to(ROOT)}: imports {module}")
    assert offenders == [], "move what they share into conftest.py or a helper module:\n" + "\n".join(
        offenders
    )
