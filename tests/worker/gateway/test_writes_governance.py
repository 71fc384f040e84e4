"""Exactly-once writes under worker deaths, and per-agent governance (issue 3), with real parts only.

One fleet for the module: a redis-server, `fleet api` (with an admin key), one prefork `fleet worker`
with six pool children and `fleet tool-worker`s. The chaos tests SIGKILL agent pool children
(billiard forks replacements; Celery requeues the run, which resumes from Redis) and tool-worker
main processes (a replacement is started), at random moments while runs make writes.

The agent worker's MAIN process is never killed here: its runs would stay unacked in Redis until the
broker's visibility timeout (>= 1 h) redelivers them; recovering those runs sooner (leases and a
reaper) is issue 7's problem, not the gateway's.

This module is also a fleet plugin (config `plugins`): it registers `wgtest.counted_write`, a
non-idempotent write that counts its executions in Redis, so the test can see how often a write ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from pydantic import BaseModel, ConfigDict, Field

import tests.plugins  # noqa: F401  (registers `test.write` in this process, for ToolExecutor)
from tests.harness import KEY_T1, ROOT, CountingServer, Fleet, Proc, RedisServer, wait_for
from worker.gateway.executor import ToolExecutor
from worker.keys import Keys
from worker.run.store import Budgets, RunStore
from worker.settings import Settings
from worker.tools import tool
from worker.tools.base import ToolContext

PLUGIN_MODULE = "tests.worker.gateway.test_writes_governance"
ADMIN_KEY = "admin-key-of-the-writes-tests-0001"
COUNTED_WRITE = "wgtest.counted_write"
EXEC_COUNT_PREFIX = "wgtest:exec:"  # + call id: how often the counted write really ran
BUSY_PREFIX = "wgtest:busy:"  # + pid:call id, while a tool worker holds a counted write
POST_TIMEOUT_MS = 2000
SERVER_DELAY_S = 0.2  # each POST answers this late, so kills often land while one is in flight
AGENT_CONCURRENCY = 6
RUN_END_TIMEOUT_S = 180  # for every run of a chaos test together

CONFIG: dict[str, Any] = {
    # The chaos tests kill agent children under executing runs: a run here holds its process
    # while it waits. Writes under the kill of a tool worker while runs are parked are tested in
    # tests/worker/gateway/test_tool_pool.py; parked runs under agent worker kills in
    # tests/worker/run/test_parked.py.
    "runtime": {"park_waits": False},
    "tools": {
        "allowlist": ["echo", "http.get", "http.post", "test.write", COUNTED_WRITE],
        "timeouts_ms": {"http.post": POST_TIMEOUT_MS, COUNTED_WRITE: POST_TIMEOUT_MS},
        # A call lost with a killed tool worker times out and is retried (idempotent writes only);
        # the retry budget and the breaker must not turn the test's own chaos into lost calls.
        "retries": {"max": 8, "backoff_ms": [100, 200]},
        "retry_budget": {"ratio": 10, "min_retries": 10_000},
        "breaker": {"failure_threshold": 10_000, "min_calls": 10_000},
        # After a tool worker died, its calls' retries pile up in the queue with the stale attempts
        # and a fresh worker takes them all at once: the fleet-wide limit (default 1,000) lets
        # them all run, as no `rate_limited` (which the gateway does not retry) is under test here.
        "costs_usd": {"echo": 0.10},
        "http": {"allow_hosts": ["127.0.0.1"]},
    },
    "plugins": ["tests.plugins", PLUGIN_MODULE],
}
ENV = {
    "FLEET_ADMIN_KEYS": ADMIN_KEY,
    # A run may be hit by several child kills; the poison-run limit is not under test here.
    "FLEET_MAX_ATTEMPTS": "20",
}


# -- the plugin: a write whose executions are counted -------------------------------------------------


class CountedWriteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hold_s: float = Field(0, ge=0, le=10)


@tool(
    COUNTED_WRITE,
    args=CountedWriteArgs,
    writes=True,
    description="A non-idempotent write that counts its executions in Redis, then holds for hold_s.",
)
def counted_write(args: CountedWriteArgs, ctx: ToolContext) -> dict[str, Any]:
    from worker.redis_conn import get_redis

    r = get_redis()
    executions = r.incr(EXEC_COUNT_PREFIX + ctx.call_id)
    busy = f"{BUSY_PREFIX}{os.getpid()}:{ctx.call_id}"
    r.set(busy, "1", ex=30)
    time.sleep(args.hold_s)
    r.delete(busy)
    return {"call_id": ctx.call_id, "executions": executions}


# -- a server that honours Idempotency-Key -------------------------------------------------------------


class IdempotentServer:
    """A local HTTP server that treats each POST as a payment: the first request with an
    `Idempotency-Key` applies its effect and keeps its answer; a repeat gets that answer again and
    no effect. Every request is recorded with its key (None when it had none, answered 400)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.requests: list[str | None] = []
        self.effects: Counter[str] = Counter()
        self.answers: dict[str, bytes] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: one request per connection, so an open connection means a request in flight.
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                key = self.headers.get("Idempotency-Key")
                status = 200
                with outer.lock:
                    outer.requests.append(key)
                    if key is None:
                        status, answer = 400, b'{"error": "Idempotency-Key required"}'
                    elif key in outer.answers:
                        answer = outer.answers[key]
                    else:
                        outer.effects[key] += 1
                        answer = json.dumps({"applied": key, "effect": len(outer.effects)}).encode()
                        outer.answers[key] = answer
                time.sleep(delay_s)
                with contextlib.suppress(OSError):  # the tool worker may have died meanwhile
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/pay") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- chaos ---------------------------------------------------------------------------------------------


