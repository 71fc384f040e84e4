"""The Lua files beside the worker's modules: each is loaded, includes resolve or fail at import,
and the shared clock (worker/now.lua) writes the times the scripts wrote before it."""

from __future__ import annotations

import importlib
import math
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import api
import worker
from worker import lua
from worker.obs import histograms


def _import_worker() -> None:
    """Import every module of the worker package (the history's Alembic migrations are scripts
    Alembic runs, not modules)."""
    for info in pkgutil.walk_packages(worker.__path__, "worker."):
        if not info.name.startswith("worker.history.migrations"):
            importlib.import_module(info.name)


def _lua_files() -> dict[str, Path]:
    """Every .lua file of the fleet's packages (worker/ and api/), by its load path."""
    found = {}
    for package in (worker, api):
        root = Path(package.__file__).parent
        for path in root.rglob("*.lua"):
            found[f"{package.__name__}/{path.relative_to(root).as_posix()}"] = path
    return found


def test_every_lua_file_is_loaded_by_a_module() -> None:
    _import_worker()
    importlib.import_module("api.waitslots")
    on_disk = set(_lua_files())
    assert on_disk, "no Lua files found"
    assert on_disk - lua.loaded == set()


def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> str:
    name = f"luatest_{tmp_path.name.replace('-', '_')}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    for file, text in files.items():
        (tmp_path / name / file).write_text(text.replace("PKG", name))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return name


def test_a_missing_include_fails_at_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = _package(
        tmp_path,
        monkeypatch,
        {
            "script.lua": "--! include PKG/nowhere.lua\nreturn 1\n",
            "mod.py": 'from worker import lua\n\nSCRIPT = lua.load("PKG/script.lua")\n',
        },
    )
    missing = f"no Lua file {pkg}/nowhere.lua (included by {pkg}/script.lua)"
    with pytest.raises(lua.LuaFileMissing, match=re.escape(missing)):
        importlib.import_module(f"{pkg}.mod")
    sys.modules.pop(f"{pkg}.mod", None)


def test_a_missing_file_fails_loudly() -> None:
    with pytest.raises(lua.LuaFileMissing, match=re.escape("no Lua file worker/nowhere.lua")):
        lua.load("worker/nowhere.lua")
    with pytest.raises(lua.LuaFileMissing, match="is not a path like"):
        lua.load("worker/now.py")


def test_a_file_included_twice_goes_in_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = _package(
        tmp_path,
        monkeypatch,
        {
            "clock.lua": "local function clock() return 1 end",  # no newline at the end
            "uses_clock.lua": "--! include PKG/clock.lua\nlocal function twice() return 2 * clock() end\n",
            "script.lua": "--! include PKG/clock.lua\n--! include PKG/uses_clock.lua\nreturn twice()\n",
        },
    )
    assert lua.load(f"{pkg}/script.lua") == (
        "local function clock() return 1 end\nlocal function twice() return 2 * clock() end\nreturn twice()\n"
    )


def test_an_include_cycle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = _package(
        tmp_path, monkeypatch, {"a.lua": "--! include PKG/b.lua\n", "b.lua": "--! include PKG/a.lua\n"}
    )
    with pytest.raises(ValueError, match="includes"):
        lua.load(f"{pkg}/a.lua")


def test_the_scripts_read_the_clock_only_through_now_lua() -> None:
    reading = sorted(name for name, path in _lua_files().items() if "redis.call('TIME')" in path.read_text())
    assert reading == ["worker/now.lua"]


# TIME answers {seconds, microseconds}. Before now.lua, scripts wrote whole milliseconds as
# `t1 * 1000 + math.floor(t2 / 1000)` and seconds as `t1 .. '.' .. string.format('%06d', t2)`;
# they now write math.floor(now_ms()) and string.format('%.6f', now_s()). Lua's numbers are
# IEEE doubles, as Python's floats are, so the same arithmetic here proves the same bytes.
@pytest.mark.parametrize("t1", [1_700_000_000, 1_764_748_800, 2_147_483_647, 4_102_444_800])
def test_now_lua_writes_the_times_the_scripts_wrote_before(t1: int) -> None:
    for t2 in [*range(0, 1_000_000, 7), *range(999_000, 1_000_000)]:
        now_ms = t1 * 1000 + t2 / 1000
        assert math.floor(now_ms) == t1 * 1000 + math.floor(t2 / 1000)
        assert "%.6f" % (t1 + t2 / 1_000_000) == f"{t1}.{t2:06d}"


def test_observe_lua_counts_in_the_buckets_of_histograms_py() -> None:
    bounds = re.search(r"local hist_bounds = \{(.*)\}", histograms.LUA_OBSERVE)
    les = re.search(r"local hist_les = \{(.*)\}", histograms.LUA_OBSERVE)
    assert bounds and les
    assert tuple(float(b) for b in bounds.group(1).split(", ")) == histograms.BUCKETS_S
    assert tuple(le.strip("'") for le in les.group(1).split(", ")) == histograms.LES[:-1]


# Every script takes its arguments as one named table, `local a = cjson.decode(ARGV[1])`
# (worker/lua.py). A few take, after the table, what they store or forward as it is, so it is not
# escaped twice; they are listed here with those arguments. Files of functions that other scripts
# include take parameters and read no ARGV.
PAYLOADS = {
    "worker/run/create.lua": ["unpack(ARGV, 2)"],  # the run's fields
    "worker/run/finish.lua": ["ARGV[2]"],  # the output
    "worker/run/park.lua": ["ARGV[2]", "ARGV[3]"],  # the pending action, the agent's memory
    "worker/gateway/reply.lua": ["ARGV[2]"],  # the envelope
    "worker/gateway/settle.lua": ["ARGV[2]", "ARGV[3]"],  # the result, the untaken result
    "worker/gateway/admit/go.lua": ["ARGV[2]"],  # the admitted attempt's task message
    "worker/webhooks/freeze.lua": ["ARGV[2]"],  # the body (it takes no named argument)
}


def _argv_reads(path: str) -> list[str]:
    code = re.sub(r"--[^\n]*", "", _lua_files()[path].read_text())  # the headers name ARGV too
    return sorted(set(re.findall(r"ARGV\[[^\]]*\]|unpack\(ARGV[^)]*\)", code)))


def test_every_script_reads_its_arguments_by_name() -> None:
    positional = {}
    for name, path in _lua_files().items():
        reads = _argv_reads(name)
        if not reads:
            continue
        extra = [read for read in reads if read != "ARGV[1]"]
        if extra != PAYLOADS.get(name, []):
            positional[name] = extra
        code = path.read_text()
        if "ARGV[1]" in reads and "local a = cjson.decode(ARGV[1])" not in code:
            positional[name] = ["ARGV[1] not read as the named table"]
    assert positional == {}, "arguments read by position"
    assert all(_argv_reads(name) for name in PAYLOADS)  # the list names no script that is gone
