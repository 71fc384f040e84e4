"""Unit tests of the parked-run scripts (worker/run/timers.py and the run store's park handling) on
fakeredis with Lua. Parking against real workers is tested in tests/worker/run/test_parked.py."""

from __future__ import annotations

import json
import time
import types

import fakeredis
import pytest

from tests.unit_parts import BUDGETS, KEYS, parked_run
from worker.agents import CallModel, CallTool, Sleep
from worker.run import store as store_module
from worker.run import timers as timers_module
from worker.run.guard import Park, RunGuard
from worker.run.loop import decode_action, encode_action
from worker.run.spend import Prices
from worker.run.store import RunStore, public_view
from worker.run.timers import RESEND_S, Due, Scheduler, Timers, end_killed


def test_park_releases_the_lease_and_records_the_wait_and_its_timer(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    timers = Timers(r, KEYS)
    park = parked_run(store, timers)
    raw = store.load("r1") or {}
    assert (raw["parked"], raw["park_seq"], park) == ("1", "1", "1")
    assert json.loads(raw["memory"]) == {"k": 1} and json.loads(raw["pending"])["type"] == "sleep"
    assert r.get(KEYS.run_lease("r1")) is None and r.zscore(KEYS.leases(), "r1") is None
    assert r.zscore(KEYS.timers(), "r1") is not None
    assert r.hget(KEYS.parked_owners("tenant"), "t1") == "1"
    assert r.hget(KEYS.parked_owners("agent"), "scripted") == "1"
    assert timers.waiting() == 1
    assert public_view(raw)["status"] == "running"


def test_park_refuses_without_the_lease_or_when_the_reply_or_a_cancel_is_there(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    timers = Timers(r, KEYS)
    store.create("r1", tenant="t1", agent="a", input=None, budgets=BUDGETS, metadata={})
    store.start("r1", "host:1:x")
    common = {"tenant": "t1", "agent": "a", "wake_ts": time.time() + 5}
    common.update({"wait": "{}", "pending": "{}", "memory": "{}"})
    assert timers.park("r1", "host:1:other", **common)[0] == "lost"  # type: ignore[arg-type]
    r.rpush("reply", "x")
    assert timers.park("r1", "host:1:x", reply_key="reply", **common)[0] == "ready"  # type: ignore[arg-type]
    r.set(KEYS.run_cancel("r1"), "cancelled by request")
    assert timers.park("r1", "host:1:x", **common) == ("cancelled", "cancelled by request")  # type: ignore[arg-type]
    assert r.hget(KEYS.run("r1"), "parked") is None and r.zcard(KEYS.timers()) == 0
    assert r.get(KEYS.run_lease("r1")) == "host:1:x"  # still this execution's


def test_a_due_timer_is_claimed_once_by_two_schedulers_and_again_after_resend(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    timers = Timers(r, KEYS)
    parked_run(store, timers, wake_ts=time.time() - 1)
    now = time.time()
    first = timers.claim_due(now)
    assert [(d.run_id, d.park) for d in first] == [("r1", "1")]
    assert abs(first[0].deadline_ts - (float(r.hget(KEYS.run("r1"), "started_ts") or 0) + 30)) < 1e-3
    assert timers.claim_due(now) == []  # the other scheduler, at the same moment
    assert [d.run_id for d in timers.claim_due(now + RESEND_S + 0.1)] == ["r1"]  # the resume got lost


def test_a_resume_unparks_without_counting_an_attempt_and_a_stale_one_is_dropped(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    timers = Timers(r, KEYS)
    park = parked_run(store, timers)
    assert store.start("r1", "host:1:b", wake="7").raw is None  # another park's resume
    started = store.start("r1", "host:1:b", wake=park)
    assert started.raw is not None and started.raw["attempts"] == "1"
    assert started.raw["pending"] and "parked" not in started.raw
    assert r.zscore(KEYS.timers(), "r1") is None
    assert r.hget(KEYS.parked_owners("tenant"), "t1") is None  # counted down to nothing
    r.delete(KEYS.run_lease("r1"))
    assert store.start("r1", "host:1:c", wake=park).raw is None  # a second resume of that park


def test_a_reply_makes_its_parked_run_due_and_rings_the_bell(r: fakeredis.FakeRedis, store: RunStore) -> None:
    from worker.gateway.breaker import BreakerPolicy
    from worker.gateway.reply import Replier, Reply

    timers = Timers(r, KEYS)
    reply_key = KEYS.call_reply("r1:1:0", 0)
    parked_run(store, timers, reply_key=reply_key)
    other = KEYS.call_reply("r1:1:0", 1)
    common = {
        "call_key": KEYS.call("r1:1:0"),
        "breaker_key": KEYS.breaker("echo"),
        "stats_key": KEYS.stats_tools(),
        "run_key": KEYS.run("r1"),
        "timers_key": KEYS.timers(),
        "bell_key": KEYS.timers_bell(),
        "run_id": "r1",
        "envelope": json.dumps({"ok": True, "result": 1}),
        "reply_ttl_s": 60,
        "settle": False,
        "ok": True,
        "breaker": BreakerPolicy(),
        "final": True,
        "call_ttl_s": 60,
        "stats_field": "calls|echo|ok",
    }
    Replier(r).send(Reply(reply_key=other, attempt=1, **common))  # not the reply the run waits for
    assert (r.zscore(KEYS.timers(), "r1") or 0) > time.time() and r.llen(KEYS.timers_bell()) == 0
    Replier(r).send(Reply(reply_key=reply_key, attempt=0, **common))
    assert r.zscore(KEYS.timers(), "r1") == 0 and r.lrange(KEYS.timers_bell(), 0, -1) == ["r1"]


def test_cancel_makes_a_parked_run_due(r: fakeredis.FakeRedis, store: RunStore) -> None:
    timers = Timers(r, KEYS)
    parked_run(store, timers)
    assert store.cancel("r1") == "running"
    assert r.zscore(KEYS.timers(), "r1") == 0 and r.llen(KEYS.timers_bell()) == 1


def test_the_kill_sweep_ends_only_parked_runs_its_switches_cover(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    timers = Timers(r, KEYS)
    parked_run(store, timers, "a1", tenant="t1", agent="x")
    parked_run(store, timers, "a2", tenant="t2", agent="y")
    store.create("e1", tenant="t1", agent="x", input=None, budgets=BUDGETS, metadata={})
    store.start("e1", "host:1:e1")  # executing: it checks its own switches
    ended: list[str] = []
    store.on_end = lambda run_id, *_: ended.append(run_id)
    assert timers.switched_on() == (None, {}, {})
    r.set(KEYS.kill_tenant("t1"), "incident 7")
    on = timers.switched_on()
    assert on == (None, {"t1": "incident 7"}, {})
    assert timers.covered(*on) == [("a1", "incident 7")]
    assert end_killed(store, [("a1", "incident 7", "parked"), ("e1", "incident 7", "parked")]) == ["a1"]
    assert ended == ["a1"]
    view = public_view(store.load("a1") or {})
    assert (view["status"], view["stop_reason"], view["error"]) == (
        "stopped",
        "killed",
        {"type": "killed", "message": "incident 7"},
    )
    assert r.zscore(KEYS.timers(), "a1") is None and r.hget(KEYS.parked_owners("tenant"), "t1") is None
    assert r.hget(KEYS.run("e1"), "status") == "running"
    r.set(KEYS.kill_all(), "1")
    assert [run_id for run_id, _ in timers.covered(*timers.switched_on())] == ["a2"]


def test_the_scheduler_resumes_due_runs_and_ends_those_past_their_deadline(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    timers = Timers(r, KEYS)
    parked_run(store, timers, "due", wake_ts=time.time() - 1)
    parked_run(store, timers, "later")
    parked_run(store, timers, "late", wake_ts=time.time() - 1)
    r.hset(KEYS.run("late"), "started_ts", repr(time.time() - 31))  # max_seconds 30 is over
    sent: list[Due] = []
    assert Scheduler(timers, store, sent.append).tick() == (1, 0)
    assert [d.run_id for d in sent] == ["due"]
    late = r.hmget(KEYS.run("late"), ["status", "stop_reason"])
    assert late == ["stopped", "max_seconds"]
    store.create("queued", tenant="t9", agent="scripted", input=None, budgets=BUDGETS, metadata={})
    r.set(KEYS.kill_tenant("t9"), "tenant off")
    assert Scheduler(timers, store, sent.append).tick() == (0, 0)  # a queued run: refused at its start
    r.set(KEYS.kill_all(), "stop")
    assert Scheduler(timers, store, sent.append).tick() == (0, 3)  # 2 parked, 1 queued
    assert timers.waiting() == 0 and timers.queued() == []
    queued = public_view(store.load("queued") or {})
    assert (queued["status"], queued["stop_reason"], queued["usage"]["steps"]) == ("stopped", "killed", 0)


def test_pause_sleeps_a_short_wait_and_parks_a_long_one_at_most_until_the_deadline(
    r: fakeredis.FakeRedis,
) -> None:
    deadline = time.time() + 5
    guard = RunGuard(r, KEYS, run_id="r1", tenant="t", agent="a", deadline_ts=deadline, park_after_s=0.05)
    started = time.monotonic()
    guard.pause(0.03, {"kind": "sleep", "at": "sleep"})
    assert time.monotonic() - started >= 0.03
    try:
        guard.pause(60, {"kind": "sleep", "at": "sleep"})
    except Park as park:
        assert park.wake_ts == deadline and park.wait["until_ts"] > deadline
    else:
        raise AssertionError("a 60 s wait did not park")
    unparked = RunGuard(r, KEYS, run_id="r1", tenant="t", agent="a", deadline_ts=deadline)
    assert not unparked.parks(60)


def test_actions_survive_their_park_as_json() -> None:
    actions = [
        CallTool("http.get", {"url": "http://x"}),
        Sleep(2.5),
        CallModel("m", [{"role": "user", "content": "hi"}], 64, Prices(0.1, 0.2), temperature=0.5),
    ]
    for action in actions:
        assert decode_action(json.loads(json.dumps(encode_action(action)))) == action


def test_the_kill_all_sweep_ends_queued_then_parked_runs_each_at_the_servers_time_of_its_end(
    r: fakeredis.FakeRedis, store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pipeline ends the queued runs and the parked ones; each run's finished_ts is Redis's
    clock as its own script ran (not a time the worker took before the pipeline), so a sweep's
    `finished_at` says when each run really stopped. The worker's clock here is an hour behind."""
    timers = Timers(r, KEYS)
    parked_run(store, timers, "p1")
    store.create("q1", tenant="t1", agent="scripted", input=None, budgets=BUDGETS, metadata={})
    store.create("e1", tenant="t1", agent="scripted", input=None, budgets=BUDGETS, metadata={})
    store.start("e1", "host:1:e1")  # executing: it checks its own switches
    ended: list[str] = []
    store.on_end = lambda run_id, *_: ended.append(run_id)
    server_before = float("{}.{:06d}".format(*r.time()))
    time.sleep(0.01)
    r.set(KEYS.kill_all(), "incident 9")
    behind = types.SimpleNamespace(time=lambda: time.time() - 3600, monotonic=time.monotonic)
    monkeypatch.setattr(timers_module, "time", behind)
    monkeypatch.setattr(store_module, "time", behind)
    scheduler = Scheduler(timers, store, resume=lambda due: None)
    assert scheduler.sweep() == 2
    server_after = float("{}.{:06d}".format(*r.time()))
    assert ended == ["q1", "p1"]  # the queued run first: a worker may be about to start it
    for run_id in ("q1", "p1"):
        raw = store.load(run_id) or {}
        assert (raw["status"], raw["stop_reason"]) == ("stopped", "killed")
        assert server_before < float(raw["finished_ts"]) <= server_after
    assert r.hget(KEYS.run("e1"), "status") == "running"