def spawn_tool_worker(fleet: Fleet) -> Proc:
    """Start a `fleet tool-worker` without waiting for it (the harness's start_tool_worker waits)."""
    name = f"tool-{uuid.uuid4().hex[:6]}@%h"
    return fleet.spawn("tool-worker", "tool-worker", "-n", name, "--without-mingle")


def is_ready(proc: Proc) -> bool:
    return proc.popen.poll() is None and " ready." in proc.text()


@dataclass
class Chaos:
    """SIGKILLs agent pool children and tool-worker main processes at random moments.

    A replacement tool worker is started at once after a kill; while it starts, calls wait in their
    queue or time out and are retried. `busy(proc)` tells which tool worker holds a write in flight,
    so the kill lands on one when there is one.
    """

    fleet: Fleet
    agent: Proc
    tool_workers: list[Proc]
    busy: Callable[[Proc], bool]
    rng: random.Random = field(default_factory=lambda: random.Random(os.getpid() ^ int(time.time())))
    agent_kills: int = 0
    tool_kills: int = 0
    busy_tool_kills: int = 0

    def kill_agent_child(self) -> None:
        children = self.fleet.pool_children(self.agent)
        if not children:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            self.rng.choice(children).send_signal(signal.SIGKILL)
            self.agent_kills += 1

    def kill_tool_worker(self) -> bool:
        ready = [p for p in self.tool_workers if is_ready(p)]
        if not ready:
            return False  # the last replacement is still starting
        busy = [p for p in ready if self.busy(p)]
        victim = self.rng.choice(busy or ready)
        os.kill(victim.popen.pid, signal.SIGKILL)
        victim.popen.wait(timeout=10)
        self.tool_kills += 1
        self.busy_tool_kills += bool(busy)
        self.tool_workers.append(spawn_tool_worker(self.fleet))
        return True

    def run(self, duration_s: float, done: Callable[[], bool]) -> None:
        """Kill something every 1-2 s for `duration_s` (or until `done()`), alternating kinds."""
        deadline = time.monotonic() + duration_s
        tool_turn = False
        while time.monotonic() < deadline and not done():
            time.sleep(self.rng.uniform(1.0, 2.0))
            if not (tool_turn and self.kill_tool_worker()):
                self.kill_agent_child()
            tool_turn = not tool_turn

    def run_in_background(self, duration_s: float, done: Callable[[], bool]) -> Callable[[], None]:
        """`run` on a thread; returns `join`, which waits for it and re-raises what it raised."""
        errors: list[BaseException] = []

        def target() -> None:
            try:
                self.run(duration_s, done)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, name="chaos", daemon=True)

        def join() -> None:
            thread.join()
            if errors:
                raise errors[0]

        thread.start()
        return join

    def settle(self) -> None:
        """Wait until at least one tool worker serves again (a replacement may still be starting)."""
        try:
            wait_for(lambda: any(is_ready(p) for p in self.tool_workers), 60)
        except AssertionError:
            raise AssertionError(
                f"no tool worker became ready after the chaos:\n{self.fleet.logs()}"
            ) from None

    def stats(self) -> str:
        return (
            f"kills: {self.agent_kills} agent children, {self.tool_kills} tool workers "
            f"({self.busy_tool_kills} holding a write)"
        )

    def trim(self) -> None:
        """Leave one ready tool worker, as the module's fleet started with."""
        alive = [p for p in self.tool_workers if p.popen.poll() is None]
        keep = next(p for p in alive if is_ready(p))
        for proc in alive:
            if proc is not keep:  # idle now; SIGKILL spares Celery's 15 s soft shutdown
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=10)


