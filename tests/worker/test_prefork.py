"""The prefork preload (worker/preload.py): an agent worker readies its main process once, before
its pool forks, without a connection or a thread for the children to inherit; its children run
runs, and a child killed mid-run is replaced and the run resumes. Real Redis, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, Fleet, Proc, RedisServer, free_port, wait_for

CONCURRENCY = 2
PRELOAD_EVENT = "prefork preload"


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("module-probe")


@pytest.fixture(scope="module")
def fleet(probe_dir: Path) -> Iterator[Fleet]:
    server = RedisServer()
    # A run here must hold its process while it waits (these tests kill the worker under an
    # executing run); parked runs' crashes are tests/worker/run/test_parked.py's.
    config = {"plugins": ["tests.plugins", "tests.module_probe"], "runtime": {"park_waits": False}}
    f = Fleet(server, config, {"TEST_MODULE_PROBE_DIR": str(probe_dir)})
    try:
        f.start(workers=1, concurrency=CONCURRENCY)  # the preload is on by default
        yield f
    finally:
        f.close()
        server.close()


def agent_worker(fleet: Fleet) -> Proc:
    return next(p for p in fleet.procs if p.name == "worker")


def events(proc: Proc, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of a fleet process whose event is `event`."""
    found = []
    for line in proc.text().splitlines():
        if line.startswith("{") and event in line:
            data = json.loads(line)
            if data.get("event") == event:
                found.append(data)
    return found


def test_the_main_process_preloads_once_before_the_pool_forks(fleet: Fleet) -> None:
    lines = events(agent_worker(fleet), PRELOAD_EVENT)
    # One line: the main process did it once; a hook in the children would log once per child.
    assert len(lines) == 1, agent_worker(fleet).text()
    assert lines[0]["frozen_objects"] > 10_000
    assert lines[0]["modules"] > 500


def test_a_worker_with_the_preload_off_neither_imports_ahead_nor_freezes(fleet: Fleet) -> None:
    fleet.env["FLEET_RUNTIME__PREFORK_PRELOAD"] = "false"
    try:
        worker = fleet.start_worker(1)
    finally:
        del fleet.env["FLEET_RUNTIME__PREFORK_PRELOAD"]
    try:
        assert events(worker, PRELOAD_EVENT) == []
    finally:
        fleet.stop_proc(worker)
        fleet.procs.remove(worker)


def test_preloaded_children_run_runs_with_tool_calls(fleet: Fleet) -> None:
    plan = [{"tool": "echo", "args": {"n": 7}}, {"final": "done"}]
    ids = [fleet.submit(input={"plan": plan})["id"] for _ in range(3 * CONCURRENCY)]
    for run_id in ids:
        run = fleet.wait(run_id)
        assert (run["status"], run["stop_reason"], run["output"]) == ("succeeded", "finish", "done")
        tool_step = run["steps"][0]
        assert (tool_step["tool"], tool_step["ok"]) == ("echo", True), run["steps"]


def test_preloaded_children_import_nothing_for_themselves(fleet: Fleet, probe_dir: Path) -> None:
    """The pool's children start with every module their runs use, and with the parent's
    objects frozen: what they share stays shared (tests/module_probe.py records it)."""
    plan = [{"tool": "echo", "args": {"n": 1}}, {"sleep": 0.5}, {"final": "ok"}]
    for _ in range(2):  # each wave of sleeping runs lands on every child
        ids = [fleet.submit(input={"plan": plan})["id"] for _ in range(CONCURRENCY)]
        assert all(fleet.wait(run_id)["status"] == "succeeded" for run_id in ids)
    children = {c.pid for c in fleet.pool_children(agent_worker(fleet))}
    records = []
    for path in probe_dir.glob("child-*.json"):
        record = json.loads(path.read_text())
        if record["pid"] in children:
            records.append(record)
    assert records, f"no child of the agent worker reported: {sorted(probe_dir.iterdir())}"
    for record in records:
        assert record["tasks"] >= 1
        assert record["frozen_at_start"] > 10_000, record
        assert record["imported_at_start"] == [], f"a child imported these itself: {record}"
        assert record["imported_by_tasks"] == [], f"a child's runs imported these: {record}"


def test_a_preloaded_child_killed_mid_run_is_replaced_and_the_run_resumes(fleet: Fleet) -> None:
    worker = agent_worker(fleet)
    plan = [
        {"tool": "echo", "args": {"n": 1}},
        {"sleep": 2},
        {"tool": "echo", "args": {"n": 2}},
        {"final": "ok"},
    ]
    run = fleet.submit(input={"plan": plan})
    deadline = time.monotonic() + 20
    while fleet.get(run["id"])["usage"]["steps"] < 1:
        assert time.monotonic() < deadline, fleet.logs()
        time.sleep(0.05)
    token = fleet.r.get(f"fleet:run:{run['id']}:lease")
    assert token, "the running run holds no lease"
    victim = int(token.split(":")[1])
    assert victim in {c.pid for c in fleet.pool_children(worker)}
    os.kill(victim, signal.SIGKILL)

    ended = fleet.wait(run["id"], timeout=60)
    assert (ended["status"], ended["output"]) == ("succeeded", "ok"), ended
    # the resumed execution went on from the checkpoint: no step ran twice, the first echo once
    assert [(s["step"], s["action"]) for s in ended["steps"]] == [(1, "tool"), (2, "sleep"), (3, "tool")]
    wait_for(lambda: len(fleet.pool_children(worker)) == CONCURRENCY, 20, "the pool was not refilled")
    assert victim not in {c.pid for c in fleet.pool_children(worker)}


PROBE = """
import gc, json, sys, threading
import psutil
import worker.celery_app
from worker.preload import prepare_fork
done = prepare_fork()
me = psutil.Process()
print(json.dumps({
    "frozen": gc.get_freeze_count(),
    "reported": done.frozen_objects,
    "tasks_loaded": "worker.tasks" in sys.modules,
    "threads": threading.active_count(),
    "sockets": len(me.net_connections(kind="all")),
}))
"""


def test_preparing_the_fork_opens_no_connection_and_starts_no_thread() -> None:
    # A Redis URL on a port where nothing listens: a client that connected would fail or hang.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "AGENT_MAX_"))},
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["tasks_loaded"] is True
    assert probe["frozen"] == probe["reported"] > 10_000
    assert probe["threads"] == 1, "the preload started a thread the children would not get"
    assert probe["sockets"] == 0, "the preload opened a connection the children would share"


def test_the_preload_hook_applies_to_prefork_pools_only() -> None:
    from celery.concurrency.prefork import TaskPool
    from celery.concurrency.solo import TaskPool as SoloPool
    from celery.concurrency.thread import TaskPool as ThreadPool

    from worker.preload import is_prefork

    assert is_prefork(TaskPool)
    assert not is_prefork(ThreadPool)
    assert not is_prefork(SoloPool)
    assert not is_prefork(None)
