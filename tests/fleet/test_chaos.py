"""Chaos with real processes (issue 7): workers SIGKILLed under load, Redis restarted with AOF, a
worker drained with SIGTERM, and a faulty HTTP dependency. Nothing is mocked.

One fleet serves the whole module, as the images run it: a Redis with `appendonly yes`, the API,
3 agent workers (prefork, 3 processes each), 2 tool workers, and `REMAP_SIGTERM=SIGQUIT` in every
process (Dockerfile.worker sets it). Each test first brings the fleet back to that shape and clears
the gateway's fleet-wide state (breakers, retry budgets), so tests do not depend on their order.

A local `ChaosServer` plays the outside world: it honours `Idempotency-Key` on `POST /write`
(the effect is applied once per key; a key seen again gets the recorded answer) and injects faults
per path from a seeded random generator (503s, hangs, a permanent 429 with `Retry-After: 1`).

Judged on the server's side: run records and step logs (status, usage, started_at/finished_at)
and what the HTTP server saw. The full-size kill test (300 runs, kills for 60 s) is marked
`soak`; `.ci/run` skips it, `python -m pytest -m soak tests/fleet/test_chaos.py` runs it.

One Redis restart serves two tests: that no run and no write is lost, and that every worker
reconnects rather than exits (on Celery 5.7 thanks to worker/compat.py).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.harness import TERMINAL, Fleet, Proc, RedisServer, wait_for

SEED = 20261126
AGENT_WORKERS = 3
AGENT_CONCURRENCY = 3
TOOL_WORKERS = 2
KILL_INTERVAL_S = 5.0
RETRIES_MAX = 2
RETRY_RATIO = 0.2
MIN_RETRIES = 3
GET_TIMEOUT_MS = 500
MAX_ATTEMPTS = 3  # settings.max_attempts (default): a run whose worker died that often fails
SOFT_SHUTDOWN_S = 15.0  # worker_soft_shutdown_timeout in worker/celery_app.py
STOP_GRACE_S = 30.0  # stop_grace_period / terminationGracePeriodSeconds of the worker services
WRITE_DELAY_S = 0.2  # POST /write answers this long after it took effect

# Runs here hold their process while they wait, so that a killed worker kills executing runs;
# parked runs under worker crashes are tests/worker/run/test_parked.py's.
CONFIG: dict[str, Any] = {
    "runtime": {"park_waits": False},
    "tools": {
        "allowlist": ["echo", "http.get", "http.post"],
        "timeouts_ms": {"default": 3000, "http.get": GET_TIMEOUT_MS},
        "retries": {"max": RETRIES_MAX, "backoff_ms": [50, 200]},
        "retry_budget": {"ratio": RETRY_RATIO, "min_retries": MIN_RETRIES, "window_s": 60},
        # Tolerant of a flaky dependency (retries within the retry budget handle it), not of a
        # 429 storm; a short cool-down, so half-open probes happen within a test.
        "breaker": {
            "failure_threshold": 8,
            "failure_rate": 0.9,
            "min_calls": 10,
            "window_s": 30,
            "cooldown_s": 2,
        },
        "http": {"allow_hosts": ["127.0.0.1"]},
    },
}


# -- the outside world ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Faults:
    """What a path does to a request: `error_rate` 503s, `hang_rate` hangs of `hang_s`, or always
    429 with `Retry-After: retry_after_s` when `throttle` is set."""

    error_rate: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 0.0
    throttle: bool = False
    retry_after_s: int = 1


@dataclass
class Seen:
    method: str
    path: str
    key: str | None
    call: str | None  # the X-Call header a test sets on its GETs: one logical call
    write: str | None  # the `write` field of a POST body: one logical write
    outcome: str
    t: float


@dataclass
class Effect:
    """A write applied once for its Idempotency-Key, with the body that applied it."""

    write: str | None
    response: bytes


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a killed tool worker or a timed-out client resets its connection: expected here


class ChaosServer:
    """A local HTTP server that records every request, applies each POST /write once per
    Idempotency-Key (then answers after `write_delay_s`), and injects faults per first path
    segment, reproducibly (seeded)."""

    def __init__(
        self, seed: int, faults: dict[str, Faults] | None = None, write_delay_s: float = 0.0
    ) -> None:
        self.rng = random.Random(seed)
        self.faults = faults or {}
        self.write_delay_s = write_delay_s
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.effects: dict[str, Effect] = {}
        self.unkeyed_writes = 0
        self.key_conflicts: list[tuple[str, str | None, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(payload)

            def do_GET(self) -> None:
                segment = self.path.strip("/").split("/")[0]
                faults = outer.faults.get(segment, Faults())
                with outer.lock:
                    draw = outer.rng.random()
                    if faults.throttle:
                        outcome = "429"
                    elif draw < faults.error_rate:
                        outcome = "503"
                    elif draw < faults.error_rate + faults.hang_rate:
                        outcome = "hang"
                    else:
                        outcome = "200"
                    outer.seen.append(
                        Seen("GET", self.path, self.headers.get("Idempotency-Key"),
                             self.headers.get("X-Call"), None, outcome, time.time())
                    )  # fmt: skip
                if outcome == "429":
                    self._reply(429, b'{"error": "slow down"}', {"Retry-After": str(faults.retry_after_s)})
                elif outcome == "503":
                    self._reply(503, b'{"error": "unavailable"}')
                else:
                    if outcome == "hang":
                        time.sleep(faults.hang_s)
                    self._reply(200, json.dumps({"path": self.path}).encode())

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    write = json.loads(body).get("write")
                except (ValueError, AttributeError):
                    write = None
                key = self.headers.get("Idempotency-Key")
                with outer.lock:
                    if key is None:
                        outer.unkeyed_writes += 1
                        outcome, status, payload = "unkeyed", 201, b'{"applied": true}'
                    elif key in outer.effects:
                        effect = outer.effects[key]
                        if effect.write != write:
                            outer.key_conflicts.append((key, effect.write, write))
                        outcome, status, payload = "replay", 200, effect.response
                    else:
                        payload = json.dumps({"applied": write, "key": key}).encode()
                        outer.effects[key] = Effect(write, payload)
                        outcome, status = "applied", 201
                    outer.seen.append(Seen("POST", self.path, key, None, write, outcome, time.time()))
                time.sleep(outer.write_delay_s)  # applied, not yet answered: a worker may die now
                self._reply(status, payload)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests(self, method: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if method is None or s.method == method]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[ChaosServer]:
    s = ChaosServer(SEED, write_delay_s=WRITE_DELAY_S)
    yield s
    s.close()


# -- the fleet --------------------------------------------------------------------------------------


def spawn_agent_worker(fleet: Fleet) -> Proc:
    """`fleet worker` as Fleet.start_worker starts it, without waiting for it to be ready."""
    name = f"agent-{uuid.uuid4().hex[:6]}@%h"
    argv = ["--concurrency", str(AGENT_CONCURRENCY), "-n", name, "--without-mingle"]
    return fleet.spawn("worker", "worker", *argv)


def spawn_tool_worker(fleet: Fleet) -> Proc:
    return fleet.spawn(
        "tool-worker", "tool-worker", "-n", f"tool-{uuid.uuid4().hex[:6]}@%h", "--without-mingle"
    )


def is_ready(proc: Proc) -> bool:
    return " ready." in proc.text()


def live(fleet: Fleet, kind: str) -> list[Proc]:
    return [p for p in fleet.procs if p.name == kind and p.popen.poll() is None]


def kill_group(proc: Proc) -> None:
    """SIGKILL a worker's main process and its pool at once (its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(timeout=10)


