"""The tool worker's event loop (worker/gateway/pool.py) with real parts: a redis-server, real
`fleet tool-worker` processes and a slow loopback HTTP server that counts the requests it holds.

The slot scripts of the fleet-wide per-tool limit are unit-tested at the end, on fakeredis.
Most tests drive calls the way a run does, without one: a run record in Redis (a tool worker
refuses a call of a run that does not exist), a `fleet.tool_call` message on the tool's queue,
and the reply read from the call's reply list. The crash test runs through the whole fleet.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from tests.harness import CountingServer, Fleet, Proc, RedisServer, SlowServer, deep_merge, wait_for
from worker.celery_app import TOOL_TASK
from worker.gateway.toolslots import ToolSlots
from worker.keys import Keys, tool_queue
from worker.run.store import Budgets, RunStore
from worker.run.unacked import KOMBU_UNACKED
from worker.settings import Settings

KEYS = Keys("fleet")
CONFIG: dict[str, Any] = {
    "tools": {
        "allowlist": ["echo", "http.get", "http.post", "test.sleep", "test.asleep"],
        "http": {"allow_hosts": ["127.0.0.1"]},
    },
}
ENV = {"FLEET_LOG_FORMAT": "json"}


class Calls:
    """Sends tool calls as the gateway does and reads their replies as a run does."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.client = Celery(broker=fleet.redis.url)
        self.store = RunStore(fleet.r, KEYS)

    def close(self) -> None:
        self.client.close()

    def run(self) -> str:
        """A queued run record the calls can belong to."""
        run_id = f"tp-{uuid.uuid4().hex[:12]}"
        budgets = Budgets(max_steps=5, max_tool_calls=5, max_seconds=120)
        self.store.create(run_id, tenant="t1", agent="scripted", input={}, budgets=budgets, metadata={})
        return run_id

    def send(self, tool: str, args: dict[str, Any], timeout_s: float, count: int = 1) -> list[str]:
        """`count` calls (one run each, step 1, attempt 0); their call ids."""
        call_ids = [f"{self.run()}:1:0" for _ in range(count)]
        for call_id in call_ids:
            # the gateway's attempt marker: the tool worker settles (breaker, record) the current attempt
            self.fleet.r.hset(KEYS.call(call_id), "attempt", 0)
            self.client.send_task(
                "fleet.tool_call", args=[call_id, 0, tool, args, timeout_s], queue=tool_queue(tool)
            )
        return call_ids

    def replies(self, call_ids: list[str], within_s: float) -> dict[str, dict[str, Any]]:
        """The envelope of each call that replied within `within_s`."""
        got: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + within_s
        while len(got) < len(call_ids) and time.monotonic() < deadline:
            pending = [c for c in call_ids if c not in got]
            with contextlib.suppress(OSError, Exception):
                pipe = self.fleet.r.pipeline(transaction=False)
                for call_id in pending:
                    pipe.lpop(KEYS.call_reply(call_id, 0))
                for call_id, raw in zip(pending, pipe.execute(), strict=True):
                    if raw is not None:
                        got[call_id] = json.loads(raw)["envelope"]
            time.sleep(0.05)
        return got


def outcomes(replies: dict[str, dict[str, Any]]) -> Counter[str]:
    return Counter("ok" if e["ok"] else e["error"]["type"] for e in replies.values())


@pytest.fixture
def slow() -> Iterator[SlowServer]:
    server = SlowServer(wait_s=3.0)
    yield server
    # its loop thread is a daemon: it ends with the test process


@contextlib.contextmanager
def tool_fleet(
    config: dict[str, Any] | None = None, appendonly: bool = False, env: dict[str, str] | None = None
) -> Iterator[tuple[Fleet, Calls]]:
    """A redis-server and a Fleet (no process started yet) with a Calls driver."""
    server = RedisServer(appendonly=appendonly)
    fleet = Fleet(server, deep_merge(CONFIG, config or {}), {**ENV, **(env or {})})
    calls = Calls(fleet)
    try:
        yield fleet, calls
    finally:
        calls.close()
        fleet.close()
        server.close()


# -- 1,000 calls at once ---------------------------------------------------------------------------


HELD_CALLS = 1000


