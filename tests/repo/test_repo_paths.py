"""No tracked file names a path that only one machine has.

A test that ran a `fleet` from a virtual environment outside the repository passed on the machine
that had it and failed 28 times on a user's fresh clone. Tests, benchmarks, docs and `.ci/run`
name the repository's own `.venv` or the interpreter running them, never a folder in the system's
temporary directory, root's home or a user's home. Fixtures that create temporary folders at run
time are fine: they never write such a path into a tracked file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.harness import ROOT

# Joined at run time so that this file does not name the paths it looks for.
_TMP = "/" + "tmp"
_VAR_TMP = "/var" + _TMP
_HOME = "/" + "home"
_ROOT_HOME = "/" + "root"

# A path in a home folder (root's or a user's), a user's home written with `~`, or a virtual
# environment or an interpreter's install in a temporary folder.
_MACHINE_PATH = re.compile(
    rf"(?<![\w.:/-])(?:"
    rf"{_ROOT_HOME}/[\w.-]+"
    rf"|{_HOME}/[\w.-]+/[\w.-]+"
    rf"|~[\w-]*/\.(?:venv|virtualenvs|pyenv|local)\b"
    rf"|(?:{_VAR_TMP}|{_TMP})/[\w./-]*?(?:venv|virtualenv|site-packages|/bin/(?:python[\d.]*|pip\d?|fleet|celery))\b"
    rf")"
)


def machine_paths(text: str) -> list[str]:
    """The paths in `text` that belong to one machine rather than to the repository."""
    return [m.group(0) for m in _MACHINE_PATH.finditer(text)]


def tracked_files() -> list[Path]:
    """The repository's tracked files (every file but `.venv` and caches when git is missing)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
        return [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def test_the_pattern_finds_paths_of_one_machine() -> None:
    found = [
        f"{_TMP}/venv/bin/fleet",
        f"{_TMP}/venv/bin/python bench/bench_core.py",
        f"{_TMP}/build-3/.venv/bin/pip install",
        f"{_VAR_TMP}/env/lib/python3.11/site-packages/celery",
        f"{_ROOT_HOME}/.pyenv/versions/3.11.7/bin/python3",
        f"{_HOME}/someone/agentfleet/.venv/bin/fleet",
        "~" + "/.venv/bin/fleet",
    ]
    for text in found:
        assert machine_paths(f'FLEET = "{text}"'), text


def test_the_pattern_leaves_the_repositorys_own_paths_alone() -> None:
    fine = [
        ".venv/bin/python bench/bench_core.py",
        "FLEET_HEARTBEAT_FILE=" + _TMP + "/fleet-worker.heartbeat",
        "mysql://root:p@ssw0rd@10.0.0.5/db",
        "tempfile.mkdtemp(prefix='fleet-redis-')",
        "https://example.com" + _HOME + "/index.html",
        "/run/secrets/openai_api_key",
    ]
    for text in fine:
        assert machine_paths(text) == [], text


def test_no_tracked_file_names_a_path_of_one_machine() -> None:
    files = tracked_files()
    assert any(p.name == "README.md" for p in files) and any(p.suffix == ".py" for p in files)
    offenders: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            offenders += [f"{path.relative_to(ROOT)}:{lineno}: {hit}" for hit in machine_paths(line)]
    assert offenders == [], "tracked files name paths outside the repository:\n" + "\n".join(offenders)