def restore_fleet(fleet: Fleet) -> None:
    """Back to 3 ready agent workers and 2 ready tool workers; no gateway state left over."""
    for _ in range(AGENT_WORKERS - len(live(fleet, "worker"))):
        spawn_agent_worker(fleet)
    for _ in range(TOOL_WORKERS - len(live(fleet, "tool-worker"))):
        spawn_tool_worker(fleet)
    for proc in live(fleet, "worker") + live(fleet, "tool-worker"):
        wait_for(lambda p=proc: is_ready(p), 60, f"worker did not start:\n{proc.text()[-3000:]}")
    clear_gateway_state(fleet)
    assert len(live(fleet, "worker")) == AGENT_WORKERS and len(live(fleet, "tool-worker")) == TOOL_WORKERS


def clear_gateway_state(fleet: Fleet) -> None:
    for pattern in ("fleet:breaker:*", "fleet:retrybudget:*"):
        for key in fleet.r.scan_iter(pattern):
            fleet.r.delete(key)


def warm_up_http_tools(fleet: Fleet, srv: ChaosServer) -> None:
    """A few healthy http.get calls first: a tool worker's first call pays for imports and TLS
    setup, which on a loaded machine can exceed a 500 ms timeout and trip the breaker by itself."""
    plan = [{"tool": "http.get", "args": {"url": srv.url("/warmup")}} for _ in range(4)]
    ids = submit_all(fleet, [{"agent": "scripted", "input": {"plan": plan}} for _ in range(6)])
    wait_all_terminal(fleet, ids, timeout_s=60)
    clear_gateway_state(fleet)
    with srv.lock:
        srv.seen.clear()


