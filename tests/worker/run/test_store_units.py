"""Unit tests of the fleet's Redis logic (run store scripts, tool-call budget, gateway order)
on fakeredis with Lua. Delivery, timing and crashes are tested against real processes elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from tests.unit_parts import BUDGETS, KEYS, InlineDispatcher, gateway, new_run
from worker.gateway.calls import is_retryable
from worker.run.guard import BudgetExceeded, RunGuard, RunStopped
from worker.run.spend import SpendBudget
from worker.run.store import AdmissionRefused, RunStore, Started, public_view
from worker.run.timers import Timers
from worker.settings import Settings


def test_a_terminal_run_never_changes_again(store: RunStore) -> None:
    new_run(store)
    store.start("r1", "host:1:a")
    assert store.finish("r1", "succeeded", "finish", output="first")
    assert not store.finish("r1", "failed", "error", error={"type": "x", "message": "late"})
    view = public_view(store.load("r1") or {})
    assert (view["status"], view["stop_reason"], view["output"], view["error"]) == (
        "succeeded",
        "finish",
        "first",
        None,
    )


def test_start_counts_attempts_and_keeps_the_first_start_time(store: RunStore) -> None:
    new_run(store)
    first = store.start("r1", "host:1:a").raw
    second = store.start("r1", "host:2:b", takeover="host:1:a").raw
    assert first and second
    assert first["status"] == "running" and second["attempts"] == "2"
    assert first["started_ts"] == second["started_ts"]


def test_start_leaves_a_missing_an_ended_and_a_leased_run_alone(
    store: RunStore, r: fakeredis.FakeRedis
) -> None:
    assert store.start("missing", "host:1:a") == Started()
    new_run(store, "ended")
    store.cancel("ended")
    assert store.start("ended", "host:1:a") == Started(status="cancelled")
    new_run(store, "leased")
    store.start("leased", "host:1:a")
    assert store.start("leased", "host:2:b") == Started(holder="host:1:a")
    assert r.hget(KEYS.run("leased"), "attempts") == "1"  # a refused delivery is no attempt


def test_start_reads_the_runs_switches_and_cancel_flag_as_the_guard_does(
    store: RunStore, r: fakeredis.FakeRedis
) -> None:
    new_run(store)
    assert store.start("r1", "host:1:a").checks == (None, None)
    r.set(KEYS.kill_agent("scripted"), "agent paused")
    r.set(KEYS.run_cancel("r1"), "cancelled by request")
    started = store.start("r1", "host:1:a")
    assert started.checks == ("agent paused", "cancelled by request")
    r.set(KEYS.kill_tenant("t1"), "")  # an empty value is on too, and comes before the agent's
    assert store.start("r1", "host:1:a").checks == ("kill switch on", "cancelled by request")
    guard = RunGuard(r, KEYS, run_id="r1", tenant="t1", agent="scripted", deadline_ts=1e12)
    for prefetched in (store.start("r1", "host:1:a").checks, None):
        with pytest.raises(RunStopped) as stop:
            guard.check(prefetched)
        assert (stop.value.stop_reason, stop.value.message) == ("killed", "kill switch on")


def test_a_checkpoint_reads_the_switches_for_the_next_steps_check(
    store: RunStore, r: fakeredis.FakeRedis
) -> None:
    """The step's checkpoint transaction reads the guard's keys: the next step's check needs no
    MGET of its own, and sees what a separate read would."""
    new_run(store)
    store.start("r1", "host:1:a")
    guard = RunGuard(r, KEYS, run_id="r1", tenant="t1", agent="scripted", deadline_ts=1e12)
    entry = {"step": 1, "action": "tool"}
    values = store.checkpoint(
        "r1", cursor=1, memory={}, last_result=None, step_entry=entry, read=guard.switch_keys
    )
    assert values is not None and guard.read(values) == (None, None)
    guard.check(guard.read(values))  # nothing on: goes on
    r.set(KEYS.kill_tenant("t1"), "tenant paused")
    r.set(KEYS.run_cancel("r1"), "cancelled by request")
    values = store.checkpoint(
        "r1", cursor=2, memory={}, last_result=None, step_entry=entry, read=guard.switch_keys
    )
    assert values is not None and guard.read(values) == ("tenant paused", "cancelled by request")
    with pytest.raises(RunStopped) as stop:
        guard.check(guard.read(values))
    assert (stop.value.stop_reason, stop.value.message) == ("killed", "tenant paused")
    assert r.hget(KEYS.run("r1"), "cursor") == "2" and r.llen(KEYS.run_steps("r1")) == 2
    assert store.checkpoint("r1", cursor=3, memory={}, last_result=None, step_entry=entry) is None


def test_start_adds_the_deadline_and_finish_removes_it_and_releases_the_lease(
    store: RunStore, r: fakeredis.FakeRedis
) -> None:
    new_run(store)
    raw = store.start("r1", "host:1:a").raw
    assert raw is not None
    deadline = r.zscore(KEYS.deadlines(), "r1")
    assert deadline == pytest.approx(float(raw["started_ts"]) + BUDGETS.max_seconds, abs=1e-3)
    assert r.get(KEYS.run_lease("r1")) == "host:1:a" and r.zscore(KEYS.leases(), "r1") is not None
    ended: list[Any] = []
    store.on_end = lambda *args: ended.append(args)
    assert store.finish("r1", "succeeded", "finish", lease_token="host:1:a")
    assert r.zscore(KEYS.deadlines(), "r1") is None
    assert r.get(KEYS.run_lease("r1")) is None and r.zscore(KEYS.leases(), "r1") is None
    [(run_id, status, reason, fields)] = ended
    assert (run_id, status, reason, fields["agent"], fields["started_ts"]) == (
        "r1",
        "succeeded",
        "finish",
        "scripted",
        raw["started_ts"],
    )
    assert "version" not in fields and float(fields["finished_ts"]) >= float(raw["started_ts"])


def test_end_overdue_ends_only_unheld_runs_past_their_deadline_once(
    store: RunStore, r: fakeredis.FakeRedis
) -> None:
    for run_id in ("free", "held", "early"):
        new_run(store, run_id)
        store.start(run_id, f"elsewhere:1:{run_id}")
    r.delete(KEYS.run_lease("free"))  # its worker died and the lease expired
    r.delete(KEYS.run_lease("early"))
    now = float(r.hget(KEYS.run("free"), "started_ts") or 0) + BUDGETS.max_seconds + 0.1
    r.zadd(KEYS.deadlines(), {"early": now + 5})
    assert store.end_overdue(now) == ["free"]
    assert store.end_overdue(now) == []  # a second reaper finds nothing to do
    free = public_view(store.load("free") or {})
    assert (free["status"], free["stop_reason"]) == ("stopped", "max_seconds")
    assert (store.load("held") or {})["status"] == "running"
    assert (store.load("early") or {})["status"] == "running"
    assert r.zscore(KEYS.deadlines(), "free") is None


def test_end_overdue_takes_a_run_from_a_dead_holder_on_this_host(
    store: RunStore, r: fakeredis.FakeRedis
) -> None:
    import socket
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    new_run(store)
    store.start("r1", f"{socket.gethostname()}:{child.pid}:deadbeef")
    now = float(r.hget(KEYS.run("r1"), "started_ts") or 0) + BUDGETS.max_seconds + 0.1
    assert store.end_overdue(now) == ["r1"]
    assert (store.load("r1") or {})["stop_reason"] == "max_seconds"
    assert r.get(KEYS.run_lease("r1")) is None


def test_cancel_ends_a_queued_run_at_once_and_flags_a_running_one(
    store: RunStore, r: fakeredis.FakeRedis
) -> None:
    new_run(store, "queued")
    assert store.cancel("queued") == "queued"
    assert public_view(store.load("queued") or {})["status"] == "cancelled"
    new_run(store, "running")
    store.start("running", "host:1:a")
    assert store.cancel("running") == "running"
    assert public_view(store.load("running") or {})["status"] == "running"
    assert r.get(KEYS.run_cancel("running")) is not None
    assert store.cancel("missing") is None


def test_public_view_has_the_contract_fields_and_iso_times(store: RunStore) -> None:
    new_run(store)
    view = public_view(store.load("r1") or {})
    assert view["status"] == "queued" and view["started_at"] is None and view["finished_at"] is None
    assert view["created_at"].endswith("Z") and len(view["created_at"]) == len("2026-11-26T09:14:39.123456Z")
    assert view["usage"] == {"steps": 0, "tool_calls": 0, "seconds": 0.0, "tokens": 0, "cost_usd": 0.0}
    assert view["budgets"] == {
        "max_steps": 5,
        "max_tool_calls": 2,
        "max_seconds": 30.0,
        "max_tokens": 0,
        "max_cost_usd": 0.0,
    }


def test_gateway_checks_kill_switch_then_allowlist_then_args_before_any_call(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    settings = Settings(tools={"allowlist": ["echo", "http.get"]})
    dispatcher = InlineDispatcher(r, settings)
    gw = gateway(r, store, settings, dispatcher)
    r.set(KEYS.kill_tool("echo"), "echo is broken")
    assert gw.call("r1:1:0", "echo", {}).result["error"] == {"type": "killed", "message": "echo is broken"}
    r.delete(KEYS.kill_tool("echo"))
    assert gw.call("r1:2:0", "search.read", {}).result["error"]["type"] == "denied"
    assert gw.call("r1:3:0", "http.get", {"url": 5}).result["error"]["type"] == "invalid_args"
    assert dispatcher.sent == []
    assert r.hget(KEYS.run("r1"), "tool_calls") == "0"  # refused calls are not started
    assert gw.call("r1:4:0", "echo", {"a": 1}).result == {"ok": True, "result": {"a": 1}}
    assert len(dispatcher.sent) == 1


def test_gateway_retries_retryable_failures_as_one_call(r: fakeredis.FakeRedis, store: RunStore) -> None:
    settings = Settings(tools={"allowlist": ["echo"], "retries": {"max": 2, "backoff_ms": [1, 1]}})
    failure = {"ok": False, "error": {"type": "http_error", "message": "HTTP 503", "status": 503}}
    dispatcher = InlineDispatcher(r, settings, replies=[failure, failure, {"ok": True, "result": "third"}])
    gw = gateway(r, store, settings, dispatcher)
    assert gw.call("r1:1:0", "echo", {}).result == {"ok": True, "result": "third"}
    assert [attempt for _, attempt, _ in dispatcher.sent] == [0, 1, 2]
    assert r.hget(KEYS.run("r1"), "tool_calls") == "1"


def test_gateway_gives_up_when_retry_after_is_past_the_deadline(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    settings = Settings(tools={"allowlist": ["echo"], "retries": {"max": 2, "backoff_ms": [1]}})
    limited = {
        "ok": False,
        "error": {"type": "http_error", "message": "HTTP 429", "status": 429, "retry_after_s": 60},
    }
    dispatcher = InlineDispatcher(r, settings, replies=[limited])
    gw = gateway(r, store, settings, dispatcher, deadline_s=5)
    assert gw.call("r1:1:0", "echo", {}).result["error"]["status"] == 429
    assert len(dispatcher.sent) == 1


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        ({"type": "timeout"}, True),
        ({"type": "http_error", "status": 500}, True),
        ({"type": "http_error", "status": 429}, True),
        ({"type": "http_error"}, True),
        ({"type": "http_error", "status": 404}, False),
        ({"type": "invalid_args"}, False),
        ({"type": "denied"}, False),
        ({"type": "rate_limited"}, True),  # a busy tool worker
    ],
)
def test_only_timeouts_5xx_429_and_connection_failures_are_retried(
    error: dict[str, Any], retry: bool
) -> None:
    assert is_retryable({"ok": False, "error": {"message": "", **error}}) is retry


def test_guard_reports_kill_before_cancel_and_the_deadline(r: fakeredis.FakeRedis) -> None:
    import time

    guard = RunGuard(r, KEYS, run_id="r1", tenant="t1", agent="a", deadline_ts=time.time() - 1)
    r.set(KEYS.run_cancel("r1"), "cancelled by request")
    r.set(KEYS.kill_tenant("t1"), "tenant paused")
    with pytest.raises(RunStopped) as stop:
        guard.check()
    assert (stop.value.status, stop.value.stop_reason, stop.value.message) == (
        "stopped",
        "killed",
        "tenant paused",
    )
    r.delete(KEYS.kill_tenant("t1"))
    with pytest.raises(RunStopped) as stop:
        guard.check()
    assert stop.value.stop_reason == "cancelled"
    r.delete(KEYS.run_cancel("r1"))
    with pytest.raises(BudgetExceeded) as stop:
        guard.check()
    assert stop.value.stop_reason == "max_seconds"


def test_model_spend_is_reserved_at_worst_case_and_settled_once(
    store: RunStore, r: fakeredis.FakeRedis
) -> None:
    from worker.run.spend import Prices, SpendBudget

    new_run(store)
    spend = SpendBudget(r, KEYS, "r1", ttl_s=60)
    prices = Prices(input=1.0, output=2.0)  # USD per million tokens
    assert (
        spend.reserve("c1", 0, 1000, prices.cost_micro(600, 400), max_tokens=1500, max_cost_usd=1.0) is None
    )
    # a second call that the remaining budget cannot cover is refused before it starts
    assert spend.reserve("c2", 0, 600, 10, max_tokens=1500, max_cost_usd=1.0) == "max_tokens"
    assert spend.reserve("c1", 0, 1000, 1400, max_tokens=1500, max_cost_usd=1.0) is None  # resumed: no-op
    assert spend.settle("c1", 0, 300, prices.cost_micro(200, 100))
    assert not spend.settle("c1", 0, 300, 400)  # once
    view = public_view(store.load("r1") or {})
    assert view["usage"]["tokens"] == 300 and view["usage"]["cost_usd"] == 0.0004
    assert spend.reserve("c2", 0, 600, 10, max_tokens=1500, max_cost_usd=1.0) is None  # room again
    assert spend.reserve("c3", 0, 1, 2_000_000, max_tokens=10_000, max_cost_usd=1.0) == "max_cost"


def test_spend_is_corrected_only_for_a_charged_call_and_only_once(r: fakeredis.FakeRedis) -> None:
    from worker.control.policy import Policy, PolicyStore

    policies = PolicyStore(r, KEYS)
    unlimited = policies.reserve("a", "free-call", Policy(), 0.5)
    assert unlimited.reason == "no quota"
    assert not policies.adjust_spend("a", "free-call", -0.4)  # nothing was charged: no correction
    limited = Policy(max_spend_usd_per_day=1.0)
    assert policies.reserve("a", "c1", limited, 0.5).allowed
    assert policies.adjust_spend("a", "c1", -0.3)  # it really cost 0.2
    assert not policies.adjust_spend("a", "c1", -0.3)  # once
    again = policies.reserve("a", "c1", limited, 0.5)  # a resumed run asks for the same call again
    assert again.allowed and again.remaining["spend_usd_today"] == 0.5  # as reserved, uncorrected
    decision = policies.reserve("a", "c2", limited, 0.8)
    assert decision.allowed and decision.remaining["spend_usd_today"] == 0.0
    assert not policies.reserve("a", "c3", limited, 0.01).allowed


def test_finish_writes_the_step_that_ended_the_run_before_it_counts_usage(
    store: RunStore, r: fakeredis.FakeRedis
) -> None:
    new_run(store)
    store.start("r1", "host:1:a")
    store.begin_step("r1", 1)
    assert store.finish("r1", "succeeded", "finish", lease_token="host:1:a", steps=2)
    assert public_view(store.load("r1") or {})["usage"]["steps"] == 2
    assert r.hget(KEYS.stats_runs(), "usage|steps") == "2"
    assert not store.finish("r1", "failed", "error", steps=5)  # an ended run keeps its count
    assert public_view(store.load("r1") or {})["usage"]["steps"] == 2


# -- a tenant's share of the queue (FLEET_MAX_QUEUED_PER_TENANT) ------------------------------------


def _submit(store: RunStore, run_id: str, tenant: str, limit: int) -> str:
    """Create a run under a per-tenant limit; "ok" or the refusal's reason."""
    try:
        store.create(
            run_id, tenant=tenant, agent="scripted", input={}, budgets=BUDGETS, metadata={},
            max_queued_per_tenant=limit,
        )  # fmt: skip
    except AdmissionRefused as refused:
        return f"{refused.reason}:{refused.detail}"
    return "ok"


