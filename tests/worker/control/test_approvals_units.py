"""Unit tests of the approval scripts (worker/control/approvals.py) and of the deadline that leaves out the
time a run waits for a human, on fakeredis with Lua. The whole flow against real processes:
tests/worker/control/test_approvals.py."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from tests.unit_parts import KEYS, new_run
from worker.control.approvals import Approvals, DecideAnswer, DecisionRefused, Pending, RequestAnswer
from worker.run.lease import new_token
from worker.run.loop import run_deadline
from worker.run.store import RunStore, public_view
from worker.run.timers import Timers

CALL = "r1:1:0"


@pytest.fixture
def approvals(r: fakeredis.FakeRedis) -> Approvals:
    return Approvals(r, KEYS, run_ttl_s=3600)


def started(store: RunStore) -> str:
    """A running run r1; returns its lease's token."""
    new_run(store)
    token = new_token()
    assert store.start("r1", token).raw is not None
    return token


def ask(
    approvals: Approvals, since: float, call_id: str = CALL, timeout_s: float = 60
) -> tuple[RequestAnswer, str]:
    pending = Pending(call_id, "echo", {"text": "[redacted]"}, since, since + timeout_s)
    return approvals.request("r1", "t1", pending, since + timeout_s + 30)


def test_a_call_is_asked_for_once_and_shows_as_the_runs_waiting(
    r: fakeredis.FakeRedis, store: RunStore, approvals: Approvals
) -> None:
    started(store)
    now = time.time()
    outcome, first = ask(approvals, now)
    assert outcome is RequestAnswer.PENDING
    r.zadd(KEYS.deadlines(), {"r1": now + 10})  # a resume's start script sets it from its clock
    outcome, again = ask(approvals, now + 5)  # a resumed or repeated step asks again
    assert (outcome, again) == (RequestAnswer.PENDING, first), "a second request replaced the first"
    assert r.zscore(KEYS.deadlines(), "r1") == pytest.approx(now + 95), "the reaper would end the waiting run"
    waiting = public_view(store.load("r1") or {})["waiting"]
    assert waiting["type"] == "approval" and waiting["call_id"] == CALL and waiting["tool"] == "echo"
    assert r.xlen(KEYS.run_events("r1")) == 3  # queued, running, one approval_requested
    ((_, event),) = r.xrevrange(KEYS.run_events("r1"), count=1)
    assert event["event"] == "approval_requested"
    assert json.loads(event["data"]) == {k: v for k, v in json.loads(first).items() if not k.endswith("_ts")}
    assert [a["call_id"] for a in approvals.pending("t1")] == [CALL]
    assert approvals.pending("t2") == []


def test_a_decision_is_taken_once_and_the_wait_is_added_to_paused_s(
    r: fakeredis.FakeRedis, store: RunStore, approvals: Approvals
) -> None:
    started(store)
    since = time.time()
    ask(approvals, since)
    decision = approvals.decide("r1", CALL, "approve", tenant="t1", comment="fine", now=since + 42)
    assert (decision["decision"], decision["by"], decision["comment"]) == ("approve", "t1", "fine")
    raw = store.load("r1") or {}
    assert float(raw["paused_s"]) == pytest.approx(42)
    assert "approval" not in raw and "approval_since" not in raw
    assert public_view(raw)["waiting"] is None
    assert r.lrange(KEYS.approval_decided(CALL), 0, -1) == [json.dumps(decision)]
    assert approvals.pending("t1") == []
    with pytest.raises(DecisionRefused) as refused:
        approvals.decide("r1", CALL, "deny", tenant="t1")
    assert refused.value.reason is DecideAnswer.DECIDED
    assert json.loads(refused.value.detail)["decision"] == "approve"
    assert approvals.expire("r1", CALL)["decision"] == "approve", "an expiry overrode a human's decision"