def test_one_tool_worker_holds_a_thousand_calls_at_once(slow: SlowServer) -> None:
    # Each answer takes 20 s: the worker takes in calls at a few hundred a second on 2 cores
    # (Celery's per-message work), so all of them are in flight together well before the first
    # answer, on a loaded machine too. bench/bench_tool_pool.py measures 4 s calls.
    slow.wait_s = 20.0
    with tool_fleet() as (fleet, calls):
        proc = fleet.start_tool_worker()
        call_ids = calls.send("http.get", {"url": slow.url("/held")}, timeout_s=60.0, count=HELD_CALLS)
        replies = calls.replies(call_ids, within_s=120)
        assert outcomes(replies) == {"ok": HELD_CALLS}, (outcomes(replies), proc.text()[-3000:])
        # one process held (nearly) all of them at once: a thread per call held about half
        assert slow.peak >= 900, slow.peak
        assert slow.paths["/held"] == HELD_CALLS  # none reached the server twice


# -- plain, async and overrunning tools ----------------------------------------------------------------


def test_plain_and_async_tools_answer_and_a_plain_tool_that_overruns_answers_timeout() -> None:
    with tool_fleet() as (fleet, calls):
        proc = fleet.start_tool_worker()
        overrun = calls.send("test.sleep", {"seconds": 5}, timeout_s=0.5)
        plain = calls.send("echo", {"x": 1}, timeout_s=3.0)
        asleep = calls.send("test.asleep", {"seconds": 0.2}, timeout_s=3.0)
        slow_async = calls.send("test.asleep", {"seconds": 5}, timeout_s=0.5)
        started = time.monotonic()
        replies = calls.replies(overrun + plain + asleep + slow_async, within_s=20)
        assert len(replies) == 4, proc.text()[-3000:]
        assert time.monotonic() - started < 4.5  # the overrunning calls did not wait for their tools
        assert replies[plain[0]] == {"ok": True, "result": {"x": 1}}
        assert replies[asleep[0]] == {"ok": True, "result": {"slept": 0.2, "async": True}}
        for call_id in overrun + slow_async:
            assert replies[call_id]["error"]["type"] == "timeout", replies[call_id]
            assert "did not answer within 0.5 s" in replies[call_id]["error"]["message"]


# -- the fleet-wide limit per tool ---------------------------------------------------------------------


def test_a_tools_limit_holds_across_tool_workers(slow: SlowServer) -> None:
    slow.wait_s = 2.0
    with tool_fleet({"tools": {"max_concurrency": {"http.get": 3}}}) as (fleet, calls):
        fleet.start_tool_worker()
        fleet.start_tool_worker()
        call_ids = calls.send("http.get", {"url": slow.url("/limited")}, timeout_s=10.0, count=12)
        replies = calls.replies(call_ids, within_s=30)
        counts = outcomes(replies)
        assert slow.peak <= 3, slow.peak
        assert counts["ok"] >= 3 and counts["ok"] + counts["rate_limited"] == 12, counts
        assert counts["rate_limited"] >= 1, counts
        limited = next(e for e in replies.values() if not e["ok"])
        assert "3 calls in flight in the fleet" in limited["error"]["message"]
        # a refused call is not reported to the breaker: only the calls that ran are counted
        assert int(fleet.r.hget(KEYS.breaker("http.get"), "win_calls") or 0) == counts["ok"]
        wait_for(lambda: fleet.r.zcard(KEYS.tool_slots("http.get")) == 0, 5, "slots left behind")


# -- backpressure ---------------------------------------------------------------------------------------


def test_past_worker_max_inflight_calls_wait_and_all_are_answered(slow: SlowServer) -> None:
    slow.wait_s = 1.0
    with tool_fleet({"tools": {"worker_max_inflight": 5}}) as (fleet, calls):
        proc = fleet.start_tool_worker()
        call_ids = calls.send("http.get", {"url": slow.url("/pressed")}, timeout_s=30.0, count=20)
        replies = calls.replies(call_ids, within_s=40)
        assert outcomes(replies) == {"ok": 20}, (outcomes(replies), proc.text()[-3000:])
        assert 1 <= slow.peak <= 5, slow.peak  # never more than the process may hold


# -- soft shutdown --------------------------------------------------------------------------------------


