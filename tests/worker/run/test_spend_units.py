"""worker.run.spend and the spend parts of worker.control.policy, against fakeredis (Lua): each model attempt
is reserved and settled by what it may have cost, tool costs count against `max_cost_usd`, a
daily limit is bounded, and a correction lands on the day its reservation was charged to."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest
from pydantic import ValidationError

from worker.control.policy import MAX_SPEND_USD_PER_DAY, Policy, PolicyStore
from worker.keys import Keys
from worker.run.spend import ModelCallCost, Prices, SpendBudget, attempt_charge
from worker.run.store import Budgets, RunStore, public_view
from worker.tools.base import error_result

KEYS = Keys("t")
PRICES = Prices(input=1.0, output=2.0)  # USD per million tokens
COST = ModelCallCost(worst_tokens=1000, worst_micro=1500, prices=PRICES, max_tokens=10_000, max_cost_usd=1.0)


def _usage(r: fakeredis.FakeRedis, run_id: str = "r1") -> dict[str, Any]:
    return dict(public_view(RunStore(r, KEYS).load(run_id) or {})["usage"])


def _new_run(r: fakeredis.FakeRedis, run_id: str = "r1") -> None:
    RunStore(r, KEYS).create(
        run_id, tenant="t1", agent="llm", input={}, budgets=Budgets(5, 5, 30, 10_000, 1.0), metadata={}
    )


def test_an_answer_is_settled_at_the_usage_the_model_reported() -> None:
    answer = {"ok": True, "result": {"usage": {"prompt_tokens": 200, "completion_tokens": 100}}}
    assert attempt_charge(answer, COST) == (300, PRICES.cost_micro(200, 100))


@pytest.mark.parametrize("status", [400, 401, 403, 429])
def test_a_request_refused_before_processing_is_settled_at_zero(status: int) -> None:
    assert attempt_charge(error_result("http_error", "refused", status=status), COST) == (0, 0)


@pytest.mark.parametrize("kind", ["killed", "denied", "rate_limited", "circuit_open", "invalid_args"])
def test_a_request_that_never_left_the_fleet_is_settled_at_zero(kind: Any) -> None:
    assert attempt_charge(error_result(kind, "not sent"), COST) == (0, 0)


@pytest.mark.parametrize(
    "result",
    [
        error_result("timeout", "no answer in time"),
        error_result("http_error", "connection reset"),  # no status: it may have been processed
        error_result("http_error", "bad gateway", status=502),
        error_result("http_error", "server error", status=500),
        error_result("tool_error", "model service answered with something that is not JSON"),
    ],
)
def test_an_attempt_that_may_have_been_billed_is_settled_at_the_worst_case(result: dict[str, Any]) -> None:
    assert attempt_charge(result, COST) == (COST.worst_tokens, COST.worst_micro)


def test_each_attempt_is_reserved_and_settled_once_on_its_own(r: fakeredis.FakeRedis) -> None:
    _new_run(r)
    spend = SpendBudget(r, KEYS, "r1", ttl_s=60)
    # $1.00 covers two worst cases of $0.40, not three: a call that times out twice uses it up
    worst = 400_000
    for attempt in (0, 1):
        assert spend.reserve("c1", attempt, 100, worst, max_tokens=10_000, max_cost_usd=1.0) is None
        assert spend.settle("c1", attempt, 100, worst)  # timed out: the worst case
        assert not spend.settle("c1", attempt, 0, 0)  # once
    assert spend.reserve("c1", 2, 100, worst, max_tokens=10_000, max_cost_usd=1.0) == "max_cost"
    assert _usage(r)["cost_usd"] == 0.8 and _usage(r)["tokens"] == 200
    # a refused attempt gives its reservation back whole
    assert spend.reserve("c2", 0, 100, 150_000, max_tokens=10_000, max_cost_usd=1.0) is None
    assert spend.settle("c2", 0, 0, 0)
    assert spend.reserve("c2", 1, 100, 150_000, max_tokens=10_000, max_cost_usd=1.0) is None
    assert r.hget(KEYS.run("r1"), "cost_reserved") == "150000"


def test_a_tool_cost_is_charged_once_per_call_and_never_past_max_cost(r: fakeredis.FakeRedis) -> None:
    _new_run(r)
    spend = SpendBudget(r, KEYS, "r1", ttl_s=60)
    for n in range(3):
        assert spend.charge_tool(f"r1:{n}:0", 300_000, max_cost_usd=1.0) is None
    assert spend.charge_tool("r1:2:0", 300_000, max_cost_usd=1.0) is None  # a resumed call: no-op
    assert _usage(r)["cost_usd"] == 0.9
    assert spend.charge_tool("r1:3:0", 100_000, max_cost_usd=1.0, check_only=True) is None  # fits
    assert spend.charge_tool("r1:3:0", 300_000, max_cost_usd=1.0, check_only=True) == "max_cost"
    assert spend.charge_tool("r1:3:0", 300_000, max_cost_usd=1.0) == "max_cost"
    assert _usage(r)["cost_usd"] == 0.9  # a check charges nothing
    # model reservations in flight count too
    assert spend.reserve("m", 0, 10, 50_000, max_tokens=10_000, max_cost_usd=1.0) is None
    assert spend.charge_tool("r1:4:0", 60_000, max_cost_usd=1.0) == "max_cost"


@pytest.mark.parametrize("value", [1e303, MAX_SPEND_USD_PER_DAY * 1.0001, float("inf")])
def test_a_daily_spend_limit_over_the_cap_is_refused(value: float) -> None:
    with pytest.raises(ValidationError, match="max_spend_usd_per_day"):
        Policy(max_spend_usd_per_day=value)
    assert Policy(max_spend_usd_per_day=MAX_SPEND_USD_PER_DAY).max_spend_usd_per_day == MAX_SPEND_USD_PER_DAY


def test_a_stored_limit_over_the_cap_denies_instead_of_overflowing(r: fakeredis.FakeRedis) -> None:
    policies = PolicyStore(r, KEYS)
    r.set(KEYS.policy("llm"), '{"max_spend_usd_per_day": 1e303}')  # written before the cap existed
    policy = policies.get("llm")
    assert policy.allowed_tools == []  # a policy that does not validate denies every tool
    decision = policies.reserve("llm", "c1", policy, 0.01, count_action=False)
    assert decision.allowed  # a model call is no action; no spend limit is read from it


def test_a_correction_after_midnight_lands_on_the_day_of_the_reservation(
    r: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    policies = PolicyStore(r, KEYS)
    limited = Policy(max_spend_usd_per_day=5.0)
    before_midnight = time.struct_time((2026, 12, 1, 23, 59, 59, 1, 335, 0))
    after_midnight = time.struct_time((2026, 12, 2, 0, 0, 1, 2, 336, 0))
    monkeypatch.setattr("worker.control.policy.time.gmtime", lambda *a: before_midnight)
    assert policies.reserve("llm", "c1", limited, 2.0, count_action=False).allowed
    monkeypatch.setattr("worker.control.policy.time.gmtime", lambda *a: after_midnight)
    assert policies.adjust_spend("llm", "c1", -1.5)  # it really cost $0.50
    assert r.get(KEYS.quota_spend("llm", "20261201")) == "500000"
    assert r.get(KEYS.quota_spend("llm", "20261202")) is None  # the new day owes nothing
    assert not policies.adjust_spend("llm", "c1", -1.5)  # once