def tool_workers(fleet: Fleet) -> list[Proc]:
    return [p for p in fleet.procs if p.name == "tool-worker" and p.popen.poll() is None]


def agent_worker(fleet: Fleet) -> Proc:
    (worker,) = [p for p in fleet.procs if p.name == "worker"]
    return worker


def talks_to(port: int) -> Callable[[Proc], bool]:
    """Whether a process has an open TCP connection to `port` (a request in flight to our server)."""

    def check(proc: Proc) -> bool:
        try:
            conns = psutil.Process(proc.popen.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in conns)

    return check


def holds_counted_write(fleet: Fleet) -> Callable[[Proc], bool]:
    def check(proc: Proc) -> bool:
        return any(True for _ in fleet.r.scan_iter(f"{BUSY_PREFIX}{proc.popen.pid}:*", count=1000))

    return check


# -- helpers -------------------------------------------------------------------------------------------


def wait_all(fleet: Fleet, run_ids: list[str], timeout: float = RUN_END_TIMEOUT_S) -> list[dict[str, Any]]:
    """Every run once it has ended (with its step log); fails with the stragglers otherwise."""
    deadline = time.monotonic() + timeout
    return [fleet.wait(run_id, timeout=max(1.0, deadline - time.monotonic())) for run_id in run_ids]