@pytest.mark.parametrize("remap", ["", "SIGQUIT"], ids=["warm", "cold as in the image"])
def test_sigterm_finishes_calls_in_flight_and_takes_no_new_ones(slow: SlowServer, remap: str) -> None:
    # The worker image sets REMAP_SIGTERM=SIGQUIT: SIGTERM is then Celery's cold shutdown.
    with tool_fleet(env={"REMAP_SIGTERM": remap} if remap else {}) as (fleet, calls):
        proc = fleet.start_tool_worker()
        held = calls.send("http.get", {"url": slow.url("/draining")}, timeout_s=20.0, count=10)
        wait_for(lambda: slow.in_flight >= 10, 20, f"the calls never reached the server\n{proc.text()}")
        os.killpg(proc.popen.pid, signal.SIGTERM)
        # logged once Celery has stopped consuming, while the calls are still at the server
        wait_for(lambda: "waiting for calls in flight" in proc.text(), 10, proc.text())
        assert slow.in_flight == 10
        later = calls.send("echo", {"late": True}, timeout_s=3.0)
        proc.popen.wait(timeout=30)
        replies = calls.replies(held, within_s=5)
        assert outcomes(replies) == {"ok": 10}, (outcomes(replies), proc.text()[-3000:])
        assert proc.popen.returncode == 0, proc.text()[-3000:]
        assert ("Cold shutdown" if remap else "Warm shutdown") in proc.text()
        assert calls.replies(later, within_s=0.5) == {}  # left in the queue, not lost
        fleet.start_tool_worker()
        assert calls.replies(later, within_s=20) == {later[0]: {"ok": True, "result": {"late": True}}}


# -- a Redis restart ------------------------------------------------------------------------------------


def test_the_tool_worker_answers_across_a_redis_restart_and_after_it(slow: SlowServer) -> None:
    with tool_fleet(appendonly=True) as (fleet, calls):
        proc = fleet.start_tool_worker()
        held = calls.send("http.get", {"url": slow.url("/across")}, timeout_s=20.0, count=5)
        wait_for(lambda: slow.in_flight >= 5, 20, f"the calls never reached the server\n{proc.text()}")
        fleet.redis.stop()  # the answers come while Redis is down: their replies wait for it
        time.sleep(4.0)
        fleet.redis.start()
        after = calls.send("echo", {"n": 2}, timeout_s=3.0)
        # the consumer reconnects within seconds; its messages wait in Redis meanwhile
        replies = calls.replies(held + after, within_s=60)
        assert outcomes(replies) == {"ok": 6}, (outcomes(replies), proc.text()[-3000:])
        assert replies[after[0]] == {"ok": True, "result": {"n": 2}}
        assert slow.paths["/across"] == 5 and proc.popen.poll() is None


# -- a tool worker killed in the middle of a write ------------------------------------------------------


def kill_group(proc: Proc) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(timeout=10)


def test_a_write_in_flight_on_a_killed_tool_worker_has_one_effect_and_the_run_ends() -> None:
    server = CountingServer()
    config = {
        "tools": {
            "timeouts_ms": {"http.post": 4000},
            "retries": {"max": 3, "backoff_ms": [100]},
        }
    }
    try:
        with tool_fleet(config) as (fleet, _calls):
            fleet.start_api()
            fleet.start_worker(2)
            tool_worker = fleet.start_tool_worker()
            plan = [
                {"tool": "http.post", "args": {"url": server.url("/sleep/2.5"), "json": {"amount": 1}}},
                {"final": "paid"},
            ]
            run = fleet.submit("scripted", {"plan": plan})
            wait_for(lambda: server.count("/sleep") >= 1, 30, fleet.logs())
            kill_group(tool_worker)  # mid-call: the POST is at the server, its reply never comes
            fleet.start_tool_worker()
            ended = fleet.wait(run["id"], timeout=60)
            assert ended["status"] == "succeeded", ended
            with server.lock:
                keys = [r["headers"].get("Idempotency-Key") for r in server.requests]
            # The call was retried after its attempt timed out (on a loaded machine a retry may
            # time out too: at most 1 + retries.max attempts): every request carries the call's
            # key, so a server that honours it applies the payment once.
            assert 1 <= len(keys) <= 4 and len(set(keys)) == 1 and keys[0], keys
            step = ended["steps"][0]
            assert step["ok"] is True, step
    finally:
        server.close()


