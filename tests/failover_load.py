"""A Sentinel failover under load, measured from the outside, for tests/fleet/test_sentinel.py and
bench/bench_failover.py: runs parked on a slow HTTP call, write runs through `http.post` to a
counting server and a burst right before the kill, then SIGKILL of the primary; `Failover` holds
what happened (runs lost or failed, writes seen twice, the times from the kill)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.harness import KEY_T1, TERMINAL, CountingServer, Fleet, SentinelGroup, wait_for
from worker.keys import Keys
from worker.redis_conn import make_redis

KEYS = Keys("fleet")

PARKED_RUNS = 8  # runs parked on a slow GET when the primary dies
WRITE_RUNS = 16  # runs that each make two writes
BURST_RUNS = 6  # more write runs, submitted right before the kill
SLOW_GET_S = 4.0
FAILOVER_BOUND_S = 60.0  # kill -> a new run accepted and finished, on any machine (goal: 15 s)


CONFIG: dict[str, Any] = {
    "runtime": {"env": {"AGENT_MAX_SECONDS": 120}},
    "tools": {
        "allowlist": ["echo", "http.get", "http.post"],
        "timeouts_ms": {"default": 5000, "http.get": 30000},
        "retries": {"max": 3, "backoff_ms": [200, 500, 1000]},
        "http": {"allow_hosts": ["127.0.0.1"]},
    },
}


@dataclass
class Failover:
    """What happened around one SIGKILL of the primary."""

    accepted: list[str]  # runs the API answered 202 before the kill
    runs: dict[str, dict[str, Any]]  # their records at the end (absent: lost)
    before: Counter[str]  # their statuses at the kill
    writes_by_key: Counter[str]  # Idempotency-Key -> POSTs the counting server saw
    unkeyed_writes: int
    elected_s: float  # kill -> the Sentinels name a new primary
    accepted_s: float  # kill -> a new run answered 202
    finished_s: float  # kill -> that run ended
    new_status: str
    refusals: Counter[str] = field(default_factory=Counter)  # answers to the new run's POSTs before its 202


def write_plan(i: int, server: CountingServer) -> dict[str, Any]:
    post = {"tool": "http.post", "args": {"url": server.url(f"/write/{i}"), "json": {"write": i}}}
    post2 = {"tool": "http.post", "args": {"url": server.url(f"/write/{i}b"), "json": {"write": f"{i}b"}}}
    return {"plan": [post, {"sleep": 0.5}, post2, {"final": f"ok {i}"}]}


def parked_plan(i: int, server: CountingServer) -> dict[str, Any]:
    get = {"tool": "http.get", "args": {"url": server.url(f"/sleep/{SLOW_GET_S}")}}
    post = {"tool": "http.post", "args": {"url": server.url(f"/write/p{i}"), "json": {"write": f"p{i}"}}}
    return {"plan": [get, post, {"final": f"parked {i}"}]}


def post_run(client: httpx.Client, body: dict[str, Any], key: str) -> httpx.Response:
    return client.post("/v1/runs", json=body, headers={"Idempotency-Key": key})


def submit_until_accepted(
    client: httpx.Client, body: dict[str, Any], give_up_s: float
) -> tuple[str, Counter[str]]:
    """POST one run (one Idempotency-Key) until it is answered 202 or 200; the run's id and the
    other answers seen (status code or exception name)."""
    key = f"new-{uuid.uuid4().hex}"
    refusals: Counter[str] = Counter()
    deadline = time.monotonic() + give_up_s
    while time.monotonic() < deadline:
        try:
            resp = post_run(client, body, key)
        except httpx.HTTPError as exc:
            refusals[type(exc).__name__] += 1
        else:
            if resp.status_code in (200, 202):
                return str(resp.json()["id"]), refusals
            refusals[str(resp.status_code)] += 1
        time.sleep(0.1)
    raise AssertionError(f"no run was accepted within {give_up_s} s: {dict(refusals)}")


def end_of(client: httpx.Client, run_id: str, give_up_s: float) -> dict[str, Any] | None:
    """The run once ended (long-polls through API restarts of its Redis), else its last record;
    None: the API does not know it (404)."""
    deadline = time.monotonic() + give_up_s
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            resp = client.get(f"/v1/runs/{run_id}", params={"wait": 5, "steps": "true"})
            if resp.status_code == 404:
                return None
            if resp.status_code == 200:
                last = resp.json()
                if last["status"] in TERMINAL:
                    return last
        time.sleep(0.1)
    return last


def failover_under_load(fleet: Fleet, group: SentinelGroup, server: CountingServer) -> Failover:
    """Put the load on, SIGKILL the primary, and measure (see Failover)."""
    with fleet.client(KEY_T1) as client:
        accepted = []
        bodies = [{"agent": "scripted", "input": parked_plan(i, server)} for i in range(PARKED_RUNS)]
        bodies += [{"agent": "scripted", "input": write_plan(i, server)} for i in range(WRITE_RUNS)]
        for n, body in enumerate(bodies):
            resp = post_run(client, body, f"load-{n}-{uuid.uuid4().hex[:8]}")
            assert resp.status_code == 202, resp.text
            accepted.append(str(resp.json()["id"]))
        # the parked runs wait on their slow GET, some write runs are executing, others queued
        wait_for(lambda: server.count("/sleep/") >= PARKED_RUNS, 30, "the parked runs did not start")
        before: Counter[str] = Counter(
            str(client.get(f"/v1/runs/{rid}").json()["status"]) for rid in accepted
        )
        for n in range(BURST_RUNS):  # and a burst right before the kill: queued, or just starting
            body = {"agent": "scripted", "input": write_plan(WRITE_RUNS + n, server)}
            resp = post_run(client, body, f"burst-{n}-{uuid.uuid4().hex[:8]}")
            assert resp.status_code == 202, resp.text
            accepted.append(str(resp.json()["id"]))
        r = make_redis(group.url)
        before["parked"] = sum(r.hget(KEYS.run(rid), "parked") == "1" for rid in accepted)
        r.close()

        old_port = group.primary_port()
        killed_at = time.monotonic()
        group.kill_primary()
        wait_for(lambda: group.primary_port() not in (None, old_port), 60, "no new primary was elected")
        elected_s = time.monotonic() - killed_at

        new_body = {
            "agent": "scripted",
            "input": {"plan": [{"tool": "echo", "args": {"x": 1}}, {"final": "new"}]},
        }
        new_id, refusals = submit_until_accepted(client, new_body, FAILOVER_BOUND_S)
        accepted_s = time.monotonic() - killed_at
        new_run = end_of(client, new_id, FAILOVER_BOUND_S)
        finished_s = time.monotonic() - killed_at

        runs = {}
        for run_id in accepted:
            run = end_of(client, run_id, 90)
            if run is not None:
                runs[run_id] = run
    writes: Counter[str] = Counter()
    unkeyed = 0
    with server.lock:
        for request in server.requests:
            if request["method"] != "POST":
                continue
            key = {k.lower(): v for k, v in request["headers"].items()}.get("idempotency-key")
            if key:
                writes[key] += 1
            else:
                unkeyed += 1
    return Failover(
        accepted=accepted,
        runs=runs,
        before=before,
        writes_by_key=writes,
        unkeyed_writes=unkeyed,
        elected_s=elected_s,
        accepted_s=accepted_s,
        finished_s=finished_s,
        new_status=str(new_run["status"]) if new_run else "lost",
        refusals=refusals,
    )