@pytest.mark.parametrize(
    ("run_id", "call_id", "tenant", "reason"),
    [
        ("r1", CALL, "t2", DecideAnswer.MISSING),
        ("nope", CALL, "t1", DecideAnswer.MISSING),
        ("r1", "r1:2:0", "t1", DecideAnswer.UNKNOWN),
    ],
)
def test_a_decision_on_another_tenants_run_or_an_unknown_call_is_refused(
    r: fakeredis.FakeRedis,
    store: RunStore,
    approvals: Approvals,
    run_id: str,
    call_id: str,
    tenant: str,
    reason: DecideAnswer,
) -> None:
    started(store)
    ask(approvals, time.time())
    with pytest.raises(DecisionRefused) as refused:
        approvals.decide(run_id, call_id, "approve", tenant=tenant)
    assert refused.value.reason is reason
    assert (store.load("r1") or {}).get("approval"), "a refused decision changed the run"


def test_a_run_that_ended_while_waiting_cannot_be_decided(store: RunStore, approvals: Approvals) -> None:
    started(store)
    ask(approvals, time.time())
    store.finish("r1", "stopped", "killed")
    with pytest.raises(DecisionRefused) as refused:
        approvals.decide("r1", CALL, "approve", tenant="t1")
    assert (refused.value.reason, refused.value.detail) == (DecideAnswer.ENDED, "stopped")
    assert approvals.pending("t1") == [], "an ended run is still listed"
    assert public_view(store.load("r1") or {})["waiting"] is None


def test_a_decision_wakes_the_run_parked_on_it(
    r: fakeredis.FakeRedis, store: RunStore, approvals: Approvals
) -> None:
    new_run(store)
    token = new_token()
    assert store.start("r1", token).raw is not None
    since = time.time()
    ask(approvals, since)
    timers = Timers(r, KEYS)
    outcome, _ = timers.park(
        "r1", token, tenant="t1", agent="scripted", wake_ts=since + 60, wait="{}", pending="{}", memory="{}",
        reply_key=KEYS.approval_decided(CALL),
    )  # fmt: skip
    assert outcome == "parked"
    approvals.decide("r1", CALL, "deny", tenant="t1")
    assert r.zscore(KEYS.timers(), "r1") == 0, "the parked run was not made due"
    assert r.lrange(KEYS.timers_bell(), 0, -1) == ["r1"]


def test_an_answer_the_approval_scripts_do_not_give_raises(
    r: fakeredis.FakeRedis, store: RunStore, approvals: Approvals
) -> None:
    started(store)
    approvals._request = r.register_script("return {'maybe', ''}")
    with pytest.raises(ValueError, match="'maybe' is not a valid RequestAnswer"):
        ask(approvals, time.time())
    approvals._decide = r.register_script("return {'approved', '{}'}")
    with pytest.raises(ValueError, match="'approved' is not a valid DecideAnswer"):
        approvals.decide("r1", CALL, "approve", tenant="t1")


def test_a_decision_before_the_park_makes_the_park_go_on_at_once(
    r: fakeredis.FakeRedis, store: RunStore, approvals: Approvals
) -> None:
    new_run(store)
    token = new_token()
    assert store.start("r1", token).raw is not None
    ask(approvals, time.time())
    approvals.decide("r1", CALL, "approve", tenant="t1")
    outcome, _ = Timers(r, KEYS).park(
        "r1", token, tenant="t1", agent="scripted", wake_ts=time.time() + 60, wait="{}", pending="{}",
        memory="{}",
        reply_key=KEYS.approval_decided(CALL),
    )  # fmt: skip
    assert outcome == "ready"


def test_the_deadline_leaves_out_the_time_waiting_for_a_human(
    r: fakeredis.FakeRedis, store: RunStore, approvals: Approvals
) -> None:
    token = started(store)
    raw = store.load("r1") or {}
    first = run_deadline(raw, 30)
    assert first == pytest.approx(float(raw["started_ts"]) + 30)
    since = time.time()
    ask(approvals, since)
    waiting = store.load("r1") or {}
    assert run_deadline(waiting, 30, now=since + 100) == pytest.approx(first + 100)  # the clock stopped
    approvals.decide("r1", CALL, "approve", tenant="t1", now=since + 100)
    assert run_deadline(store.load("r1") or {}, 30, now=since + 500) == pytest.approx(first + 100)
    # a resume computes the same deadline for the reaper
    assert store.start("r1", token).raw is not None
    assert r.zscore(KEYS.deadlines(), "r1") == pytest.approx(first + 100, abs=1e-3)