def test_a_tenant_past_its_queued_share_is_refused_and_others_still_submit(store: RunStore) -> None:
    assert [_submit(store, f"a{i}", "acme", 2) for i in range(3)] == ["ok", "ok", "tenant_queue_full:2"]
    assert store.load("a2") is None  # the refused run was not written
    assert _submit(store, "g0", "globex", 2) == "ok"
    assert _submit(store, "a3", "acme.eu", 2) == "ok"  # a tenant whose name extends another's


@pytest.mark.parametrize("leave_queued", ["start", "finish", "cancel"])
def test_a_run_that_leaves_queued_frees_its_tenants_share_once(store: RunStore, leave_queued: str) -> None:
    assert _submit(store, "a0", "acme", 1) == "ok"
    assert _submit(store, "a1", "acme", 1) == "tenant_queue_full:1"
    if leave_queued == "start":
        store.start("a0", "host:1:a")
    elif leave_queued == "finish":
        store.finish("a0", "failed", "error")
    else:
        store.cancel("a0")
    assert _submit(store, "a1", "acme", 1) == "ok"
    # the first run's later moves (another attempt, its end) free nothing more
    store.start("a0", "host:2:b", takeover="host:1:a")
    store.finish("a0", "stopped", "killed")
    assert _submit(store, "a2", "acme", 1) == "tenant_queue_full:1"