def all_ended(fleet: Fleet, run_ids: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        statuses = fleet.r.pipeline()
        for run_id in run_ids:
            statuses.hget(f"fleet:run:{run_id}", "status")
        return all(s in ("succeeded", "stopped", "failed", "cancelled") for s in statuses.execute())

    return check


def unsuccessful(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that did not succeed, with what tells why."""
    fields = ("id", "status", "stop_reason", "error", "usage", "started_at", "finished_at", "steps")
    return [{k: r.get(k) for k in fields} for r in runs if r["status"] != "succeeded"]


def attempts(fleet: Fleet, run_id: str) -> int:
    return int(fleet.r.hget(f"fleet:run:{run_id}", "attempts") or 0)


def tool_steps(runs: list[dict[str, Any]], name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(run["id"], s) for run in runs for s in run.get("steps") or [] if s.get("tool") == name]


def fleet_cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    """The `fleet` command (the venv's console script, else `python -m fleetcli`) with the fleet's env."""
    script = Path(sys.executable).with_name("fleet")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "fleetcli"]
    return subprocess.run(
        [*argv, *args], env=fleet.env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def set_policy(fleet: Fleet, *args: str) -> dict[str, Any]:
    done = fleet_cli(fleet, "policy", "set", "scripted", *args)
    assert done.returncode == 0, done.stderr
    policy: dict[str, Any] = json.loads(done.stdout)
    return policy


def submit_all(fleet: Fleet, plan: list[dict[str, Any]], n: int) -> list[str]:
    """Submit `n` runs of `plan` from 8 threads, so they are queued (and run) together."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: fleet.submit(input={"plan": plan})["id"], range(n)))


def submit_plans(
    fleet: Fleet, plans: list[list[dict[str, Any]]], started: Callable[[], None] | None = None
) -> list[str]:
    """Submit one `scripted` run per plan over one connection; `started()` after the first."""
    ids: list[str] = []
    with fleet.client() as c:
        for plan in plans:
            resp = c.post("/v1/runs", json={"agent": "scripted", "input": {"plan": plan}})
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
            if started is not None and len(ids) == 1:
                started()
    return ids


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """API (with an admin key), one agent worker with six pool children, one tool worker."""
    server = RedisServer()
    f = Fleet(server, CONFIG, ENV)
    try:
        f.start(workers=1, concurrency=AGENT_CONCURRENCY)
        yield f
    finally:
        f.close()
        server.close()


@pytest.fixture(autouse=True)
def clean_governance(fleet: Fleet) -> Iterator[None]:
    """Each test starts and ends without policies or quota counters."""

    def clean() -> None:
        for pattern in ("fleet:policy:*", "fleet:quota:*"):
            for key in fleet.r.scan_iter(pattern, count=1000):
                fleet.r.delete(key)

    clean()
    yield
    clean()


# -- exactly-once writes -------------------------------------------------------------------------------

POST_RUNS, WRITE_RUNS = 50, 24
CHAOS_S = 15


@dataclass
class ChaosSession:
    """What one chaos session left behind: the ended runs and what the outside world saw."""

    chaos: Chaos
    post_runs: list[dict[str, Any]]  # 3 http.post calls each, at steps 1, 3, 5
    write_runs: list[dict[str, Any]]  # 2 counted (non-idempotent) writes each, at steps 1, 3
    server: IdempotentServer
    executions: dict[str, int]  # call id -> times the counted write really ran
    resumed: int  # runs that a killed child left behind and another attempt finished

    def stats(self) -> str:
        repeats = len(self.server.requests) - len(set(self.server.requests))
        return f"{self.chaos.stats()}; {self.resumed} runs resumed; {repeats} repeated POST keys"


@pytest.fixture(scope="module")
def chaos_session(fleet: Fleet) -> Iterator[ChaosSession]:
    """50 runs of 3 `http.post` and 24 runs of 2 counted writes, while an agent pool child or a tool
    worker is SIGKILLed every 1-2 s for ~15 s (one session for both chaos tests, to save time)."""
    server = IdempotentServer(delay_s=SERVER_DELAY_S)
    try:
        post: dict[str, Any] = {"tool": "http.post", "args": {"url": server.url(), "json": {"amount": 5}}}
        write: dict[str, Any] = {"tool": COUNTED_WRITE, "args": {"hold_s": 0.3}}
        pause: dict[str, Any] = {"sleep": 0.3}
        post_plan = [post, pause, post, pause, post, {"final": "paid"}]
        write_plan = [write, pause, write, {"final": "written"}]
        workers = [*tool_workers(fleet), spawn_tool_worker(fleet)]  # a second one joins when ready
        holds_write = holds_counted_write(fleet)
        to_server = talks_to(server.port)
        chaos = Chaos(fleet, agent_worker(fleet), workers, lambda p: to_server(p) or holds_write(p))
        kinds = ["post"] * POST_RUNS + ["write"] * WRITE_RUNS
        random.Random(3).shuffle(kinds)  # both kinds of run meet the chaos
        run_ids: list[str] = []
        joins: list[Callable[[], None]] = []

        def done() -> bool:
            return len(run_ids) == len(kinds) and all_ended(fleet, run_ids)()

        # Submitting takes a while on a busy machine: the chaos starts with the first run.
        submitted = submit_plans(
            fleet,
            [post_plan if kind == "post" else write_plan for kind in kinds],
            started=lambda: joins.append(chaos.run_in_background(CHAOS_S, done)),
        )
        run_ids.extend(submitted)
        joins[0]()
        post_ids = [rid for rid, kind in zip(run_ids, kinds, strict=True) if kind == "post"]
        write_ids = [rid for rid, kind in zip(run_ids, kinds, strict=True) if kind == "write"]
        chaos.settle()
        post_runs = wait_all(fleet, post_ids)
        write_runs = wait_all(fleet, write_ids)
        chaos.trim()
        executions = {
            key.removeprefix(EXEC_COUNT_PREFIX): int(fleet.r.get(key) or 0)
            for rid in write_ids
            for key in fleet.r.scan_iter(f"{EXEC_COUNT_PREFIX}{rid}:*", count=1000)
        }
        resumed = sum(attempts(fleet, rid) > 1 for rid in post_ids + write_ids)
        yield ChaosSession(chaos, post_runs, write_runs, server, executions, resumed)
    finally:
        server.close()


def test_http_post_has_one_effect_per_call_while_agent_children_and_tool_workers_are_killed(
    fleet: Fleet, chaos_session: ChaosSession
) -> None:
    session, server = chaos_session, chaos_session.server
    stats = session.stats()
    print(stats)
    assert session.chaos.agent_kills >= 3 and session.chaos.tool_kills >= 2, stats
    assert session.resumed >= 1, stats  # the kills hit runs in flight

    assert not unsuccessful(session.post_runs), f"{stats}\n{unsuccessful(session.post_runs)}"
    failed_posts = [
        (s, fleet.r.hgetall(f"fleet:call:{rid}:{s['step']}:0:exec"))
        for rid, s in tool_steps(session.post_runs, "http.post")
        if not s["ok"]
    ]
    assert not failed_posts, f"{stats}\n{failed_posts}"

    expected_keys = {f"{r['id']}:{step}:0" for r in session.post_runs for step in (1, 3, 5)}
    assert len(expected_keys) == 3 * POST_RUNS
    assert None not in server.requests, "a POST arrived without an Idempotency-Key"
    assert set(server.requests) == expected_keys  # one key per call, deterministic: <run_id>:<step>:0
    assert set(server.effects) == expected_keys
    assert set(server.effects.values()) == {1}, "an effect was applied twice"


def test_non_idempotent_write_never_runs_twice_while_agent_children_and_tool_workers_are_killed(
    fleet: Fleet, chaos_session: ChaosSession
) -> None:
    session, executions = chaos_session, chaos_session.executions
    steps = tool_steps(session.write_runs, COUNTED_WRITE)
    outcomes = Counter("ok" if s["ok"] else s["error_type"] for _, s in steps)
    stats = f"{session.stats()}; counted-write outcomes {dict(outcomes)}"
    print(stats)
    assert session.chaos.agent_kills >= 3 and session.chaos.tool_kills >= 2, stats

    assert not unsuccessful(session.write_runs), f"{stats}\n{unsuccessful(session.write_runs)}"
    assert len(steps) == 2 * WRITE_RUNS
    twice = {call: n for call, n in executions.items() if n != 1}
    assert not twice, f"writes executed more than once: {twice}\n{stats}"
    for rid, step in steps:
        call_id = f"{rid}:{step['step']}:0"
        if step["ok"]:
            assert executions.get(call_id) == 1, (call_id, stats)
        else:
            # A write lost with its tool worker is not retried (timeout); a resumed attempt of a call
            # whose first attempt may have run is refused (tool_error) instead of running again.
            assert step["error_type"] in ("timeout", "tool_error"), (call_id, step)
        if call_id in executions:  # it ran once, under the claim of one attempt in the fleet's Redis
            assert fleet.r.hget(f"fleet:call:{call_id}:exec", "claimed_by"), call_id


def queued_run(fleet: Fleet) -> str:
    """A run record for calls made straight to ToolExecutor (a tool worker refuses calls of a run
    that does not exist)."""
    run_id = f"wg-{uuid.uuid4().hex}"
    budgets = Budgets(max_steps=5, max_tool_calls=5, max_seconds=30)
    RunStore(fleet.r, Keys("fleet")).create(
        run_id, tenant="t1", agent="scripted", input={}, budgets=budgets, metadata={}
    )
    return run_id


def test_tool_executor_returns_a_recorded_write_and_refuses_a_claimed_one(fleet: Fleet) -> None:
    """The claim logic of the tool worker, against the fleet's Redis (same keys, same script)."""
    settings = Settings(tools={"http": {"allow_hosts": ["127.0.0.1"]}})
    executor = ToolExecutor(fleet.r, Keys("fleet"), settings)
    call_id = f"{queued_run(fleet)}:1:0"

    first = executor.execute(call_id, 0, "test.write", {"n": 1}, 3.0)[0]
    assert first == {"ok": True, "result": {"written": {"n": 1}, "call_id": call_id}}
    # A second attempt with other args would show {"n": 2} if it ran: it gets the recorded result.
    again = executor.execute(call_id, 1, "test.write", {"n": 2}, 3.0)[0]
    assert again == first

    claimed = f"{queued_run(fleet)}:1:0"
    fleet.r.hset(f"fleet:call:{claimed}:exec", "claimed_by", "attempt 0")  # a worker died mid-write
    refused = executor.execute(claimed, 1, "test.write", {"n": 3}, 3.0)[0]
    assert refused["ok"] is False and refused["error"]["type"] == "tool_error"
    assert "not run twice" in refused["error"]["message"]
    assert fleet.r.hget(f"fleet:call:{claimed}:exec", "result") is None  # nothing ran, nothing recorded


def test_tool_executor_reruns_a_claimed_idempotent_write_with_the_same_key(fleet: Fleet) -> None:
    server = IdempotentServer()
    try:
        settings = Settings(tools={"http": {"allow_hosts": ["127.0.0.1"]}})
        executor = ToolExecutor(fleet.r, Keys("fleet"), settings)
        call_id = f"{queued_run(fleet)}:2:0"
        fleet.r.hset(f"fleet:call:{call_id}:exec", "claimed_by", "attempt 0")
        args = {"url": server.url(), "json": {"amount": 1}}
        result = executor.execute(call_id, 1, "http.post", args, 3.0)[0]
        assert result["ok"] is True and result["result"]["status"] == 200, result
        assert executor.execute(call_id, 2, "http.post", args, 3.0)[0] == result  # recorded, not sent again
        assert server.requests == [call_id]
    finally:
        server.close()


def test_tool_executor_sends_the_retry_of_an_idempotent_write_whose_attempt_timed_out(
    fleet: Fleet,
) -> None:
    """A timed-out POST may or may not have reached the server; its retry must be sent again (with the
    same key, so the server applies it once), not answered with the recorded timeout."""
    server = IdempotentServer(delay_s=1.5)
    try:
        settings = Settings(tools={"http": {"allow_hosts": ["127.0.0.1"]}})
        executor = ToolExecutor(fleet.r, Keys("fleet"), settings)
        call_id = f"{queued_run(fleet)}:3:0"
        args = {"url": server.url(), "json": {"amount": 1}}
        first = executor.execute(call_id, 0, "http.post", args, 0.5)[0]
        assert first["ok"] is False and first["error"]["type"] == "timeout", first
        retry = executor.execute(call_id, 1, "http.post", args, 5.0)[0]
        assert retry["ok"] is True and retry["result"]["status"] == 200, retry
        assert server.requests == [call_id, call_id] and server.effects == {call_id: 1}
    finally:
        server.close()


# -- governance: quotas and allowed tools --------------------------------------------------------------


def test_max_actions_per_hour_allows_exactly_that_many_calls_across_concurrent_runs(fleet: Fleet) -> None:
    policy = set_policy(fleet, "--max-actions-per-hour", "30")
    assert policy["max_actions_per_hour"] == 30
    echo = {"tool": "echo", "args": {"x": 1}}
    run_ids = submit_all(fleet, [echo, echo, echo, {"final": "done"}], 20)
    runs = wait_all(fleet, run_ids, timeout=90)

    assert not unsuccessful(runs), unsuccessful(runs)
    steps = [s for _, s in tool_steps(runs, "echo")]
    assert len(steps) == 60
    allowed = [s for s in steps if s["decision"]["decision"] == "allowed"]
    denied = [s for s in steps if s["decision"]["decision"] == "denied"]
    assert len(allowed) == 30 and len(denied) == 30
    assert all(s["ok"] for s in allowed)
    for s in denied:
        assert s["ok"] is False and s["error_type"] == "denied", s
        assert "max_actions_per_hour" in s["decision"]["reason"], s
    # Each allowed call reserved its own slot, atomically: remaining counts 29 down to 0, once each.
    assert sorted(s["decision"]["remaining"]["actions_this_hour"] for s in allowed) == list(range(30))


def test_max_spend_usd_per_day_allows_exactly_the_affordable_calls_across_concurrent_runs(
    fleet: Fleet,
) -> None:
    policy = set_policy(fleet, "--max-spend-usd-per-day", "1.0")
    assert policy["max_spend_usd_per_day"] == 1.0 and policy["max_actions_per_hour"] is None
    echo = {"tool": "echo", "args": {"x": 1}}  # costs 0.10 (config tools.costs_usd)
    run_ids = submit_all(fleet, [echo, echo, echo, {"final": "done"}], 8)
    runs = wait_all(fleet, run_ids, timeout=90)

    assert not unsuccessful(runs), unsuccessful(runs)
    steps = [s for _, s in tool_steps(runs, "echo")]
    assert len(steps) == 24
    allowed = [s for s in steps if s["decision"]["decision"] == "allowed"]
    denied = [s for s in steps if s["decision"]["decision"] == "denied"]
    assert len(allowed) == 10 and len(denied) == 14
    for s in denied:
        assert s["error_type"] == "denied" and "max_spend_usd_per_day" in s["decision"]["reason"], s
    left = sorted(round(s["decision"]["remaining"]["spend_usd_today"], 2) for s in allowed)
    assert left == [round(0.1 * n, 2) for n in range(10)]


def test_allowed_tools_denies_other_tools_and_the_run_goes_on(
    fleet: Fleet, http_server: CountingServer
) -> None:
    plan = [
        {"tool": "http.get", "args": {"url": http_server.url("/ok")}},
        {"tool": "echo", "args": {"x": 1}},
        {"final": "done"},
    ]
    assert set_policy(fleet, "--allowed-tools", "echo")["allowed_tools"] == ["echo"]
    before = http_server.count("/ok")
    run = fleet.wait(fleet.submit(input={"plan": plan})["id"])

    assert run["status"] == "succeeded" and run["output"] == "done"
    get_step, echo_step = run["steps"]
    assert get_step["tool"] == "http.get" and get_step["ok"] is False
    assert get_step["error_type"] == "denied"
    assert get_step["decision"]["decision"] == "denied"
    assert "allowed_tools" in get_step["decision"]["reason"]
    assert echo_step["tool"] == "echo" and echo_step["ok"] is True
    assert http_server.count("/ok") == before  # the denied call never left the fleet

    # Control: without the policy the same call goes through (the fleet's allowlist has http.get).
    assert fleet_cli(fleet, "policy", "delete", "scripted").returncode == 0
    run = fleet.wait(fleet.submit(input={"plan": plan})["id"])
    assert run["steps"][0]["ok"] is True
    assert http_server.count("/ok") == before + 1


# -- the admin API -------------------------------------------------------------------------------------


def test_admin_api_sets_shows_validates_and_deletes_a_policy_for_admin_keys_only(
    fleet: Fleet, http_server: CountingServer
) -> None:
    path = "/v1/admin/policies/scripted"
    body = {
        "allowed_tools": ["echo"],
        "approve_tools": ["http.get"],
        "max_actions_per_hour": 5,
        "max_spend_usd_per_day": 2.5,
    }
    expected = {"agent": "scripted", **body}
    with httpx.Client(base_url=fleet.url, timeout=30) as c:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        tenant = {"Authorization": f"Bearer {KEY_T1}"}

        for method in ("GET", "PUT", "DELETE"):
            for headers in (tenant, {}):
                resp = c.request(method, path, headers=headers, json=body if method == "PUT" else None)
                assert resp.status_code == 401, (method, headers, resp.text)
                assert resp.json()["error"]["type"] == "unauthorized"
        assert not fleet.r.exists("fleet:policy:scripted")

        resp = c.put(path, headers=admin, json=body)
        assert resp.status_code == 200 and resp.json() == expected, resp.text
        resp = c.get(path, headers=admin)
        assert resp.status_code == 200 and resp.json() == expected
        shown = fleet_cli(fleet, "policy", "get", "scripted")
        assert shown.returncode == 0 and json.loads(shown.stdout) == expected, shown.stderr

        for bad, named in (
            ({"max_actions_per_hour": -1}, "max_actions_per_hour"),
            ({"max_actions_per_hour": 5, "colour": "red"}, "colour"),
            ({"approve_tools": "echo"}, "approve_tools"),
        ):
            resp = c.put(path, headers=admin, json=bad)
            assert resp.status_code == 422, resp.text
            assert named in resp.json()["error"]["message"], resp.text
        assert c.get(path, headers=admin).json() == expected  # a rejected PUT changed nothing

        # The workers read what the API wrote: http.get is not in allowed_tools.
        plan = [{"tool": "http.get", "args": {"url": http_server.url("/ok")}}, {"final": "done"}]
        run = fleet.wait(fleet.submit(input={"plan": plan})["id"])
        assert run["steps"][0]["error_type"] == "denied"
        assert "allowed_tools" in run["steps"][0]["decision"]["reason"]

        resp = c.delete(path, headers=admin)
        assert resp.status_code == 200, resp.text
        cleared = {"agent": "scripted", "allowed_tools": None, "approve_tools": None,
                   "max_actions_per_hour": None, "max_spend_usd_per_day": None}  # fmt: skip
        assert c.get(path, headers=admin).json() == cleared
        assert not fleet.r.exists("fleet:policy:scripted")
        assert json.loads(fleet_cli(fleet, "policy", "get", "scripted").stdout) == cleared