@pytest.fixture(scope="module")
def chaos_fleet() -> Iterator[Fleet]:
    redis_server = RedisServer(appendonly=True)
    fleet = Fleet(redis_server, CONFIG, {"REMAP_SIGTERM": "SIGQUIT"})
    try:
        fleet.start_api()
        for _ in range(AGENT_WORKERS):
            spawn_agent_worker(fleet)
        for _ in range(TOOL_WORKERS):
            spawn_tool_worker(fleet)
        restore_fleet(fleet)
        yield fleet
    finally:
        # SIGTERM would start each worker's 15 s soft shutdown (REMAP_SIGTERM), one after another.
        for proc in fleet.procs:
            if proc.name != "api" and proc.popen.poll() is None:
                kill_group(proc)
        fleet.close()
        redis_server.close()


# -- runs -------------------------------------------------------------------------------------------


def ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def submit_all(fleet: Fleet, bodies: list[dict[str, Any]]) -> list[str]:
    ids = []
    with fleet.client() as c:
        for body in bodies:
            resp = c.post("/v1/runs", json=body)
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
    return ids


def wait_all_terminal(fleet: Fleet, ids: list[str], timeout_s: float) -> dict[str, str]:
    """Poll the run records (one pipeline) until every run has ended; fail with the stragglers."""
    deadline = time.monotonic() + timeout_s
    while True:
        pipe = fleet.r.pipeline(transaction=False)
        for run_id in ids:
            pipe.hget(f"fleet:run:{run_id}", "status")
        statuses = dict(zip(ids, pipe.execute(), strict=True))
        open_runs = {k: v for k, v in statuses.items() if v not in TERMINAL}
        if not open_runs:
            return statuses
        if time.monotonic() > deadline:
            detail = {k: where_is(fleet, k) for k in list(open_runs)[:5]}
            raise AssertionError(
                f"{len(open_runs)} of {len(ids)} runs never ended: {open_runs}\n{detail}\n{fleet.logs()}"
            )
        time.sleep(0.25)


def where_is(fleet: Fleet, run_id: str) -> dict[str, Any]:
    """Where a run that did not end is: its record, and whether a message for it is queued or
    sits unacked (delivered to a worker, not acknowledged) in the broker."""
    queued = sum(1 for m in fleet.r.lrange("agents", 0, -1) if run_id in m)
    unacked = sum(1 for m in fleet.r.hvals("unacked") if run_id in m)
    lease = fleet.r.get(f"fleet:run:{run_id}:lease")
    return {"record": fleet.r.hgetall(f"fleet:run:{run_id}"), "queued_messages": queued,
            "unacked_messages": unacked, "lease": lease}  # fmt: skip


def crash_summary(proc: Proc) -> str:
    """The critical log lines of a worker that exited: event and the end of the exception."""
    lines = []
    for line in proc.text().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("level") == "critical":
                lines.append(f"{event.get('event')}\n...{str(event.get('exception', ''))[-1500:]}")
    return "\n".join(lines) or proc.text()[-3000:]


def fetch_all(fleet: Fleet, ids: list[str]) -> dict[str, dict[str, Any]]:
    runs = {}
    with fleet.client() as c:
        for run_id in ids:
            resp = c.get(f"/v1/runs/{run_id}", params={"steps": "true"})
            assert resp.status_code == 200, resp.text
            runs[run_id] = resp.json()
    return runs


def attempts(fleet: Fleet, run_id: str) -> int:
    return int(fleet.r.hget(f"fleet:run:{run_id}", "attempts") or 0)


def brief(fleet: Fleet, run: dict[str, Any]) -> str:
    """What a failed assertion about a run needs: how it ended, when, after how many attempts."""
    fields = ("id", "status", "stop_reason", "error", "usage", "budgets", "started_at", "finished_at")
    return f"{ {k: run[k] for k in fields} } attempts={attempts(fleet, run['id'])}"