def test_a_queued_run_whose_record_expired_stops_counting(r: fakeredis.FakeRedis) -> None:
    store = RunStore(r, KEYS, ttl_s=60)
    assert _submit(store, "a0", "acme", 1) == "ok"
    (member,) = r.zrange(KEYS.queued_runs(), 0, -1)
    tenant, created_ts, run_id = member.split("|")
    r.zrem(KEYS.queued_runs(), member)  # as if it had been created two minutes ago
    r.zadd(KEYS.queued_runs(), {f"{tenant}|{float(created_ts) - 120!r}|{run_id}": 0})
    assert _submit(store, "a1", "acme", 1) == "ok"
    assert r.zcard(KEYS.queued_runs()) == 1


# -- the scripts' answers are parsed, not compared as bare strings -----------------------------------


def _create(store: RunStore, timers: Timers, spend: SpendBudget) -> object:
    return store.create("r2", tenant="t1", agent="a", input={}, budgets=BUDGETS, metadata={})


def _start(store: RunStore, timers: Timers, spend: SpendBudget) -> object:
    return store.start("r1", "host:1:a")


def _park(store: RunStore, timers: Timers, spend: SpendBudget) -> object:
    wait = {"wait": "{}", "pending": "{}", "memory": "{}"}
    return timers.park("r1", "host:1:a", tenant="t1", agent="a", wake_ts=1.0, **wait)


