"""The API under abuse, against real `fleet api` processes (CONTRACT.md, "Per-tenant limits").

- `limits`: an API with no agent worker (every run stays queued) and small per-tenant limits:
  FLEET_MAX_QUEUED_PER_TENANT=2, FLEET_MAX_WAITERS_PER_TENANT=2, and a FLEET_METRICS_TOKEN.
- The health test starts its own API and holds 500 long-polls open against it.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api_client import assert_error, post_run
from tests.harness import KEY_T1, KEY_T2, ROOT, Fleet, RedisServer, wait_for
from worker.keys import AGENT_QUEUE, Keys

KEYS = Keys("fleet")
METRICS_TOKEN = "metrics-token-for-tests-0001"
FINAL = {"agent": "scripted", "input": {"plan": [{"final": "done"}]}}


@pytest.fixture(scope="module")
def limits_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


def _limits_env() -> dict[str, str]:
    return {
        "FLEET_MAX_QUEUED_PER_TENANT": "2",
        "FLEET_MAX_WAITERS_PER_TENANT": "2",
        "FLEET_METRICS_TOKEN": METRICS_TOKEN,
    }


@pytest.fixture(scope="module")
def limits_fleet(limits_server: RedisServer) -> Iterator[Fleet]:
    fleet = Fleet(limits_server, {}, _limits_env())
    try:
        fleet.start_api()
        yield fleet
    finally:
        fleet.close()


@pytest.fixture
def limits(limits_fleet: Fleet) -> Fleet:
    """The fleet with no run, no queued message and no kill switch."""
    limits_fleet.r.flushdb()
    return limits_fleet


def cancel(fleet: Fleet, run_id: str, key: str = KEY_T1) -> None:
    with fleet.client(key) as c:
        assert c.post(f"/v1/runs/{run_id}/cancel").status_code == 202


# -- a tenant's share of the queue ----------------------------------------------------------------


def test_a_tenant_past_its_queued_share_gets_429_and_other_tenants_still_submit(limits: Fleet) -> None:
    first = [limits.submit(**FINAL)["id"] for _ in range(2)]
    refused = post_run(limits, FINAL)
    assert "tenant t1 has 2 runs queued" in assert_error(refused, 429)
    assert refused.json()["error"]["type"] == "tenant_queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert limits.r.llen(AGENT_QUEUE) == 2  # the refused run was not queued

    assert post_run(limits, FINAL, key=KEY_T2).status_code == 202  # another tenant is not affected
    cancel(limits, first[0])  # a queued run that ends frees its share
    assert post_run(limits, FINAL).status_code == 202
    assert_error(post_run(limits, FINAL), 429)


# -- run ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix",
    [":steps", ":lease", ":cancel", "0", "x"],
    ids=["steps-list", "lease-string", "cancel", "33-chars", "non-hex"],
)
def test_an_id_that_is_not_32_hex_characters_is_404_everywhere_and_logs_no_traceback(
    limits: Fleet, suffix: str
) -> None:
    run_id = limits.submit(**FINAL)["id"]
    limits.r.rpush(KEYS.run_steps(run_id), '{"step": 1}')  # keys of other types under the run's name
    limits.r.set(KEYS.run_lease(run_id), "host:1:a")
    limits.r.set(KEYS.run_cancel(run_id), "x")
    bad = run_id + suffix
    with limits.client() as c:
        for resp in (c.get(f"/v1/runs/{bad}"), c.get(f"/v1/runs/{bad}", params={"wait": 1}),
                     c.post(f"/v1/runs/{bad}/cancel")):  # fmt: skip
            assert "32 hex characters" in assert_error(resp, 404)
        assert c.get(f"/v1/runs/{run_id}").status_code == 200
    api_log = "\n".join(p.text() for p in limits.procs if p.name == "api")
    assert "Traceback" not in api_log and "WRONGTYPE" not in api_log


@pytest.mark.parametrize("bad", ["abc", "A" * 32, "0" * 31 + "g", "../" * 11, "0" * 4096])
def test_malformed_ids_are_404_without_echoing_them(limits: Fleet, bad: str) -> None:
    with limits.client() as c:
        resp = c.get(f"/v1/runs/{bad}")
    assert bad not in assert_error(resp, 404)


# -- waiters ------------------------------------------------------------------------------------------


def _hold_wait(
    fleet: Fleet, run_id: str, wait_s: float, out: list[Any], key: str = KEY_T1
) -> threading.Thread:
    """A long-poll in a thread; its answer (or exception) lands in `out`."""

    def run() -> None:
        try:
            with fleet.client(key) as c:
                out.append(c.get(f"/v1/runs/{run_id}", params={"wait": wait_s}))
        except httpx.HTTPError as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def held_waits(fleet: Fleet, tenant: str = "t1") -> int:
    return int(fleet.r.zcard(KEYS.waiters(tenant)))


def test_waits_past_the_tenants_cap_get_429_and_end_with_the_run(limits: Fleet) -> None:
    run_id = limits.submit(**FINAL)["id"]
    answers: list[Any] = []
    threads = [_hold_wait(limits, run_id, 20, answers) for _ in range(2)]
    wait_for(lambda: held_waits(limits) == 2, 10, "the two waits were not held")
    with limits.client() as c:
        refused = c.get(f"/v1/runs/{run_id}", params={"wait": 5})
        assert "limit 2" in assert_error(refused, 429)
        assert refused.json()["error"]["type"] == "too_many_waiters"
        assert int(refused.headers["retry-after"]) >= 1
        assert c.get(f"/v1/runs/{run_id}").status_code == 200  # a read without wait is no waiter
    other = limits.submit(key=KEY_T2, **FINAL)["id"]
    with limits.client(KEY_T2) as c:  # another tenant's waits are counted apart
        assert c.get(f"/v1/runs/{other}", params={"wait": 0.2}).status_code == 200

    started = time.monotonic()
    cancel(limits, run_id)
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - started < 5  # woken by the run's end, not by the 20 s timeout
    assert [a.json()["status"] for a in answers] == ["cancelled", "cancelled"]
    assert held_waits(limits) == 0


def test_a_client_that_disconnects_frees_its_wait_slot(limits: Fleet) -> None:
    run_id = limits.submit(**FINAL)["id"]
    for _ in range(2):
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{limits.url}/v1/runs/{run_id}", params={"wait": 25},
                      headers={"Authorization": f"Bearer {KEY_T1}"}, timeout=0.5)  # fmt: skip
    # the API notices each disconnect at its next re-check (about a second), not after 25 s
    wait_for(lambda: held_waits(limits) == 0, 8, f"slots still held: {held_waits(limits)}")
    with limits.client() as c:
        assert c.get(f"/v1/runs/{run_id}", params={"wait": 0.2}).status_code == 200


def test_wait_slots_are_counted_across_replicas_and_a_crashed_replicas_slots_lapse(
    limits: Fleet, limits_server: RedisServer
) -> None:
    run_id = limits.submit(**FINAL)["id"]
    other = Fleet(limits_server, {}, _limits_env())
    try:
        other.start_api()
        answers: list[Any] = []
        for _ in range(2):
            _hold_wait(other, run_id, 2, answers)
        wait_for(lambda: held_waits(limits) == 2, 10, "the other replica's waits were not held")
        api = next(p for p in other.procs if p.name == "api")
        api.popen.send_signal(signal.SIGKILL)  # its slots are never released by it
        api.popen.wait(10)
        with limits.client() as c:
            assert_error(c.get(f"/v1/runs/{run_id}", params={"wait": 1}), 429)
            # a slot lapses at its wait (2 s) + the 5 s grace after it was taken
            deadline = time.monotonic() + 15
            while (resp := c.get(f"/v1/runs/{run_id}", params={"wait": 0.1})).status_code == 429:
                assert time.monotonic() < deadline, "a crashed replica's slots never lapsed"
                time.sleep(0.5)
            assert resp.status_code == 200
    finally:
        other.close()


# -- metrics -----------------------------------------------------------------------------------------


def scan_calls(fleet: Fleet) -> int:
    stats = fleet.r.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


def test_metrics_need_the_token_and_scan_nothing(limits: Fleet) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": METRICS_TOKEN}):
        resp = httpx.get(f"{limits.url}/metrics", headers=headers, timeout=10)
        message = assert_error(resp, 401)
        assert METRICS_TOKEN not in message and METRICS_TOKEN not in resp.headers.get("www-authenticate", "")
    limits.submit(**FINAL)
    limits.r.set("fleet:kill:tenant:t2", "incident 7")  # a switch set by hand with redis-cli
    limits.r.hset(KEYS.breaker("echo"), mapping={"state": "open"})
    limits.r.hset(KEYS.breaker("llm:gpt-4o-mini"), mapping={"state": "half_open"})  # a model's breaker
    before = scan_calls(limits)
    resp = httpx.get(
        f"{limits.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
    )
    assert resp.status_code == 200, resp.text
    assert scan_calls(limits) == before
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }
    assert samples[("fleet_kill_switch_on", (("switch", "tenant:t2"),))] == 1
    assert ("fleet_kill_switch_on", (("switch", "all"),)) not in samples
    assert samples[("fleet_breaker_open", (("state", "open"), ("tool", "echo")))] == 1
    assert samples[("fleet_breaker_open", (("state", "half_open"), ("tool", "llm:gpt-4o-mini")))] == 1
    assert samples[("fleet_tenant_runs_queued", (("tenant", "t1"),))] == 1
    assert samples[("fleet_tenant_runs_queued", (("tenant", "t2"),))] == 0


# -- configuration ---------------------------------------------------------------------------------


def test_one_api_key_for_two_tenants_stops_the_api_naming_positions_not_the_key(limits: Fleet) -> None:
    env = {**limits.env, "FLEET_API_KEYS": f"t1:{KEY_T1},t2:{KEY_T2},t3:{KEY_T1}"}
    done = subprocess.run(
        [sys.executable, "-m", "fleetcli", "api"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "FLEET_API_KEYS: entry 3 repeats the key of entry 1" in output
    assert KEY_T1 not in output


# -- health under 500 long-polls ------------------------------------------------------------------

WAITERS = 500
PROBE_BOUND_S = 0.1  # the bound for a liveness or readiness probe
WAIT_S = 30


async def _timed_wait(client: httpx.AsyncClient, run_id: str) -> tuple[float, httpx.Response]:
    """A 30 s long-poll; returns how long it took, from before it was sent, and its answer."""
    started = time.monotonic()
    resp = await client.get(f"/v1/runs/{run_id}", params={"wait": WAIT_S})
    return time.monotonic() - started, resp


async def _hold_and_probe(
    fleet: Fleet, run_id: str
) -> tuple[list[float], list[tuple[float, httpx.Response]]]:
    limits = httpx.Limits(max_connections=WAITERS + 10, max_keepalive_connections=WAITERS + 10)
    headers = {"Authorization": f"Bearer {KEY_T1}"}
    async with httpx.AsyncClient(base_url=fleet.url, headers=headers, limits=limits, timeout=60) as client:
        waits = [asyncio.create_task(_timed_wait(client, run_id)) for _ in range(WAITERS)]
        deadline = time.monotonic() + 60
        while held_waits(fleet) < WAITERS:
            assert time.monotonic() < deadline, f"only {held_waits(fleet)} waits were held"
            early = [t.result()[1].text for t in waits if t.done() and not t.exception()]
            assert not early, f"{early[:1]}\n{fleet.logs()}"
            await asyncio.sleep(0.2)
        latencies = []
        async with httpx.AsyncClient(base_url=fleet.url, timeout=10) as probe:
            for _ in range(20):
                for path in ("/healthz", "/readyz"):
                    started = time.monotonic()
                    resp = await probe.get(path)
                    latencies.append(time.monotonic() - started)
                    assert resp.status_code == 200, resp.text
                await asyncio.sleep(0.05)
        assert held_waits(fleet) == WAITERS  # the probes ran while every wait was held
        cancelled_at = time.monotonic()
        await asyncio.to_thread(cancel, fleet, run_id)
        answers = await asyncio.gather(*waits)
        latencies.append(time.monotonic() - cancelled_at)  # the last element: time to wake them all
        return latencies, answers


def test_health_probes_answer_within_100_ms_while_500_clients_wait(limits_server: RedisServer) -> None:
    limits_server.client().flushdb()
    fleet = Fleet(limits_server, {}, {"FLEET_MAX_WAITERS_PER_TENANT": str(WAITERS)})
    try:
        fleet.start_api()
        run_id = fleet.submit(**FINAL)["id"]
        latencies, answers = asyncio.run(_hold_and_probe(fleet, run_id))
        *probes, wake_s = latencies
        median_s = sorted(probes)[len(probes) // 2]
        print(f"probe max {max(probes) * 1000:.1f} ms, median {median_s * 1000:.1f} ms; "
              f"{WAITERS} waits woken in {wake_s:.2f} s")  # fmt: skip
        assert max(probes) < PROBE_BOUND_S, sorted(probes)[-5:]
        assert [a.status_code for _, a in answers] == [200] * WAITERS
        assert {a.json()["status"] for _, a in answers} == {"cancelled"}
        # each answer came sooner than its wait's length after it was sent: the run's end woke it
        assert max(took_s for took_s, _ in answers) < WAIT_S
    finally:
        fleet.close()


def test_a_wait_outlives_a_redis_restart_and_wakes_when_the_run_ends_after_it() -> None:
    server = RedisServer(appendonly=True)  # the run survives the restart
    fleet = Fleet(server, {}, {})
    try:
        fleet.start_api()
        run_id = fleet.submit(**FINAL)["id"]
        answers: list[Any] = []
        thread = _hold_wait(fleet, run_id, 25, answers)
        wait_for(lambda: held_waits(fleet) == 1, 10, "the wait was not held")
        server.stop()
        time.sleep(2)  # the subscription and every re-read fail meanwhile
        server.start()
        wait_for(lambda: httpx.get(f"{fleet.url}/readyz", timeout=5).status_code == 200, 20, "not ready")
        # the API subscribed again: the run's end must reach the wait through the new subscription
        wait_for(lambda: fleet.r.pubsub_numpat() >= 1, 20, "the API never subscribed again")
        assert answers == [], answers  # still waiting: a Redis restart is no answer
        ended_at = time.monotonic()
        cancel(fleet, run_id)
        thread.join(15)
        assert time.monotonic() - ended_at < 5, "the wait missed the run's end after the restart"
        assert answers[0].status_code == 200 and answers[0].json()["status"] == "cancelled", answers
    finally:
        fleet.close()
        server.close()
