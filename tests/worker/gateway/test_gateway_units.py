"""Unit tests of the gateway's fleet-wide Redis logic: the GCRA rate limiter and the breaker."""

from __future__ import annotations

import time

import fakeredis
import pytest

from worker.gateway.breaker import CLOSED, HALF_OPEN, OPEN, BreakerPolicy, CircuitBreaker
from worker.gateway.ratelimit import RateLimiter, parse_rate
from worker.keys import Keys

KEYS = Keys("fleet")


@pytest.mark.parametrize(("text", "interval_ms"), [("20/s", 50.0), ("600/m", 100.0), ("3600/h", 1000.0)])
def test_rates_parse(text: str, interval_ms: float) -> None:
    assert parse_rate(text).interval_ms == pytest.approx(interval_ms)


@pytest.mark.parametrize("text", ["20", "0/s", "fast", "10/d", "-1/s"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a rate"):
        parse_rate(text)


def test_gcra_spaces_calls_and_reserves_future_slots(r: fakeredis.FakeRedis) -> None:
    limiter = RateLimiter(r, KEYS)
    rate = parse_rate("10/s")
    calls = []
    for _ in range(5):
        before = time.monotonic()
        wait = limiter.acquire("t", rate, max_wait_s=10).wait_s
        calls.append((before, time.monotonic(), wait))
    # back to back: slot 0 now, then one every 100 ms, less the time that passed since the first
    # call (measured, so a slow machine does not fail it), and a few ms for the clocks' grain
    first_before, first_after, _ = calls[0]
    for n, (before, after, wait) in enumerate(calls):
        assert n * 0.1 - (after - first_before) - 0.005 <= wait <= n * 0.1 - (before - first_after) + 0.005


def test_gcra_refuses_without_reserving_when_the_slot_is_too_far(r: fakeredis.FakeRedis) -> None:
    limiter = RateLimiter(r, KEYS)
    rate = parse_rate("1/s")
    assert limiter.acquire("t", rate, max_wait_s=0).allowed
    refused = limiter.acquire("t", rate, max_wait_s=0.2)
    assert not refused.allowed and refused.wait_s == pytest.approx(1.0, abs=0.05)
    again = limiter.acquire("t", rate, max_wait_s=5)  # the refusal took no slot
    assert again.allowed and again.wait_s == pytest.approx(1.0, abs=0.05)


def test_burst_allows_that_many_back_to_back(r: fakeredis.FakeRedis) -> None:
    limiter = RateLimiter(r, KEYS)
    rate = parse_rate("1/s", burst=3)
    assert [limiter.acquire("t", rate, 0).allowed for _ in range(4)] == [True, True, True, False]


def test_tenant_limits_are_separate_schedules(r: fakeredis.FakeRedis) -> None:
    limiter = RateLimiter(r, KEYS)
    rate = parse_rate("1/s")
    assert limiter.acquire("t", rate, 0, tenant="a").allowed
    assert limiter.acquire("t", rate, 0, tenant="b").allowed
    assert not limiter.acquire("t", rate, 0, tenant="a").allowed


def test_breaker_opens_on_consecutive_failures_and_recovers_through_a_probe(r: fakeredis.FakeRedis) -> None:
    breaker = CircuitBreaker(r, KEYS)
    policy = BreakerPolicy(failure_threshold=3, min_calls=100, cooldown_s=0.2, probe_timeout_s=5)
    for _ in range(2):
        assert breaker.allow("t", policy).allowed
        assert breaker.record("t", False, policy) == CLOSED
    assert breaker.record("t", False, policy) == OPEN
    refused = breaker.allow("t", policy)
    assert not refused.allowed and refused.state == OPEN and 0 < refused.retry_in_s <= 0.2
    time.sleep(0.25)
    probe = breaker.allow("t", policy)
    assert probe.allowed and probe.state == HALF_OPEN
    assert not breaker.allow("t", policy).allowed  # one probe at a time
    assert breaker.record("t", True, policy) == CLOSED
    assert breaker.allow("t", policy).allowed


def test_a_failed_probe_opens_the_breaker_again(r: fakeredis.FakeRedis) -> None:
    breaker = CircuitBreaker(r, KEYS)
    policy = BreakerPolicy(failure_threshold=1, cooldown_s=0.1)
    breaker.record("t", False, policy)
    time.sleep(0.15)
    assert breaker.allow("t", policy).state == HALF_OPEN
    assert breaker.record("t", False, policy) == OPEN
    assert not breaker.allow("t", policy).allowed


def test_breaker_opens_on_failure_rate_over_the_window(r: fakeredis.FakeRedis) -> None:
    breaker = CircuitBreaker(r, KEYS)
    policy = BreakerPolicy(failure_threshold=100, failure_rate=0.5, min_calls=10, window_s=60)
    states = []
    for n in range(10):  # alternate: never 2 consecutive failures, but a 50 % failure rate
        states.append(breaker.record("t", n % 2 == 0, policy))
    assert states[-1] == OPEN and OPEN not in states[:-1]


def test_retry_budget_caps_retries_at_a_share_of_calls(r: fakeredis.FakeRedis) -> None:
    from worker.gateway.retrybudget import RetryBudget, RetryPolicy

    budget = RetryBudget(r, KEYS)
    policy = RetryPolicy(ratio=0.2, min_retries=2, window_s=60)
    for _ in range(50):
        budget.note_call("t", policy)
    granted = sum(budget.try_retry("t", policy) for _ in range(100))
    assert granted == 12  # 20 % of 50 calls + 2
    assert budget.try_retry("other", policy)  # budgets are per tool


def test_a_costly_call_pushes_the_schedule_for_the_next_one(r: fakeredis.FakeRedis) -> None:
    limiter = RateLimiter(r, KEYS)
    tokens = parse_rate("6000/m")  # 100 per second
    assert limiter.acquire("m", tokens, max_wait_s=10, cost=300).wait_s == 0  # admitted now
    nxt = limiter.acquire("m", tokens, max_wait_s=10, cost=10)
    assert nxt.allowed and nxt.wait_s == pytest.approx(3.0, abs=0.05)  # after the 300 tokens drain


def test_a_tool_call_the_broker_cannot_take_is_the_fleets_failure_not_the_agents() -> None:
    """CeleryDispatcher raises BrokerUnavailable, a Redis error, which the loop re-raises (the
    lease expires and the run resumes) instead of failing the run as an agent error."""
    import os
    import subprocess
    import sys

    import redis

    from tests.harness import ROOT, free_port
    from worker.gateway.calls import BrokerUnavailable

    assert issubclass(BrokerUnavailable, redis.RedisError)
    code = (
        "from worker.gateway.calls import BrokerUnavailable, ToolAttempt\n"
        "from worker.tasks import CeleryDispatcher\n"
        "try:\n"
        "    CeleryDispatcher().send(ToolAttempt('r:1:0', 0, 'echo', {}, 1.0, ('t1', 'a')))\n"
        "except BrokerUnavailable as exc:\n"
        "    print('unavailable', exc)\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert "unavailable could not send the tool call" in out.stdout, out.stdout + out.stderr


def test_a_call_refused_after_admission_is_recorded_as_denied_with_its_reason() -> None:
    from worker.gateway.calls import refusal_decision
    from worker.tools.base import error_result

    allowed = {"decision": "allowed", "reason": "no quota"}
    killed = refusal_decision(allowed, error_result("killed", "incident 42"))
    assert killed == {"decision": "denied", "reason": "kill switch: incident 42"}
    limited = refusal_decision(allowed, error_result("rate_limited", "20/s"))
    assert limited["decision"] == "denied" and limited["reason"] == "20/s"
    assert refusal_decision(allowed, error_result("timeout", "8 s")) == allowed
    assert refusal_decision(allowed, {"ok": True, "result": 1}) == allowed


def test_a_slow_tool_is_waited_for_again_once_a_second_not_every_nth_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After SLOW_AFTER_MISSES vain stays, calls to the tool park at once; one call per
    PROBE_EVERY_S still waits (a probe), however many calls come meanwhile; an answered stay
    makes the tool fast again."""
    from worker.gateway import calls

    now = [1000.0]
    monkeypatch.setattr(calls.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(calls, "_missed", {})
    monkeypatch.setattr(calls, "_probed", {})
    for _ in range(calls.SLOW_AFTER_MISSES):
        assert calls._stay_s("slow", 0.05) == 0.05
        calls._note_stay("slow", answered=False)
    stays = [calls._stay_s("slow", 0.05) for _ in range(500)]  # a burst, within one second
    assert stays.count(0.05) == 1 and stays[0] == 0.05  # the first is the probe
    now[0] += calls.PROBE_EVERY_S
    assert calls._stay_s("slow", 0.05) == 0.05 and calls._stay_s("slow", 0.05) == 0.0
    calls._note_stay("slow", answered=True)
    assert calls._stay_s("slow", 0.05) == 0.05 and calls._stay_s("fast", 0.05) == 0.05
    assert calls._stay_s("slow", None) == 0.0