def test_calls_a_killed_tool_worker_held_unbegun_are_kept_nowhere_and_their_runs_retry_them(
    slow: SlowServer,
) -> None:
    """A tool worker keeps the messages it holds in memory only (no kombu ack emulation: no record
    in Redis's `unacked`, which agent workers still use). One it held without beginning is lost
    with the process, and its run retries the call once the attempt times out, as for a call
    that was running."""
    slow.wait_s = 2.0
    config = {"tools": {"timeouts_ms": {"http.get": 3000}, "retries": {"max": 2, "backoff_ms": [100]}}}
    with tool_fleet(config) as (fleet, _calls):
        fleet.start_api()
        fleet.start_worker(2)
        fleet.env["FLEET_TOOLS__WORKER_MAX_INFLIGHT"] = "1"  # a second call waits in a Celery thread
        try:
            holder = fleet.start_tool_worker()
        finally:
            del fleet.env["FLEET_TOOLS__WORKER_MAX_INFLIGHT"]
        plans = [
            [{"tool": "http.get", "args": {"url": slow.url(f"/held/{n}")}}, {"final": "done"}] for n in (1, 2)
        ]
        runs = [fleet.submit("scripted", {"plan": plan}) for plan in plans]
        queue = tool_queue("http.get")
        # both calls were sent (each run's call record exists), and neither waits in the queue
        wait_for(
            lambda: (
                all(fleet.r.exists(KEYS.call(f"{run['id']}:1:0")) for run in runs)
                and slow.in_flight == 1
                and fleet.r.llen(queue) == 0
            ),
            30,
            f"the tool worker never held both calls\n{fleet.logs()}",
        )
        time.sleep(0.3)  # both messages are the tool worker's now: one call at the server, one waiting
        assert slow.in_flight == 1 and fleet.r.llen(queue) == 0
        assert slow.paths["/held/1"] + slow.paths["/held/2"] == 1, slow.paths
        held = [m for m in fleet.r.hvals(KOMBU_UNACKED) if TOOL_TASK in m]
        assert held == [], held  # neither message is recorded in Redis
        kill_group(holder)
        fleet.start_tool_worker()
        ended = [fleet.wait(run["id"], timeout=60) for run in runs]
        assert [run["status"] for run in ended] == ["succeeded", "succeeded"], ended
        steps = [fleet.get(run["id"], steps="true")["steps"][0] for run in runs]
        assert all(step["ok"] for step in steps), steps
        # each call reached the server again after the kill: the one that was at the server and
        # the one that never got there
        counts = sorted([slow.paths["/held/1"], slow.paths["/held/2"]])
        assert counts[0] >= 1 and counts[1] >= 2, slow.paths


def test_a_call_no_tool_worker_takes_times_out_without_telling_the_breaker() -> None:
    """A call that waits in its queue past its timeout (no tool worker consumes it here) is the
    fleet's timeout, not the tool's: its breaker, which one failure would open, stays closed."""
    config = {
        "tools": {
            "allowlist": ["echo"],
            "timeouts_ms": {"default": 8000, "echo": 500},
            "retries": {"max": 0},
            "breaker": {"failure_threshold": 1, "min_calls": 1},
        }
    }
    server = RedisServer()
    fleet = Fleet(server, config)
    try:
        fleet.start_api()
        fleet.start_worker(1)  # and no tool worker
        plan = {"plan": [{"tool": "echo", "args": {"n": 1}}, {"final": "done"}]}
        run = fleet.submit(input=plan, budgets={"max_seconds": 60})
        ended = fleet.wait(run["id"], timeout=30)
        step = fleet.get(run["id"], steps="true")["steps"][0]
        assert ended["status"] == "succeeded" and step["ok"] is False, (ended, step)
        assert step["error_type"] == "timeout", step
        recorded = json.loads(fleet.r.hget(KEYS.call(f"{run['id']}:1:0"), "result") or "{}")
        assert "no tool worker took the call" in recorded["error"]["message"], recorded
        assert fleet.r.hget(KEYS.breaker("echo"), "state") in (None, "closed")
        assert fleet.r.hget(KEYS.breaker("echo"), "win_calls") is None  # nothing was counted
    finally:
        fleet.close()
        server.close()


# -- the slot scripts (unit tests, fakeredis) ------------------------------------------------------------


