"""The tool gateway across a real fleet: rate limits, breaker, retries, bulkheads, per-tool queues.

Every test drives real `fleet` processes against a real Redis and a local HTTP server, and judges
by what the server saw (request paths and timestamps) and by the runs' records and step logs.

Two fleets, one per configuration:
- `limited_fleet`: `http.get` limited to 10/s, 2 agent workers and 3 tool workers, one retry;
- `breaker_fleet`: two retries within a 20 % retry budget, a breaker with a short cool-down and
  a fleet-wide limit of 2 on `test.sleep`; its tool workers change with the test (threads, queues), and
  a worker whose threads hang in `test.sleep` is SIGKILLed rather than waited for.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import httpx
import pytest

from tests.harness import Fleet, Proc, RedisServer, wait_for

RATE_PER_S = 10
WINDOW_S = 10.0
BURST = 1  # the GCRA's default: one call back to back, then one per interval


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a worker killed mid-request resets its connection; that is not the test's concern


class ScriptedServer:
    """A local HTTP server that records each request's path and arrival time.

    Paths: `/ok/...` answers 200; `/flaky/...` answers `flaky_status` (503 or 200, switched by the
    test, without `Retry-After`); `/status/<code>/...` answers that code, with `Retry-After: 2`
    for 429 and 503.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        self.flaky_status = 503
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with outer.lock:
                    outer.requests.append((self.path, time.time()))
                    flaky_status = outer.flaky_status
                parts = self.path.strip("/").split("/")
                status, headers = 200, {}
                if parts[0] == "flaky":
                    status = flaky_status
                elif parts[0] == "status" and len(parts) > 1:
                    status = int(parts[1])
                    if status in (429, 503):
                        headers["Retry-After"] = "2"
                payload = json.dumps({"path": self.path}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(payload)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def times(self, prefix: str) -> list[float]:
        """Arrival times of the requests whose path starts with `prefix`, oldest first."""
        with self.lock:
            return sorted(t for p, t in self.requests if p.startswith(prefix))

    def count(self, prefix: str = "/") -> int:
        return len(self.times(prefix))

    def hits(self, path: str) -> list[float]:
        """Arrival times of the requests for exactly `path`, oldest first."""
        with self.lock:
            return sorted(t for p, t in self.requests if p == path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- helpers ----------------------------------------------------------------------------------------


def agent_worker_argv(concurrency: int) -> list[str]:
    return ["worker", "--concurrency", str(concurrency), "-n", f"agent-{uuid.uuid4().hex[:6]}@%h",
            "--without-mingle"]  # fmt: skip


def tool_worker_argv(*extra: str) -> list[str]:
    return ["tool-worker", "-n", f"tool-{uuid.uuid4().hex[:6]}@%h", "--without-mingle", *extra]


def start_together(fleet: Fleet, *argvs: list[str]) -> list[Proc]:
    """Start several worker processes at once (faster than one by one) and wait until each is ready."""
    procs = [fleet.spawn(argv[0], *argv) for argv in argvs]
    for proc in procs:
        wait_for(lambda p=proc: " ready." in p.text(), 60, f"{proc.name} did not start:\n{proc.text()}")
    return procs


def start_api(fleet: Fleet) -> Proc:
    """`fleet api`, waited for longer than the harness does: other suites may load the machine."""
    proc = fleet.spawn("api", "api")
    wait_for(lambda: api_answers(fleet), 60, f"API did not start:\n{proc.text()}")
    return proc


def api_answers(fleet: Fleet) -> bool:
    try:
        return httpx.get(f"{fleet.url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def kill_now(proc: Proc) -> None:
    """SIGKILL a worker we started: its threads may be stuck in a hanging tool for a long time."""
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)


def submit_plan(fleet: Fleet, plan: list[dict[str, Any]], loop: bool = False, **budgets: Any) -> str:
    body: dict[str, Any] = {"budgets": budgets} if budgets else {}
    return str(fleet.submit(input={"plan": plan, "loop": loop}, **body)["id"])


def wait_all(fleet: Fleet, run_ids: list[str], timeout: float = 40) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    return [fleet.wait(run_id, timeout=max(1.0, deadline - time.monotonic())) for run_id in run_ids]


def cancel(fleet: Fleet, run_id: str) -> None:
    with fleet.client() as c:
        resp = c.post(f"/v1/runs/{run_id}/cancel")
    assert resp.status_code == 202, resp.text


def epoch(stamp: str) -> float:
    """A run record's ISO 8601 UTC time as Unix seconds."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def tool_steps(run: dict[str, Any], tool: str) -> list[dict[str, Any]]:
    return [s for s in run["steps"] if s.get("tool") == tool]


def echo_plan(calls: int) -> list[dict[str, Any]]:
    return [*({"tool": "echo", "args": {"n": n}} for n in range(calls)), {"final": "echoed"}]


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    yield srv
    srv.close()


# == fleet 1: a fleet-wide rate limit over 3 tool workers and 2 agent workers =======================

LIMITED_CONFIG: dict[str, Any] = {
    "runtime": {"env": {"AGENT_MAX_STEPS": 2000, "AGENT_MAX_TOOL_CALLS": 1000, "AGENT_MAX_SECONDS": 60}},
    "tools": {
        "rate_limits": {"http.get": f"{RATE_PER_S}/s"},
        "retries": {"max": 1, "backoff_ms": [50]},
    },
}


@pytest.fixture(scope="module")
def limited_fleet() -> Iterator[Fleet]:
    redis_server = RedisServer()
    fleet = Fleet(redis_server, LIMITED_CONFIG)
    try:
        start_api(fleet)
        start_together(
            fleet,
            agent_worker_argv(4),
            agent_worker_argv(4),
            tool_worker_argv(),
            tool_worker_argv(),
            tool_worker_argv(),
        )
        yield fleet
    finally:
        fleet.close()
        redis_server.close()


def test_rate_limit_holds_fleet_wide_across_3_tool_workers_and_2_agent_workers(
    limited_fleet: Fleet, server: ScriptedServer
) -> None:
    fleet = limited_fleet
    # Warm every process up first, so a cold first request does not stretch the measured window.
    warm = [submit_plan(fleet, [{"tool": "http.get", "args": {"url": server.url("/ok/warm")}},
                                {"tool": "echo", "args": {}}]) for _ in range(8)]  # fmt: skip
    assert all(run["status"] == "succeeded" for run in wait_all(fleet, warm)), fleet.logs()

    # 8 looping runs (one per agent process) all want http.get as fast as the fleet can serve it;
    # the echo between two http.get calls measures the fleet's unlimited round trip.
    path = "/ok/limited"
    plan = [{"tool": "http.get", "args": {"url": server.url(path)}}, {"tool": "echo", "args": {}}]
    runs = [submit_plan(fleet, plan, loop=True, max_seconds=20) for _ in range(8)]
    try:
        wait_for(
            lambda: len(ts := server.times(path)) > 0 and ts[-1] >= ts[0] + WINDOW_S + 0.5,
            40,
            f"the runs did not call http.get for {WINDOW_S} s:\n{fleet.logs()}",
        )
    finally:
        for run_id in runs:
            cancel(fleet, run_id)
    done = wait_all(fleet, runs)

    times = server.times(path)
    in_window = [t for t in times if t <= times[0] + WINDOW_S]
    ideal = RATE_PER_S * WINDOW_S + BURST  # slots at t0, t0 + 0.1 s, ..., t0 + 10 s
    assert len(in_window) <= ideal + 2, f"{len(in_window)} requests in {WINDOW_S} s at {RATE_PER_S}/s"
    assert len(in_window) >= 0.9 * ideal, (
        f"only {len(in_window)} requests in {WINDOW_S} s: the limit was not used"
    )

    # The limiter, not the fleet, was the bottleneck: every run took part, no call failed (no
    # bulkhead or thread shortage), and an http.get step (waiting for its slot) took far longer
    # than the unlimited echo round trip beside it.
    for run in done:
        assert run["status"] == "cancelled", run
        assert len(tool_steps(run, "http.get")) >= 3, run
        assert all(s["ok"] for s in run["steps"]), run["steps"]
    http_ms = statistics.median(s["duration_ms"] for run in done for s in tool_steps(run, "http.get"))
    echo_ms = statistics.median(s["duration_ms"] for run in done for s in tool_steps(run, "echo"))
    assert echo_ms < 250, f"echo took {echo_ms} ms: the fleet itself is too slow to test the limit"
    assert http_ms > 2 * echo_ms, f"http.get {http_ms} ms vs echo {echo_ms} ms: no run waited for a slot"

    # Both agent workers ran runs and all three tool workers made calls.
    agents = [p for p in fleet.procs if p.name == "worker"]
    tool_workers = [p for p in fleet.procs if p.name == "tool-worker"]
    assert len(agents) == 2 and len(tool_workers) == 3
    for proc in agents:
        assert '"run started"' in proc.text(), f"an agent worker ran no run:\n{proc.text()[-2000:]}"
    for proc in tool_workers:
        assert '"tool executed"' in proc.text(), f"a tool worker made no call:\n{proc.text()[-2000:]}"


def test_429_retry_after_2_s_delays_the_retry_by_at_least_2_s(
    limited_fleet: Fleet, server: ScriptedServer
) -> None:
    path = f"/status/429/wait-{uuid.uuid4().hex[:8]}"
    run_id = submit_plan(limited_fleet, [{"tool": "http.get", "args": {"url": server.url(path)}},
                                         {"final": "went on"}])  # fmt: skip
    done = limited_fleet.wait(run_id)
    assert done["status"] == "succeeded", done
    step = done["steps"][0]
    assert step["ok"] is False and step["error_type"] == "http_error", step
    times = server.times(path)
    assert len(times) == 2, f"retries.max is 1, the server saw {len(times)} requests"
    assert times[1] - times[0] >= 2.0, f"retried {times[1] - times[0]:.3f} s after a Retry-After of 2 s"
    assert done["usage"]["tool_calls"] == 1  # a retry is part of its call


def test_429_retry_after_past_the_deadline_returns_at_once(
    limited_fleet: Fleet, server: ScriptedServer
) -> None:
    path = f"/status/429/deadline-{uuid.uuid4().hex[:8]}"
    plan: list[dict[str, Any]] = [
        {"tool": "http.get", "args": {"url": server.url(path)}},
        {"final": "went on"},
    ]
    run_id = submit_plan(limited_fleet, plan, max_seconds=1.5)
    done = limited_fleet.wait(run_id)
    # Waiting 2 s for the retry would have ended the run by max_seconds; it went on instead.
    assert done["status"] == "succeeded" and done["output"] == "went on", done
    step = done["steps"][0]
    assert step["ok"] is False and step["error_type"] == "http_error", step
    assert step["duration_ms"] < 1000, step
    assert server.count(path) == 1


def test_args_that_do_not_match_the_schema_are_invalid_args_and_send_nothing(
    limited_fleet: Fleet, server: ScriptedServer
) -> None:
    path = f"/ok/invalid-{uuid.uuid4().hex[:8]}"
    before = server.count()
    plan: list[dict[str, Any]] = [
        {"tool": "http.get", "args": {"url": 5}},
        {"tool": "http.get", "args": {"url": server.url(path), "extra": 1}},
        {"tool": "test.sleep", "args": {"seconds": 30, "extra": 1}},
        {"final": "went on"},
    ]
    done = limited_fleet.wait(submit_plan(limited_fleet, plan))
    assert done["status"] == "succeeded" and done["output"] == "went on", done
    assert [(s["tool"], s["ok"], s.get("error_type")) for s in done["steps"]] == [
        ("http.get", False, "invalid_args"),
        ("http.get", False, "invalid_args"),
        ("test.sleep", False, "invalid_args"),
    ]
    for step in done["steps"]:
        assert step["decision"]["decision"] == "denied" and step["decision"]["reason"] == "invalid_args"
        assert step["duration_ms"] < 1000  # test.sleep never ran
    assert server.count() == before
    assert server.count(path) == 0


# == fleet 2: breaker and retry budget, bulkheads, per-tool queues ==================================

SLEEP_BULKHEAD = 2
BREAKER = {
    # The breaker opens only after 20 failed attempts, so until then the retry budget alone bounds
    # the retries. The cool-down is short enough for the test to see a probe close the breaker,
    # and long enough that the first calls after the recovery are still refused.
    "failure_threshold": 20,
    "min_calls": 20,
    "window_s": 60,
    "cooldown_s": 3.0,
}
BREAKER_CONFIG: dict[str, Any] = {
    "runtime": {"env": {"AGENT_MAX_STEPS": 200, "AGENT_MAX_TOOL_CALLS": 100, "AGENT_MAX_SECONDS": 60}},
    "tools": {
        "retries": {"max": 2, "backoff_ms": [50, 100]},
        "retry_budget": {"ratio": 0.2, "min_retries": 3, "window_s": 60},
        "breaker": BREAKER,
        "max_concurrency": {"test.sleep": SLEEP_BULKHEAD},
    },
}
SHARED_TOOL_THREADS = 4


@pytest.fixture(scope="module")
def breaker_fleet() -> Iterator[Fleet]:
    """API and one agent worker with 8 processes; each test sets up the tool workers it needs."""
    redis_server = RedisServer()
    fleet = Fleet(redis_server, BREAKER_CONFIG)
    try:
        start_api(fleet)
        start_together(fleet, agent_worker_argv(8))
        yield fleet
    finally:
        fleet.close()
        redis_server.close()


def live_tool_workers(fleet: Fleet) -> list[Proc]:
    return [p for p in fleet.procs if p.name == "tool-worker" and p.popen.poll() is None]


def shared_tool_worker(fleet: Fleet) -> Proc:
    """The fleet's only tool worker: on every queue, with SHARED_TOOL_THREADS threads."""
    shared = None
    for proc in live_tool_workers(fleet):
        if shared is None and "-Q" not in cast(list[str], proc.popen.args):
            shared = proc
        else:
            kill_now(proc)
    if shared is None:
        (shared,) = start_together(fleet, tool_worker_argv("--concurrency", str(SHARED_TOOL_THREADS)))
    return shared


def test_breaker_opens_on_503s_with_retries_within_budget_then_a_probe_closes_it(
    breaker_fleet: Fleet, server: ScriptedServer
) -> None:
    fleet = breaker_fleet
    shared_tool_worker(fleet)
    server.flaky_status = 503
    tag = uuid.uuid4().hex[:8]
    runs = {
        submit_plan(fleet, [{"tool": "http.get", "args": {"url": server.url(f"/flaky/{tag}/{i}/{n}")}}
                            for n in range(2)]): i
        for i in range(20)
    }  # fmt: skip
    done = wait_all(fleet, list(runs))
    calls = [
        (f"/flaky/{tag}/{runs[run['id']]}/{n}", step) for run in done for n, step in enumerate(run["steps"])
    ]
    assert len(calls) == 40 and all(run["status"] == "succeeded" for run in done), done

    requests = {path: len(server.hits(path)) for path, _ in calls}
    total = sum(requests.values())
    reached = [path for path, n in requests.items() if n > 0]
    retries = total - len(reached)
    # Retries happened, each call at most 1 + retries.max times, within the 20 % budget.
    assert retries >= 1, f"no call was retried: {requests}"
    assert max(requests.values()) <= 3, requests
    assert total <= 1.2 * len(calls) + 5, f"{total} requests for {len(calls)} calls"
    assert total <= 1.2 * len(reached) + 5, (
        f"{retries} retries for {len(reached)} calls that reached the server"
    )

    # The breaker opened: later calls were refused at once, and none of them reached the server.
    refused = [(path, step) for path, step in calls if step.get("error_type") == "circuit_open"]
    assert len(refused) >= 10, [step.get("error_type") for _, step in calls]
    for path, step in calls:
        assert step["ok"] is False and step["error_type"] in ("http_error", "circuit_open"), step
        if requests[path] == 0:
            assert step["error_type"] == "circuit_open", (path, step)
            assert step["decision"]["decision"] == "denied", step
            assert step["duration_ms"] < 1000, step
    breaker_key = "fleet:breaker:http.get"
    assert fleet.r.hget(breaker_key, "state") == "open"
    opened_s = int(fleet.r.hget(breaker_key, "opened_ms") or 0) / 1000

    # The dependency recovers: after the cool-down one probe passes, the breaker closes, calls succeed.
    server.flaky_status = 200
    plan: list[dict[str, Any]] = []
    for n in range(20):
        plan += [
            {"tool": "http.get", "args": {"url": server.url(f"/flaky/{tag}/recover/{n}")}},
            {"sleep": 0.25},
        ]
    recovered = fleet.wait(submit_plan(fleet, plan), timeout=40)
    assert recovered["status"] == "succeeded", recovered
    outcomes = [s.get("error_type") or "ok" for s in tool_steps(recovered, "http.get")]
    first_ok = outcomes.index("ok")
    assert set(outcomes[:first_ok]) <= {"circuit_open"}, outcomes
    assert set(outcomes[first_ok:]) == {"ok"} and len(outcomes) - first_ok >= 3, outcomes
    for n, outcome in enumerate(outcomes):
        assert len(server.hits(f"/flaky/{tag}/recover/{n}")) == (1 if outcome == "ok" else 0), (n, outcomes)
    probe_t = server.hits(f"/flaky/{tag}/recover/{first_ok}")[0]
    assert probe_t >= opened_s + BREAKER["cooldown_s"] - 0.05, "a call passed before the cool-down"
    if epoch(recovered["started_at"]) < opened_s + BREAKER["cooldown_s"] - 1.0:
        assert outcomes[0] == "circuit_open", outcomes  # still cooling down: refused, not sent
    assert fleet.r.hget(breaker_key, "state") == "closed"


def test_bulkhead_keeps_a_hanging_tool_from_taking_every_thread(breaker_fleet: Fleet) -> None:
    fleet = breaker_fleet
    shared = shared_tool_worker(fleet)
    hanging = [{"tool": "test.sleep", "args": {"seconds": 30}}]
    a_runs = [submit_plan(fleet, hanging, max_seconds=30) for _ in range(SHARED_TOOL_THREADS + 1)]
    try:
        # More hanging calls than the limit: 2 run, the rest are refused at once.
        def ended() -> list[dict[str, Any]]:
            runs = [fleet.get(run_id, steps="true") for run_id in a_runs]
            return [run for run in runs if run["status"] != "running" and run["status"] != "queued"]

        wait_for(
            lambda: len(ended()) >= len(a_runs) - SLEEP_BULKHEAD, 30, f"no call was refused:\n{fleet.logs()}"
        )
        refused = ended()
        assert len(refused) == len(a_runs) - SLEEP_BULKHEAD, refused
        for run in refused:
            step = run["steps"][0]
            assert step["error_type"] == "rate_limited" and "busy" in step["decision"]["reason"], step
        hung = [run_id for run_id in a_runs if run_id not in {run["id"] for run in refused}]

        # Meanwhile echo, on the same worker, answers in its normal time.
        b_run = fleet.wait(submit_plan(fleet, echo_plan(10)), timeout=30)
        assert b_run["status"] == "succeeded", b_run
        durations = [s["duration_ms"] for s in tool_steps(b_run, "echo")]
        assert len(durations) == 10 and all(s["ok"] for s in b_run["steps"]), b_run["steps"]
        assert max(durations) < 1000, durations
        assert all(fleet.get(run_id)["status"] == "running" for run_id in hung)  # A was still hanging
    finally:
        for run_id in a_runs:
            cancel(fleet, run_id)
        wait_all(fleet, a_runs)
        kill_now(shared)  # its 2 calls sleep on; do not wait 30 s for them at shutdown
        # The killed worker's 2 slots of the fleet-wide limit would lapse after the calls' timeout
        # + 1 s; the next test does not wait for that.
        fleet.r.delete("fleet:toolslots:test.sleep")


def test_per_tool_queues_keep_a_hanging_tools_backlog_off_other_tools(breaker_fleet: Fleet) -> None:
    fleet = breaker_fleet
    for proc in live_tool_workers(fleet):
        kill_now(proc)
    fleet.r.delete("tools.test.sleep")  # leftovers of an earlier test
    # The sleep worker holds at most 2 calls (tools.worker_max_inflight); its one Celery thread
    # then waits with a third call's message, unacked, and the fourth stays in the queue.
    fleet.env["FLEET_TOOLS__WORKER_MAX_INFLIGHT"] = "2"
    try:
        sleep_argv = tool_worker_argv("-Q", "tools.test.sleep", "--concurrency", "1")
        sleep_worker = fleet.spawn(sleep_argv[0], *sleep_argv)
    finally:
        del fleet.env["FLEET_TOOLS__WORKER_MAX_INFLIGHT"]
    (other_worker,) = start_together(fleet, tool_worker_argv("-Q", "tools.echo,tools.http.get"))
    wait_for(lambda: " ready." in sleep_worker.text(), 60, f"no sleep worker:\n{sleep_worker.text()}")
    hanging = [{"tool": "test.sleep", "args": {"seconds": 30}}]
    a_runs = [submit_plan(fleet, hanging, max_seconds=30) for _ in range(4)]
    try:
        wait_for(
            lambda: (
                fleet.r.llen("tools.test.sleep") == 1
                and all(fleet.get(run_id)["status"] == "running" for run_id in a_runs)
            ),
            30,
            f"the sleep queue never held 1 call:\n{fleet.logs()}",
        )
        b_run = fleet.wait(submit_plan(fleet, echo_plan(10)), timeout=30)
        assert b_run["status"] == "succeeded", b_run
        durations = [s["duration_ms"] for s in tool_steps(b_run, "echo")]
        assert len(durations) == 10 and all(s["ok"] for s in b_run["steps"]), b_run["steps"]
        assert max(durations) < 1000, durations
        assert fleet.r.llen("tools.test.sleep") == 1  # A's backlog was still there, untouched
        assert all(fleet.get(run_id)["status"] == "running" for run_id in a_runs)
        assert '"tool executed"' in other_worker.text()  # B went to the other worker
        # the sleep worker finished nothing: its two calls still hang, and no echo went there
        assert '"tool executed"' not in sleep_worker.text()
    finally:
        for run_id in a_runs:
            cancel(fleet, run_id)
        wait_all(fleet, a_runs)
        kill_now(sleep_worker)
        fleet.stop_proc(other_worker)
        # The queued call outlives its cancelled run (until its message expires): a later
        # worker on this queue would still run it, so it goes.
        fleet.r.delete("tools.test.sleep")
