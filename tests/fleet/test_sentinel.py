"""A Sentinel failover under load, with real processes (issue 15): a primary, two replicas and three
Sentinels (`redis-server --sentinel`) on loopback, the fleet (API, agent worker, tool worker) on the
redis+sentinel:// URL, runs in flight (parked on a slow HTTP call, queued, executing) and writes
through `http.post` to a counting server. Then the primary is SIGKILLed.

Judged from the outside: every run the API accepted (202) ends, and ends `succeeded`; the counting
server saw each write's Idempotency-Key once; a new run is accepted and finishes within a bound
that holds on any machine (FAILOVER_BOUND_S). bench/bench_failover.py prints the times against the
goal (15 s) and what the replica WAIT costs a POST. Marked `failover` (about 90 s): .ci/run skips
it; `.venv/bin/python -m pytest -m failover tests/fleet/test_sentinel.py` runs it.

Two replicas, so that one is left to acknowledge writes after the failover: with one, the new
primary has no replica until the old one returns, and (with redis.wait_replicas 1) the API answers
503 until then.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.failover_load import (
    BURST_RUNS,
    CONFIG,
    FAILOVER_BOUND_S,
    PARKED_RUNS,
    WRITE_RUNS,
    Failover,
    end_of,
    failover_under_load,
    post_run,
)
from tests.harness import KEY_T1, CountingServer, Fleet, SentinelGroup, wait_for

pytestmark = pytest.mark.failover  # about 90 s: `pytest -m failover tests/fleet/test_sentinel.py`


@dataclass
class Stack:
    group: SentinelGroup
    server: CountingServer
    fleet: Fleet


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    group = SentinelGroup(replicas=2, sentinels=3, down_after_ms=1000)
    server = CountingServer()
    fleet = Fleet(group.primary, CONFIG, redis_url=group.url)
    try:
        fleet.start(workers=1, concurrency=3)
        yield Stack(group, server, fleet)
    finally:
        fleet.close()
        server.close()
        group.close()


@pytest.fixture(scope="module")
def failover(stack: Stack) -> tuple[Failover, Fleet]:
    return failover_under_load(stack.fleet, stack.group, stack.server), stack.fleet


def brief(run: dict[str, Any]) -> str:
    steps = [(s.get("tool"), s.get("ok"), s.get("error_type")) for s in run.get("steps") or []]
    return f"{run['id']} {run['status']}/{run.get('stop_reason')} error={run.get('error')} steps={steps}"


@pytest.mark.timeout(400)
def test_no_accepted_run_is_lost_and_none_fails_when_the_primary_is_sigkilled(
    failover: tuple[Failover, Fleet],
) -> None:
    outcome, fleet = failover
    print(f"\nat the kill: {dict(outcome.before)}; new primary after {outcome.elected_s:.1f} s")
    lost = [run_id for run_id in outcome.accepted if run_id not in outcome.runs]
    assert lost == [], f"accepted runs lost: {lost}\n{fleet.logs()}"
    ends = Counter(f"{r['status']}/{r.get('stop_reason')}" for r in outcome.runs.values())
    print(f"outcomes: {dict(ends)}")
    assert outcome.before["parked"] >= PARKED_RUNS // 2, outcome.before
    not_succeeded = [brief(r) for r in outcome.runs.values() if r["status"] != "succeeded"]
    assert not_succeeded == [], "\n".join(not_succeeded) + "\n" + fleet.logs()
    # and none of their tool calls failed for it (a scripted run goes on after a failed call)
    failed_calls = [
        (
            run_id[:8],
            step["step"],
            step["tool"],
            step.get("error_type"),
            step.get("decision", {}).get("reason"),
        )
        for run_id, run in outcome.runs.items()
        for step in run["steps"]
        if step.get("tool") and not step.get("ok")
    ]
    assert failed_calls == [], failed_calls


def test_no_write_is_executed_twice_across_the_failover(failover: tuple[Failover, Fleet]) -> None:
    outcome, _ = failover
    twice = {key: n for key, n in outcome.writes_by_key.items() if n > 1}
    assert outcome.unkeyed_writes == 0
    assert twice == {}, f"writes sent more than once: {twice}"
    # every run made its writes: two per write run, one per parked run, each with its own key
    assert len(outcome.writes_by_key) == 2 * (WRITE_RUNS + BURST_RUNS) + PARKED_RUNS


def test_new_runs_are_accepted_and_finish_again_after_the_failover(failover: tuple[Failover, Fleet]) -> None:
    outcome, _ = failover
    print(
        f"\nkill -> primary elected {outcome.elected_s:.1f} s, new run accepted {outcome.accepted_s:.1f} s, "
        f"finished {outcome.finished_s:.1f} s; refusals before: {dict(outcome.refusals)}"
    )
    assert outcome.new_status == "succeeded"
    assert outcome.finished_s < FAILOVER_BOUND_S


def test_without_a_replica_acknowledging_a_post_is_503_yet_queued_and_a_write_is_not_run(
    stack: Stack, failover: tuple[Failover, Fleet]
) -> None:
    """After the failover one replica is left; SIGSTOPped, it acknowledges nothing (redis.wait_replicas
    is 1 on Sentinel): the POST answers 503 with Retry-After, the run stays queued and runs, its
    write is refused before it reaches the server, and a retry with the same key returns the run."""
    group, server, fleet = stack.group, stack.server, stack.fleet
    primary = group.current_primary()
    (replica,) = [n for n in group.nodes if n is not primary and n.proc and n.proc.poll() is None]
    url = server.url("/write/unconfirmed")
    body = {
        "agent": "scripted",
        "input": {"plan": [{"tool": "http.post", "args": {"url": url, "json": {"w": 1}}}, {"final": "x"}]},
    }
    assert replica.proc is not None
    replica.proc.send_signal(signal.SIGSTOP)
    try:
        with fleet.client(KEY_T1) as client:
            started = time.monotonic()
            refused = post_run(client, body, "unconfirmed-1")
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == "1"
            message = refused.json()["error"]["message"]
            assert "no replica confirmed" in message
            assert time.monotonic() - started < 5  # redis.wait_timeout_ms (500) bounds the wait
            run_id = message.split()[1]
            run = end_of(client, run_id, 60)
    finally:
        replica.proc.send_signal(signal.SIGCONT)
    assert run is not None and run["status"] == "succeeded", run
    (step,) = [s for s in fleet.get(run_id, steps="true")["steps"] if s.get("tool") == "http.post"]
    assert not step["ok"] and step["error_type"] == "rate_limited", step  # every attempt refused
    assert server.count("/write/unconfirmed") == 0  # the write never left the fleet
    with fleet.client(KEY_T1) as client:
        wait_for(lambda: post_run(client, body, "unconfirmed-1").status_code == 200, 15, "no 200 on retry")
        assert post_run(client, body, "unconfirmed-1").json()["id"] == run_id