def test_tool_slots_refuse_past_the_limit_and_free_on_release(r: Any) -> None:
    slots = ToolSlots(r)
    key = KEYS.tool_slots("http.get")
    assert [slots.acquire(key, f"c{i}#0", 2, 5.0) for i in range(3)] == [True, True, False]
    assert slots.acquire(key, "c0#0", 2, 5.0) is True  # the same attempt again keeps its slot
    slots.release(key, "c0#0")
    assert slots.acquire(key, "c2#0", 2, 5.0) is True
    assert r.zcard(key) == 2 and 0 < r.pttl(key) <= (5.0 + 1.0) * 1000


def test_a_slot_lapses_after_the_calls_timeout_and_grace(r: Any) -> None:
    """A worker that died holding a slot gives it back when the run has given up on the call."""
    slots = ToolSlots(r)
    key = KEYS.tool_slots("http.get")
    assert slots.acquire(key, "dead#0", 1, 0.0) is True  # lives 1 s: the reply grace
    assert slots.acquire(key, "next#0", 1, 5.0) is False
    time.sleep(1.1)
    assert slots.acquire(key, "next#0", 1, 5.0) is True
    assert r.zrange(key, 0, -1) == ["next#0"]


# -- the tool worker's checks before the tool (unit tests, fakeredis) -------------------------------------


def _executor_on(r: Any) -> tuple[Any, Any]:
    from tests.unit_parts import CountingRedis
    from worker.gateway.executor import ToolExecutor

    counting = CountingRedis(server=r.connection_pool.connection_kwargs["server"], decode_responses=True)
    return counting, ToolExecutor(counting, KEYS, Settings())


@pytest.fixture
def shared_r() -> Any:
    import fakeredis

    server = fakeredis.FakeServer()
    return fakeredis.FakeRedis(server=server, decode_responses=True)


def test_the_checks_and_the_slot_take_one_round_trip_with_the_senders_owner(shared_r: Any) -> None:
    counting, executor = _executor_on(shared_r)
    shared_r.hset(KEYS.run("r1"), mapping={"status": "running", "tenant": "t1", "agent": "scripted"})
    executor.admit("r1:1:0", 0, "echo", {}, 5.0, ("t1", "scripted"))  # registers the script once
    counting.round_trips = 0
    admitted = executor.admit("r1:2:0", 0, "echo", {}, 5.0, ("t1", "scripted"))
    assert admitted.refused is None and admitted.slot == (KEYS.tool_slots("echo"), "r1:2:0#0")
    assert counting.round_trips == 1
    assert shared_r.zscore(KEYS.tool_slots("echo"), "r1:2:0#0") is not None


def test_a_wrong_or_missing_owner_still_checks_the_runs_own_switches(shared_r: Any) -> None:
    """The sender's owner names the switches; the script refuses one that is not the run's."""
    _, executor = _executor_on(shared_r)
    shared_r.hset(KEYS.run("r1"), mapping={"status": "running", "tenant": "t1", "agent": "scripted"})
    shared_r.set(KEYS.kill_tenant("t1"), "tenant t1 stopped")
    for owner in [("t2", "scripted"), ("t1", "other"), None]:
        admitted = executor.admit("r1:1:0", 0, "echo", {}, 5.0, owner)
        assert admitted.refused == {
            "ok": False,
            "error": {"type": "killed", "message": "tenant t1 stopped"},
        }, owner
        assert admitted.slot is None
    assert shared_r.zcard(KEYS.tool_slots("echo")) == 0  # a refused attempt takes no slot


@pytest.mark.parametrize(
    ("status", "call_attempt", "limit", "expected_type"),
    [
        (None, None, 1000, "denied"),  # no run sent this
        ("cancelled", None, 1000, "killed"),  # the run ended while the call was queued
        ("running", "2", 1000, "timeout"),  # the run moved on to attempt 2
        ("running", None, 1, "rate_limited"),  # the tool's one slot is taken
    ],
)
def test_the_checks_refuse_what_must_not_run(
    shared_r: Any, status: str | None, call_attempt: str | None, limit: int, expected_type: str
) -> None:
    from worker.gateway.executor import ToolExecutor

    if status is not None:
        shared_r.hset(KEYS.run("r1"), mapping={"status": status, "tenant": "t1", "agent": "a"})
    if call_attempt is not None:
        shared_r.hset(KEYS.call("r1:1:0"), "attempt", call_attempt)
    shared_r.zadd(KEYS.tool_slots("echo"), {"other:1:0#0": time.time() * 1000 + 60_000})
    executor = ToolExecutor(shared_r, KEYS, Settings(tools={"max_concurrency": {"echo": limit}}))
    admitted = executor.admit("r1:1:0", 0, "echo", {}, 5.0, ("t1", "a"))
    assert admitted.refused is not None and admitted.refused["error"]["type"] == expected_type
    assert admitted.slot is None and shared_r.zrange(KEYS.tool_slots("echo"), 0, -1) == ["other:1:0#0"]