def assert_within_budgets(fleet: Fleet, run: dict[str, Any]) -> None:
    budgets, usage = run["budgets"], run["usage"]
    assert usage["steps"] <= budgets["max_steps"], brief(fleet, run)
    assert usage["tool_calls"] <= budgets["max_tool_calls"], brief(fleet, run)
    if run["started_at"] is not None:
        took_s = ts(run["finished_at"]) - ts(run["started_at"])
        assert took_s <= budgets["max_seconds"] + 1, f"ran {took_s:.2f} s: {brief(fleet, run)}"


def assert_steps_once_each(run: dict[str, Any]) -> None:
    """The step log is 1..n: every step recorded once, in order, also across a resume."""
    numbers = [s["step"] for s in run["steps"]]
    assert numbers == list(range(1, len(numbers) + 1)), f"step log {numbers} of {run['id']}"


def holders_by_worker(fleet: Fleet, workers: list[Proc]) -> dict[int, list[str]]:
    """For each worker main pid: the runs whose lease one of its pool processes holds."""
    pids = {child.pid: w.popen.pid for w in workers for child in fleet.pool_children(w)}
    held: dict[int, list[str]] = {w.popen.pid: [] for w in workers}
    for key in fleet.r.scan_iter("fleet:run:*:lease"):
        token = fleet.r.get(key)
        if token and int(token.split(":")[1]) in pids:
            held[pids[int(token.split(":")[1])]].append(key.split(":")[2])
    return held


# -- 1. SIGKILL a random worker every 5 s -------------------------------------------------------------


@dataclass
class Plan:
    index: int
    steps: list[dict[str, Any]]
    posts: dict[int, str] = field(default_factory=dict)  # step number -> the write's id


def kill_test_plan(index: int, rng: random.Random, server: ChaosServer) -> Plan:
    plan = Plan(index, [])
    for step in range(1, rng.randint(3, 7) + 1):
        kind = rng.choice(["get", "post", "post", "sleep", "sleep"])
        if kind == "get":
            plan.steps.append({"tool": "http.get", "args": {"url": server.url(f"/read/{index}/{step}")}})
        elif kind == "post":
            write = f"{index}:{step}"
            plan.posts[step] = write
            plan.steps.append(
                {"tool": "http.post", "args": {"url": server.url("/write"), "json": {"write": write}}}
            )
        else:
            plan.steps.append({"sleep": round(rng.uniform(0.5, 2.0), 2)})
    plan.steps.append({"final": f"done {index}"})
    return plan


KEY_RE = re.compile(r"^(?P<run>[^:]+):(?P<step>\d+):0$")