def _reserve(store: RunStore, timers: Timers, spend: SpendBudget) -> object:
    return spend.reserve("c1", 0, 10, 10, max_tokens=100, max_cost_usd=1.0)


def _charge(store: RunStore, timers: Timers, spend: SpendBudget) -> object:
    return spend.charge_tool("c1", 10, max_cost_usd=1.0)


@pytest.mark.parametrize(
    ("call", "answer", "enum"),
    [
        (_create, ["moved", ""], "CreateVerdict"),
        (_start, ["moved"], "StartVerdict"),
        (_park, ["moved"], "ParkVerdict"),
        (_reserve, "moved", "ReserveVerdict"),
        (_charge, "moved", "ChargeVerdict"),
    ],
)
def test_an_answer_a_script_does_not_give_raises_instead_of_passing_for_another(
    r: fakeredis.FakeRedis, store: RunStore, call: Callable[..., object], answer: Any, enum: str
) -> None:
    new_run(store)
    timers, spend = Timers(r, KEYS), SpendBudget(r, KEYS, "r1", ttl_s=60)
    owner = {_create: store, _start: store, _park: timers, _reserve: spend, _charge: spend}[call]
    # each helper is named as the attribute its class keeps the script in: that script now answers
    # something it never did
    setattr(owner, call.__name__, lambda keys, args: answer)
    with pytest.raises(ValueError, match=f"'moved' is not a valid {enum}"):
        call(store, timers, spend)