def test_an_answer_the_checks_do_not_give_raises_instead_of_running_the_tool(
    shared_r: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.gateway import executor as executor_module

    monkeypatch.setattr(executor_module, "_BEFORE_TOOL", "return {'maybe'}")
    executor = executor_module.ToolExecutor(shared_r, KEYS, Settings())
    with pytest.raises(ValueError, match="'maybe' is not a valid BeforeToolVerdict"):
        executor.admit("r1:1:0", 0, "echo", {}, 5.0, ("t1", "a"))
    assert shared_r.zcard(KEYS.tool_slots("echo")) == 0


def test_a_claim_answer_the_script_does_not_give_raises_instead_of_running_the_write(
    shared_r: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.gateway import executor as executor_module

    monkeypatch.setattr(executor_module, "_CLAIM", "return {'maybe', ''}")
    executor = executor_module.ToolExecutor(shared_r, KEYS, Settings())
    with pytest.raises(ValueError, match="'maybe' is not a valid ClaimVerdict"):
        executor._claim_durably(KEYS.call_exec("r1:1:0"), 0)


def test_the_reply_gives_the_slot_back_in_its_own_trip(shared_r: Any) -> None:
    counting, executor = _executor_on(shared_r)
    shared_r.hset(KEYS.run("r1"), mapping={"status": "running", "tenant": "t1", "agent": "a"})
    executor.answer("r1:1:0", 0, "echo", {"n": 0}, 5.0, owner=("t1", "a"))  # registers the scripts
    counting.round_trips = 0
    executor.answer("r1:2:0", 0, "echo", {"n": 1}, 5.0, owner=("t1", "a"))
    assert counting.round_trips == 2  # the checks with the slot, then the reply with its release
    assert shared_r.zcard(KEYS.tool_slots("echo")) == 0
    reply = json.loads(shared_r.lpop(KEYS.call_reply("r1:2:0", 0)) or "{}")
    assert reply["envelope"] == {"ok": True, "result": {"n": 1}}


def test_an_unheard_attempt_tells_the_breaker_only_if_a_tool_worker_took_it(shared_r: Any) -> None:
    from worker.gateway.breaker import BreakerPolicy
    from worker.gateway.checks import Admitter, CallKeys

    keys = CallKeys(
        run_switches=[], cancel="", tool_switch="", writes_switch="", policy="", quota=[],
        run=KEYS.run("r1"), call=KEYS.call("r1:1:0"), retry_budget="", breaker=KEYS.breaker("echo"),
        stats=KEYS.stats_tools(),
    )  # fmt: skip
    admitter = Admitter(shared_r)
    shared_r.hset(KEYS.call("r1:1:0"), mapping={"state": "started", "attempt": "0"})
    common: dict[str, Any] = {
        "ok": False, "breaker": BreakerPolicy(), "final_result": None, "call_ttl_s": 60, "stats_field": "x"
    }  # fmt: skip
    assert admitter.settle(keys, unheard_attempt=0, **common)[3] is False  # queued past its time
    assert not shared_r.exists(KEYS.breaker("echo"))
    shared_r.hset(KEYS.call("r1:1:0"), "taken", "0")  # what the tool worker's checks write
    assert admitter.settle(keys, unheard_attempt=0, **common)[3] is True  # the tool was asked
    assert shared_r.hget(KEYS.breaker("echo"), "win_calls") == "1"


def test_on_its_loop_the_reply_goes_through_the_loops_asyncio_client(shared_r: Any) -> None:
    """With an asyncio client attached to the loop, the blocking client makes only the checks'
    round trip and the reply (with the slot's release) goes out on the loop; on another loop
    (here `answer`'s own) the blocking client replies, as before."""
    import asyncio

    import fakeredis

    from worker.gateway.executor import ToolExecutor

    server = shared_r.connection_pool.connection_kwargs["server"]
    counting, _ = _executor_on(shared_r)
    made: list[Any] = []

    def async_client() -> Any:
        made.append(fakeredis.FakeAsyncRedis(server=server, decode_responses=True))
        return made[-1]

    executor = ToolExecutor(counting, KEYS, Settings(), async_redis=async_client)
    shared_r.hset(KEYS.run("r1"), mapping={"status": "running", "tenant": "t1", "agent": "a"})
    executor.answer("r1:1:0", 0, "echo", {"n": 0}, 5.0, owner=("t1", "a"))  # no loop attached
    assert made == [] and shared_r.llen(KEYS.call_reply("r1:1:0", 0)) == 1

    shared_r.hset(KEYS.call("r1:2:0"), "attempt", "0")  # the run's record of the call: settled

    async def on_the_pools_loop() -> None:
        executor.attach_loop(asyncio.get_running_loop())
        admitted = executor.admit("r1:2:0", 0, "echo", {"n": 1}, 5.0, ("t1", "a"))
        counting.round_trips = 0
        await executor.answer_async("r1:2:0", 0, "echo", {"n": 1}, 5.0, None, admitted)

    asyncio.run(on_the_pools_loop())
    assert len(made) == 1 and counting.round_trips == 0  # the reply did not use the blocking client
    assert shared_r.zcard(KEYS.tool_slots("echo")) == 0
    reply = json.loads(shared_r.lpop(KEYS.call_reply("r1:2:0", 0)) or "{}")
    assert reply == {"settled": True, "envelope": {"ok": True, "result": {"n": 1}}}
    assert shared_r.hget(KEYS.call("r1:2:0"), "state") == "done"


class _StubExecutor:
    """Stands in for ToolExecutor: admits every call; `answer_async` notes when it began, then
    waits (as a tool's I/O does); `hold` blocks the loop thread instead (a busy loop)."""

    def __init__(self, hold_s: float = 0.0) -> None:
        self.hold_s = hold_s
        self.began: list[float] = []

    def attach_loop(self, loop: Any) -> None:
        pass

    def admit(self, *call: Any) -> None:
        return None

    async def answer_async(self, *call: Any) -> None:
        import asyncio

        if self.hold_s:
            time.sleep(self.hold_s)  # the loop is busy: nothing else runs on it meanwhile
        self.began.append(time.monotonic())
        await asyncio.sleep(0.2)


def test_a_handed_over_call_has_begun_on_the_loop_when_submit_returns() -> None:
    """The Celery thread stands aside until the loop has begun the call, so the two do not
    compete for the CPU as the call starts (worker/gateway/pool.py)."""
    from worker.gateway.pool import HANDOVER_WAIT_MAX_INFLIGHT, ToolPool

    executor = _StubExecutor()
    pool = ToolPool(executor, max_inflight=64)  # type: ignore[arg-type]
    for n in range(HANDOVER_WAIT_MAX_INFLIGHT):
        pool.submit(f"r{n}:1:0", 0, "echo", {}, 1.0)
        assert len(executor.began) == n + 1  # begun, and at its first wait, before submit returned
    for n in range(HANDOVER_WAIT_MAX_INFLIGHT, 40):  # past that, a burst is not slowed down
        pool.submit(f"r{n}:1:0", 0, "echo", {}, 1.0)
    assert pool.drain(5.0) == 0
    assert len(executor.began) == 40


def test_a_busy_loop_holds_a_hand_over_up_for_at_most_its_bound() -> None:
    from worker.gateway.pool import HANDOVER_WAIT_S, ToolPool

    executor = _StubExecutor(hold_s=0.5)
    pool = ToolPool(executor, max_inflight=8)  # type: ignore[arg-type]
    pool.submit("r1:1:0", 0, "echo", {}, 1.0)  # its call holds the loop for 0.5 s
    started = time.monotonic()
    pool.submit("r2:1:0", 0, "echo", {}, 1.0)
    assert time.monotonic() - started < HANDOVER_WAIT_S + 0.25  # did not wait for the loop
    assert pool.drain(5.0) == 0
    assert len(executor.began) == 2