@pytest.mark.parametrize(
    ("n_runs", "kill_period_s"),
    [
        pytest.param(100, 25.0, id="100-runs-25s", marks=pytest.mark.timeout(420)),
        pytest.param(300, 60.0, id="300-runs-60s", marks=[pytest.mark.soak, pytest.mark.timeout(900)]),
    ],
)
def test_killing_a_random_worker_every_5s_loses_no_run_and_applies_no_write_twice(
    chaos_fleet: Fleet, server: ChaosServer, n_runs: int, kill_period_s: float
) -> None:
    fleet = chaos_fleet
    restore_fleet(fleet)
    rng = random.Random(SEED)
    plans = [kill_test_plan(i, rng, server) for i in range(n_runs)]
    budgets = {"max_steps": 10, "max_tool_calls": 8, "max_seconds": 60}
    bodies = [{"agent": "scripted", "input": {"plan": p.steps}, "budgets": budgets} for p in plans]
    ids: list[str] = []
    submit_errors: list[BaseException] = []
    started = time.monotonic()

    def submit_paced() -> None:
        """Spread the runs over the kill period, so every kill lands on a fleet under load."""
        try:
            for n, body in enumerate(bodies):
                time.sleep(max(0.0, started + n * kill_period_s / n_runs - time.monotonic()))
                ids.extend(submit_all(fleet, [body]))
        except BaseException as exc:
            submit_errors.append(exc)

    submitter = threading.Thread(target=submit_paced, name="submitter", daemon=True)
    submitter.start()
    kills: list[dict[str, Any]] = []
    tick = 1
    while tick * KILL_INTERVAL_S <= kill_period_s:
        time.sleep(max(0.0, started + tick * KILL_INTERVAL_S - time.monotonic()))
        tick += 1
        slot = rng.randrange(AGENT_WORKERS + TOOL_WORKERS)  # the seed decides which worker dies
        kind, index = ("worker", slot) if slot < AGENT_WORKERS else ("tool-worker", slot - AGENT_WORKERS)
        victim = live(fleet, kind)[index]
        wait_for(lambda v=victim: is_ready(v), 60, f"replacement did not start:\n{victim.text()[-3000:]}")
        held = holders_by_worker(fleet, [victim]).get(victim.popen.pid, []) if victim.name == "worker" else []
        kill_group(victim)
        (spawn_agent_worker if victim.name == "worker" else spawn_tool_worker)(fleet)
        kills.append({"t": round(time.monotonic() - started, 1), "kind": victim.name, "runs_held": len(held)})
    submitter.join(timeout=120)
    assert not submit_errors and len(ids) == n_runs, submit_errors
    plan_of = dict(zip(ids, plans, strict=True))

    statuses = wait_all_terminal(fleet, ids, timeout_s=60 + n_runs * 0.3)
    runs = fetch_all(fleet, ids)
    counts = Counter(
        f"{r['status']}/{r['stop_reason']}" + (f"/{r['error']['type']}" if r["error"] else "")
        for r in runs.values()
    )
    posts = server.requests("POST")
    per_key = Counter(s.key for s in posts)
    resumed = Counter(attempts(fleet, run_id) for run_id in ids)
    tool_steps = Counter(
        f"{e['tool']}:{e.get('error_type') or 'ok'}" for r in runs.values() for e in r["steps"] if "tool" in e
    )
    last_end_s = max(ts(r["finished_at"]) for r in runs.values()) - min(
        ts(r["created_at"]) for r in runs.values()
    )
    print(
        f"\nthe last run ended {last_end_s:.1f} s after the first was submitted; "
        f"tool steps: {dict(tool_steps)}"
    )
    print(f"kills: {kills}\noutcomes: {dict(counts)}\nruns by attempts: {dict(sorted(resumed.items()))}")
    print(
        f"writes applied: {len(server.effects)}, POST requests: {len(posts)}, "
        f"keys sent more than once: {sum(1 for n in per_key.values() if n > 1)} "
        f"(most {max(per_key.values(), default=0)}), GET requests: {len(server.requests('GET'))}"
    )
    assert len(kills) == int(kill_period_s // KILL_INTERVAL_S)
    assert any(k["runs_held"] for k in kills), "no kill hit a worker while it ran runs"
    assert sum(n for a, n in resumed.items() if a > 1) > 0, "no run was resumed after a kill"
    assert set(statuses.values()) <= TERMINAL

    # Every run ended: it finished, or its worker died more than max_attempts times, or its time
    # ran out while it waited to resume (the time bound is checked below).
    for run_id, run in runs.items():
        ended = (run["status"], run["stop_reason"], (run["error"] or {}).get("type"))
        assert ended in {
            ("succeeded", "finish", None),
            ("failed", "error", "worker_lost"),
            ("stopped", "max_seconds", None),
        }, brief(fleet, run)
        if ended[0] == "failed":
            assert attempts(fleet, run_id) > MAX_ATTEMPTS, brief(fleet, run)
    assert counts["succeeded/finish"] >= 0.9 * n_runs, counts

    # Budgets hold, and no step and no tool call of a run was counted twice across resumes.
    for run_id, run in runs.items():
        assert_within_budgets(fleet, run)
        assert_steps_once_each(run)
        if run["status"] == "succeeded":
            plan = plan_of[run_id]
            assert run["output"] == f"done {plan.index}"
            assert run["usage"]["steps"] == len(plan.steps), run
            assert run["usage"]["tool_calls"] == sum(1 for s in plan.steps if "tool" in s), run
            assert len(run["steps"]) == len(plan.steps) - 1, run

    # Every write carried its call's key, "<run>:<step>:0" of a run of this test at an http.post
    # step with that very body; each key took effect once, and each logical write under one key.
    assert server.unkeyed_writes == 0
    assert server.key_conflicts == []
    keys_of_write: dict[str, set[str]] = {}
    for key, effect in server.effects.items():
        match = KEY_RE.match(key)
        assert match, f"idempotency key {key!r} is not <run>:<step>:0"
        plan = plan_of.get(match["run"])
        assert plan is not None, f"key {key!r} names no run of this test"
        assert plan.posts.get(int(match["step"])) == effect.write, (key, effect.write)
        keys_of_write.setdefault(str(effect.write), set()).add(key)
    assert all(len(keys) == 1 for keys in keys_of_write.values()), keys_of_write

    # A write that a run saw succeed was applied at the server under that step's key.
    for run_id, run in runs.items():
        for entry in run["steps"]:
            if entry.get("tool") == "http.post" and entry["ok"]:
                assert f"{run_id}:{entry['step']}:0" in server.effects, (run_id, entry)


# -- 2. Redis restarted (AOF on) under load -----------------------------------------------------------


@dataclass
class RedisRestart:
    """What one Redis restart under load left behind, judged by the two tests below."""

    ids: list[str]
    before: dict[str, str]  # status of each run when Redis was stopped
    queued_messages: int
    runs_left_in_store: int  # run records found right after the restart
    stragglers: str | None  # why not every run ended, if so
    runs: dict[str, dict[str, Any]]
    server: ChaosServer
    exited: list[str]  # the workers that exited across the restart, with their last words
    new_runs_after: list[str]  # status of runs submitted after the restart


@pytest.fixture(scope="module")
def redis_restart(chaos_fleet: Fleet) -> Iterator[RedisRestart]:
    """60 runs (a GET, a POST) on 9 slots, Redis stopped with SIGTERM (it fsyncs the AOF) while
    most are queued, down 2 s, started again on the same port and directory."""
    fleet = chaos_fleet
    restore_fleet(fleet)
    workers = live(fleet, "worker") + live(fleet, "tool-worker")
    srv = ChaosServer(SEED, write_delay_s=WRITE_DELAY_S)

    def plan(i: int) -> list[dict[str, Any]]:
        return [
            {"sleep": 0.5},
            {"tool": "http.get", "args": {"url": srv.url(f"/read/{i}")}},
            {"tool": "http.post", "args": {"url": srv.url("/write"), "json": {"write": f"redis:{i}"}}},
            {"sleep": 0.5},
            {"final": f"ok {i}"},
        ]

    try:
        ids = submit_all(fleet, [{"agent": "scripted", "input": {"plan": plan(i)}} for i in range(60)])
        slots = AGENT_WORKERS * AGENT_CONCURRENCY
        wait_for(lambda: fleet.r.llen("agents") < 60 - slots + 3, 30, "no run started")
        time.sleep(1.0)  # runs in the middle of their steps
        before = {run_id: str(fleet.r.hget(f"fleet:run:{run_id}", "status")) for run_id in ids}
        queued_messages = fleet.r.llen("agents")

        fleet.redis.stop()  # SIGTERM: Redis writes and fsyncs the AOF before it exits
        time.sleep(2.0)
        fleet.redis.start()  # same port, same directory: it loads the AOF
        left = int(fleet.r.exists(*(f"fleet:run:{run_id}" for run_id in ids)))

        stragglers = None
        try:
            wait_all_terminal(fleet, ids, timeout_s=90)
        except AssertionError as exc:
            stragglers = str(exc)[:6000]
        runs = fetch_all(fleet, ids)
        exited = [
            f"{p.name} exited {p.popen.returncode}: {crash_summary(p)}"
            for p in workers
            if p.popen.poll() is not None
        ]
        after = submit_all(fleet, [{"agent": "scripted", "input": {"plan": plan(100 + i)}} for i in range(5)])
        with contextlib.suppress(AssertionError):
            wait_all_terminal(fleet, after, timeout_s=60)
        new_runs = [r["status"] for r in fetch_all(fleet, after).values()]
        yield RedisRestart(ids, before, queued_messages, left, stragglers, runs, srv, exited, new_runs)
    finally:
        srv.close()


@pytest.mark.timeout(300)
def test_queued_runs_survive_a_redis_restart_with_aof_and_none_is_lost_or_written_twice(
    chaos_fleet: Fleet, redis_restart: RedisRestart
) -> None:
    fleet, outcome = chaos_fleet, redis_restart
    ids, runs, srv = outcome.ids, outcome.runs, outcome.server
    for run in runs.values():
        assert any(e.get("tool") == "http.post" for e in run["steps"]), (brief(fleet, run), run["steps"])
    posts = {rid: next(e for e in r["steps"] if e.get("tool") == "http.post") for rid, r in runs.items()}
    print(f"\nbefore the restart: {dict(Counter(outcome.before.values()))}, {outcome.queued_messages} queued")
    ends = Counter(f"{r['status']}/{r['stop_reason']}" for r in runs.values())
    print(f"outcomes: {dict(ends)}")
    print(f"runs by attempts: {dict(Counter(attempts(fleet, run_id) for run_id in ids))}")
    print(f"http.post steps: {dict(Counter(e.get('error_type') or 'ok' for e in posts.values()))}")
    assert outcome.queued_messages >= 20, f"only {outcome.queued_messages} runs were still queued"
    assert outcome.runs_left_in_store == len(ids), "run records were lost with the restart"
    assert outcome.stragglers is None, outcome.stragglers

    for run_id, run in runs.items():
        assert run["status"] == "succeeded" and run["output"] == f"ok {ids.index(run_id)}", (
            outcome.before[run_id],
            brief(fleet, run),
        )
        assert_steps_once_each(run)
        assert run["usage"]["steps"] == 5 and run["usage"]["tool_calls"] == 2, brief(fleet, run)
    # A write the run saw succeed took effect once, under its call's key; none took effect twice.
    # (A call that failed while Redis was down is a failed tool call, which the agent sees.)
    assert srv.unkeyed_writes == 0 and srv.key_conflicts == []
    for run_id, entry in posts.items():
        effect = srv.effects.get(f"{run_id}:3:0")
        if entry["ok"]:
            assert effect is not None and effect.write == f"redis:{ids.index(run_id)}", (run_id, entry)
    first_wave = {k: e for k, e in srv.effects.items() if k.split(":")[0] in runs}
    assert len(first_wave) == len({e.write for e in first_wave.values()})
    # The fleet takes new work after the restart.
    assert outcome.new_runs_after == ["succeeded"] * 5, outcome.new_runs_after


@pytest.mark.timeout(300)
def test_every_worker_reconnects_after_a_redis_restart_rather_than_exiting(
    redis_restart: RedisRestart,
) -> None:
    assert redis_restart.exited == [], "\n".join(redis_restart.exited)


# -- 3. SIGTERM: soft shutdown requeues running runs ---------------------------------------------------


@pytest.mark.timeout(300)
def test_sigterm_soft_shutdown_requeues_running_runs_which_resume_elsewhere_without_a_step_twice(
    chaos_fleet: Fleet,
) -> None:
    fleet = chaos_fleet
    restore_fleet(fleet)
    slots = AGENT_WORKERS * AGENT_CONCURRENCY
    steps = 25  # the fleet's cap; 1 s each, so a run outlasts the 15 s soft shutdown
    ids = submit_all(
        fleet,
        [
            {"agent": "scripted", "input": {"plan": [{"sleep": 1.0}], "loop": True},
             "budgets": {"max_steps": steps, "max_seconds": 60}}
            for _ in range(slots)
        ],
    )  # fmt: skip
    workers = live(fleet, "worker")
    wait_for(
        lambda: sum(map(len, holders_by_worker(fleet, workers).values())) == slots, 30, "runs not started"
    )
    held = holders_by_worker(fleet, workers)
    victim = next(w for w in workers if held[w.popen.pid])
    victim_runs = held[victim.popen.pid]

    sent_at = time.monotonic()
    os.kill(victim.popen.pid, signal.SIGTERM)  # as `docker stop` / Kubernetes: the main process only
    spawn_agent_worker(fleet)  # the replacement a rollout starts
    try:
        victim.popen.wait(timeout=STOP_GRACE_S + 10)
    except Exception:
        kill_group(victim)
        raise
    exited_after_s = time.monotonic() - sent_at

    wait_all_terminal(fleet, ids, timeout_s=90)
    runs = fetch_all(fleet, ids)
    print(
        f"\nvictim held {len(victim_runs)} runs; it exited {exited_after_s:.1f} s after SIGTERM "
        f"(code {victim.popen.returncode}); attempts of its runs: {[attempts(fleet, r) for r in victim_runs]}"
    )
    assert exited_after_s < STOP_GRACE_S, "the worker outlived the grace period: it would be SIGKILLed"
    assert exited_after_s >= SOFT_SHUTDOWN_S - 1, "the running runs did not get their soft-shutdown time"
    for run in runs.values():
        assert (run["status"], run["stop_reason"]) == ("stopped", "max_steps"), run
        assert run["usage"]["steps"] == steps, run
        assert [s["step"] for s in run["steps"]] == list(range(1, steps + 1)), run["id"]
        assert_within_budgets(fleet, run)
    for run_id in victim_runs:
        assert attempts(fleet, run_id) == 2, "the run was not requeued and resumed once"
    assert "soft shutdown" in victim.text().lower()  # Celery's "Initiating Soft Shutdown" line


# -- 4. A faulty dependency: 503s, hangs, a 429 storm ---------------------------------------------------


@pytest.mark.timeout(300)
def test_under_503s_hangs_and_a_429_storm_retries_stay_bounded_breakers_open_and_runs_end_in_time(
    chaos_fleet: Fleet,
) -> None:
    fleet = chaos_fleet
    restore_fleet(fleet)
    faults = {
        "flaky": Faults(error_rate=0.3, hang_rate=0.1, hang_s=2.0),
        "throttled": Faults(throttle=True, retry_after_s=1),
    }
    srv = ChaosServer(SEED, faults)
    try:
        warm_up_http_tools(fleet, srv)
        max_seconds = 8
        bodies = []
        for i in range(20):
            plan: list[dict[str, Any]] = []
            for call in range(1, 7):
                path = "flaky" if call <= 4 else "throttled"  # then the 429 storm
                url = srv.url(f"/{path}/{i}/{call}")
                plan.append({"tool": "http.get", "args": {"url": url, "headers": {"X-Call": f"{i}:{call}"}}})
                plan.append({"sleep": 0.5})  # think time, as a model call would take
            plan.append({"final": "done"})
            budgets = {"max_steps": 20, "max_tool_calls": 12, "max_seconds": max_seconds}
            bodies.append({"agent": "scripted", "input": {"plan": plan}, "budgets": budgets})

        states: set[str] = set()
        stop = threading.Event()

        def watch_breaker() -> None:
            while not stop.wait(0.05):
                with contextlib.suppress(Exception):
                    states.add(str(fleet.r.hget("fleet:breaker:http.get", "state") or "closed"))

        watcher = threading.Thread(target=watch_breaker, daemon=True)
        watcher.start()
        ids = submit_all(fleet, bodies)
        try:
            wait_all_terminal(fleet, ids, timeout_s=120)
        finally:
            stop.set()
            watcher.join()
        runs = fetch_all(fleet, ids)
        gets = srv.requests("GET")
    finally:
        srv.close()

    calls = sum(r["usage"]["tool_calls"] for r in runs.values())
    errors = Counter(s.get("error_type") or "ok" for r in runs.values() for s in r["steps"] if "tool" in s)
    outcomes = Counter(s.outcome for s in gets)
    per_call = Counter(s.call for s in gets)
    ends = Counter(f"{r['status']}/{r['stop_reason']}" for r in runs.values())
    print(
        f"\nruns: {dict(ends)}"
        f"\ncalls: {calls}, requests: {len(gets)} {dict(outcomes)}, step results: {dict(errors)}"
        f"\nbreaker states seen: {sorted(states)}"
    )
    # Every run ended within its time budget, the hangs and Retry-After waits included.
    for run in runs.values():
        assert run["status"] in ("succeeded", "stopped"), run
        assert run["stop_reason"] in ("finish", "max_seconds"), run
        assert_within_budgets(fleet, run)
        assert_steps_once_each(run)
    # Retries are bounded per call (retries.max) and fleet-wide (the retry budget; the constant
    # allows min_retries in each of the two windows the test may straddle).
    assert max(per_call.values()) <= 1 + RETRIES_MAX, per_call.most_common(3)
    assert len(gets) <= (1 + RETRY_RATIO) * calls + 2 * MIN_RETRIES, (len(gets), calls)
    assert len(gets) > len(per_call), "no call was retried at all"
    # Retry-After: 1 was honoured between the attempts of one throttled call.
    by_call: dict[str, list[float]] = {}
    for s in gets:
        if s.outcome == "429":
            by_call.setdefault(str(s.call), []).append(s.t)
    gaps = [b - a for times in by_call.values() for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.95 for gap in gaps), [
        (c, [round(t - times[0], 3) for t in times]) for c, times in by_call.items() if len(times) > 1
    ]
    # The breaker opened: seen open, and calls were refused without a request.
    assert "open" in states or errors["circuit_open"] > 0, (states, errors)
    assert errors["circuit_open"] > 0, errors
