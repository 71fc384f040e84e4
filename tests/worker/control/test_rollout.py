"""Canary rollouts per agent version, with automatic rollback on error rate (issue 8).

Real parts only: a redis-server per fleet, `fleet api`, a prefork `fleet worker`, a
`fleet tool-worker`, and the `fleet rollout` command as a child process. The test agent
`versioned` (tests/plugins.py) outputs its version's `label` and fails `fail_percent` of its runs,
decided by a hash of the run id that is independent of the routing hash.

Two fleets: a healthy canary (fail_percent 0, canary_percent 10) shared by most tests, and a
canary that fails half its runs (fail_percent 50, canary_percent 50) for the automatic rollback.
Every test starts from a clean rollout state (the keys `fleet:rollout:*` and the per-version
counters deleted).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import KEY_T1, ROOT, TERMINAL, Fleet, RedisServer, wait_for
from worker.control.rollout import bucket_of

AGENT = "versioned"
ADMIN_KEY = "rollout-admin-key-0123456789"
MIN_RUNS = 20
WORKER_CONCURRENCY = 6
HEALTHY_PERCENT = 10
FAILING_PERCENT = 50
FAIL_PERCENT = 50


def versioned_config(canary_percent: float, fail_percent: float) -> dict[str, Any]:
    return {
        "agents": {
            AGENT: {
                "canary_percent": canary_percent,
                "versions": {
                    "stable": {"label": "S"},
                    "canary": {"label": "C", "fail_percent": fail_percent},
                },
            }
        },
        "rollout": {"min_runs": MIN_RUNS, "rollback_on_error_rate": 0.05},
    }


@pytest.fixture(scope="module")
def healthy() -> Iterator[Fleet]:
    """A fleet whose canary never fails (10 % of new runs), with an admin key for pinning."""
    server = RedisServer()
    f = Fleet(server, versioned_config(HEALTHY_PERCENT, 0), {"FLEET_ADMIN_KEYS": ADMIN_KEY})
    try:
        start_all(f)
        yield f
    finally:
        f.close()
        server.close()


@pytest.fixture
def failing() -> Iterator[Fleet]:
    """A fleet whose canary fails half its runs and takes half the new runs (no tool worker)."""
    server = RedisServer()
    f = Fleet(server, versioned_config(FAILING_PERCENT, FAIL_PERCENT))
    try:
        start_all(f, tool_worker=False)
        yield f
    finally:
        f.close()
        server.close()


@pytest.fixture
def clean(healthy: Fleet) -> Fleet:
    """The healthy fleet with its rollout state and per-version counters reset."""
    reset_rollout(healthy)
    return healthy


# -- helpers --------------------------------------------------------------------------------------


def start_all(fleet: Fleet, tool_worker: bool = True) -> None:
    """Start the API, an agent worker and (optionally) a tool worker at once, then wait for all.

    The harness's start_* methods start one process after the other; started together, the
    fleet is up in about the time of the slowest process.
    """
    api = fleet.spawn("api", "api")
    procs = [
        fleet.spawn(
            "worker", "worker", "--concurrency", str(WORKER_CONCURRENCY),
            "-n", f"agent-{uuid.uuid4().hex[:6]}@%h", "--without-mingle",
        ),
    ]  # fmt: skip
    if tool_worker:
        name = f"tool-{uuid.uuid4().hex[:6]}@%h"
        procs.append(fleet.spawn("tool-worker", "tool-worker", "-n", name, "--without-mingle"))
    wait_for(lambda: _api_up(fleet), 60, f"API did not start:\n{api.text()}")
    for proc in procs:
        wait_for(lambda p=proc: " ready." in p.text(), 60, f"{proc.name} did not start:\n{proc.text()}")


def _api_up(fleet: Fleet) -> bool:
    try:
        return httpx.get(f"{fleet.url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def stop_all(fleet: Fleet) -> None:
    """Stop every live fleet process at once (SIGTERM, as an orchestrator would)."""
    threads = [threading.Thread(target=fleet.stop_proc, args=(p,)) for p in live_procs(fleet)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def reset_rollout(fleet: Fleet) -> None:
    keys = list(fleet.r.scan_iter(match="fleet:rollout:*"))
    fleet.r.delete(*keys, "fleet:stats:versions")


def rollout_cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetcli", "rollout", *args],
        env=fleet.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rollout(fleet: Fleet, *args: str) -> dict[str, Any]:
    """Run `fleet rollout ARGS`, which must succeed, and return the JSON report it prints."""
    done = rollout_cli(fleet, *args)
    assert done.returncode == 0, f"fleet rollout {args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def submit_many(fleet: Fleet, n: int, **body: Any) -> list[dict[str, Any]]:
    """Submit `n` runs of the versioned agent; every one must be accepted (202)."""
    runs = []
    with fleet.client() as c:
        for i in range(n):
            resp = c.post("/v1/runs", json={"agent": AGENT, "input": {"i": i}, **body})
            assert resp.status_code == 202, resp.text
            runs.append(resp.json())
    return runs


def wait_ended(fleet: Fleet, run_ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    """The runs (as the API shows them) once every one has ended; fails with the logs if not."""
    deadline = time.monotonic() + timeout
    while True:
        pipe = fleet.r.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hget(f"fleet:run:{run_id}", "status")
        pending = [rid for rid, status in zip(run_ids, pipe.execute(), strict=True) if status not in TERMINAL]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} of {len(run_ids)} runs did not end:\n{fleet.logs()}")
        time.sleep(0.1)
    with fleet.client() as c:
        runs = []
        for run_id in run_ids:
            resp = c.get(f"/v1/runs/{run_id}")
            assert resp.status_code == 200, resp.text
            runs.append(resp.json())
    return runs


def submit_and_wait(fleet: Fleet, n: int) -> list[dict[str, Any]]:
    return wait_ended(fleet, [run["id"] for run in submit_many(fleet, n)])


def assert_all_ran_as(runs: list[dict[str, Any]], version: str) -> None:
    """Every run got `version` and ended succeeded with that version's label as output."""
    label = {"stable": "S", "canary": "C"}[version]
    wrong = [
        (r["id"], r["version"], r["status"], r["output"])
        for r in runs
        if (r["version"], r["status"], r["output"]) != (version, "succeeded", label)
    ]
    assert not wrong, f"runs that did not run as {version}: {wrong}"


def version_metrics(fleet: Fleet) -> dict[tuple[str, ...], float]:
    """Samples of fleet_version_runs_total and fleet_canary_rollbacks_total from /metrics."""
    resp = httpx.get(f"{fleet.url}/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    out: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "fleet_version_runs_total":
                out[(sample.name, labels["agent"], labels["version"], labels["outcome"])] = sample.value
            elif sample.name == "fleet_canary_rollbacks_total":
                out[(sample.name, labels["agent"])] = sample.value
    return out


def live_procs(fleet: Fleet) -> list[Any]:
    return [p for p in fleet.procs if p.popen.poll() is None]


# -- routing by run id ----------------------------------------------------------------------------


def test_bucket_of_maps_each_run_id_to_one_fixed_place_and_spreads_ids_evenly() -> None:
    ids = [uuid.uuid4().hex for _ in range(20000)]
    buckets = [bucket_of(run_id) for run_id in ids]
    assert all(0 <= b < 100 for b in buckets)
    assert [bucket_of(run_id) for run_id in ids[:500]] == buckets[:500]  # same id, same place
    assert len(set(buckets)) > 19900  # the place depends on the id
    below_10 = sum(b < 10 for b in buckets) / len(buckets)
    assert 0.09 < below_10 < 0.11  # sd ≈ 0.002: a 10 % canary gets about 10 % of the runs
    below_50 = sum(b < 50 for b in buckets) / len(buckets)
    assert 0.48 < below_50 < 0.52


# -- automatic rollback ---------------------------------------------------------------------------


def submit_until_canary_count(fleet: Fleet, canary_count: int) -> list[dict[str, Any]]:
    """Submit runs one by one until `canary_count` of them went to the canary (at most 400)."""
    runs: list[dict[str, Any]] = []
    with fleet.client() as c:
        while sum(r["version"] == "canary" for r in runs) < canary_count:
            assert len(runs) < 400, "the canary took almost none of 400 runs"
            resp = c.post("/v1/runs", json={"agent": AGENT, "input": {"n": len(runs)}})
            assert resp.status_code == 202, resp.text
            runs.append(resp.json())
    return runs


def test_a_canary_failing_half_its_runs_is_rolled_back_after_min_runs_and_new_runs_go_to_stable(
    failing: Fleet,
) -> None:
    fleet = failing
    # 19 ended canary runs: about half failed, yet below min_runs nothing rolls back.
    first = wait_ended(fleet, [r["id"] for r in submit_until_canary_count(fleet, MIN_RUNS - 1)])
    failed_first = [r for r in first if r["version"] == "canary" and r["status"] == "failed"]
    assert len(failed_first) >= 2, "the canary should have failed ~half of 19 runs"
    state = fleet.r.hgetall(f"fleet:rollout:{AGENT}")
    assert state.get("state", "active") == "active", state

    # The 20th ended canary run crosses min_runs with an error rate far over 5 %: rolled back.
    second = wait_ended(fleet, [r["id"] for r in submit_until_canary_count(fleet, 1)])
    state = fleet.r.hgetall(f"fleet:rollout:{AGENT}")
    assert state.get("state") == "rolled_back", state
    match = re.fullmatch(r"error rate (\d+)/(\d+) over 0\.05", str(state.get("reason")))
    assert match, state
    assert int(match.group(2)) == MIN_RUNS and int(match.group(1)) / MIN_RUNS > 0.05
    changed_at = float(state["changed_at"])

    # Every run submitted after the rollback goes to stable, though the config says 50 %.
    after = submit_and_wait(fleet, 40)
    assert all(datetime.fromisoformat(r["created_at"]).timestamp() >= changed_at for r in after)
    assert_all_ran_as(after, "stable")

    before = first + second
    canary = [r for r in before if r["version"] == "canary"]
    stable = [r for r in before + after if r["version"] == "stable"]
    assert len(canary) == MIN_RUNS
    # The failing canary never touched stable runs, and failed only as the agent fails.
    assert_all_ran_as(stable, "stable")
    canary_failed = [r for r in canary if r["status"] == "failed"]
    canary_ok = [r for r in canary if r["status"] == "succeeded"]
    assert len(canary_failed) + len(canary_ok) == MIN_RUNS
    assert all(r["stop_reason"] == "error" and "C failed" in r["error"]["message"] for r in canary_failed)
    assert all(r["output"] == "C" for r in canary_ok)

    status = rollout(fleet, "status")
    assert set(status) == {AGENT}  # without an agent: every agent with versions, and only those
    report = status[AGENT]
    assert report["state"] == "rolled_back"
    assert report["canary_percent"] == 0
    assert report["rollbacks"] == 1
    assert report["window"]["canary"]["ended"] == MIN_RUNS
    assert report["window"]["canary"]["errors"] == len(canary_failed)

    metrics = version_metrics(fleet)
    assert metrics.get(("fleet_canary_rollbacks_total", AGENT)) == 1
    assert metrics.get(("fleet_version_runs_total", AGENT, "canary", "error")) == len(canary_failed)
    assert metrics.get(("fleet_version_runs_total", AGENT, "canary", "ok"), 0) == len(canary_ok)
    assert metrics.get(("fleet_version_runs_total", AGENT, "stable", "ok")) == len(stable)
    assert ("fleet_version_runs_total", AGENT, "stable", "error") not in metrics


# -- a healthy canary -----------------------------------------------------------------------------


def test_healthy_canary_takes_about_its_percent_of_500_runs_by_run_id_and_is_never_rolled_back(
    clean: Fleet,
) -> None:
    fleet = clean
    runs = submit_and_wait(fleet, 500)

    canary = [r for r in runs if r["version"] == "canary"]
    stable = [r for r in runs if r["version"] == "stable"]
    assert len(canary) + len(stable) == 500
    # 500 x 10 % = 50, sd ≈ 6.7: 4 sd either side.
    assert 23 <= len(canary) <= 77, f"{len(canary)} of 500 runs went to a 10 % canary"
    # The split is the run id's hash: every run is where bucket_of puts it.
    misrouted = [
        r["id"] for r in runs if (bucket_of(r["id"]) < HEALTHY_PERCENT) != (r["version"] == "canary")
    ]
    assert not misrouted, f"runs routed against their run id's bucket: {misrouted}"
    assert_all_ran_as(canary, "canary")
    assert_all_ran_as(stable, "stable")

    report = rollout(fleet, "status", AGENT)[AGENT]
    assert report["state"] == "active"
    assert report["canary_percent"] == HEALTHY_PERCENT
    assert report["rollbacks"] == 0
    assert report["window"]["canary"] == {"ended": len(canary), "errors": 0, "stopped": 0}
    assert report["window"]["stable"] == {"ended": len(stable), "errors": 0, "stopped": 0}
    assert fleet.r.hget(f"fleet:rollout:{AGENT}", "state") in (None, "active")

    metrics = version_metrics(fleet)
    assert metrics.get(("fleet_version_runs_total", AGENT, "canary", "ok")) == len(canary)
    assert metrics.get(("fleet_version_runs_total", AGENT, "stable", "ok")) == len(stable)
    assert ("fleet_version_runs_total", AGENT, "canary", "error") not in metrics
    assert metrics.get(("fleet_canary_rollbacks_total", AGENT), 0) == 0


def test_the_version_is_fixed_in_the_run_record_at_submission_and_never_changes(clean: Fleet) -> None:
    fleet = clean
    rollout(fleet, "set", AGENT, "--percent", "50")
    submitted = submit_many(fleet, 30)
    with fleet.client() as c:
        seen: dict[str, set[str]] = {run["id"]: {run["version"]} for run in submitted}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            polled = [c.get(f"/v1/runs/{run_id}").json() for run_id in seen]
            for run in polled:
                seen[run["id"]].add(run["version"])
            if all(run["status"] in TERMINAL for run in polled):
                break
    ended = wait_ended(fleet, list(seen))
    changed = {run_id: versions for run_id, versions in seen.items() if len(versions) != 1}
    assert not changed, f"runs whose version changed while they ran: {changed}"
    for first, last in zip(submitted, ended, strict=True):
        assert last["version"] == first["version"] == ("canary" if bucket_of(first["id"]) < 50 else "stable")
    assert {run["version"] for run in ended} == {"stable", "canary"}


# -- the operator's commands ----------------------------------------------------------------------


def test_promote_rollback_and_set_percent_from_the_cli_change_routing_for_the_next_runs(
    clean: Fleet,
) -> None:
    fleet = clean
    report = rollout(fleet, "set", AGENT, "--percent", "0")[AGENT]
    assert (report["state"], report["canary_percent"]) == ("active", 0)
    assert_all_ran_as(submit_and_wait(fleet, 8), "stable")

    report = rollout(fleet, "promote", AGENT)[AGENT]
    assert (report["state"], report["canary_percent"]) == ("promoted", 100)
    assert_all_ran_as(submit_and_wait(fleet, 8), "canary")

    report = rollout(fleet, "rollback", AGENT)[AGENT]
    assert (report["state"], report["canary_percent"]) == ("rolled_back", 0)
    assert report["reason"] == "rolled back by operator"
    assert_all_ran_as(submit_and_wait(fleet, 8), "stable")

    report = rollout(fleet, "set", AGENT, "--percent", "100")[AGENT]
    assert (report["state"], report["canary_percent"]) == ("active", 100)
    assert_all_ran_as(submit_and_wait(fleet, 8), "canary")


def test_rollout_cli_refuses_a_bad_percent_and_an_agent_without_versions(clean: Fleet) -> None:
    fleet = clean
    over = rollout_cli(fleet, "set", AGENT, "--percent", "150")
    assert over.returncode == 2 and "--percent" in over.stderr
    unversioned = rollout_cli(fleet, "rollback", "scripted")
    assert unversioned.returncode == 2 and "scripted" in unversioned.stderr
    assert fleet.r.exists(f"fleet:rollout:{AGENT}", "fleet:rollout:scripted") == 0


def test_pinning_a_version_needs_the_admin_key_and_an_agent_with_versions(clean: Fleet) -> None:
    fleet = clean
    rollout(fleet, "set", AGENT, "--percent", "0")
    pin = {"agent": AGENT, "input": {}, "version": "canary"}
    with fleet.client() as c:
        no_key = c.post("/v1/runs", json=pin)
        wrong_key = c.post("/v1/runs", json=pin, headers={"X-Fleet-Admin-Key": "not-" + ADMIN_KEY})
        tenant_key = c.post("/v1/runs", json=pin, headers={"X-Fleet-Admin-Key": KEY_T1})
        pinned = c.post("/v1/runs", json=pin, headers={"X-Fleet-Admin-Key": ADMIN_KEY})
        unversioned = c.post(
            "/v1/runs",
            json={"agent": "scripted", "input": {"plan": [{"final": "x"}]}, "version": "canary"},
            headers={"X-Fleet-Admin-Key": ADMIN_KEY},
        )
        unknown = c.post(
            "/v1/runs", json={**pin, "version": "beta"}, headers={"X-Fleet-Admin-Key": ADMIN_KEY}
        )
    for refused in (no_key, wrong_key, tenant_key):
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["type"] == "forbidden"
        assert "X-Fleet-Admin-Key" in refused.json()["error"]["message"]
    assert unversioned.status_code == 422, unversioned.text
    assert "version" in unversioned.json()["error"]["message"]
    assert unknown.status_code == 422, unknown.text
    assert "version" in unknown.json()["error"]["message"]

    assert pinned.status_code == 202, pinned.text
    assert pinned.json()["version"] == "canary"
    assert_all_ran_as(wait_ended(fleet, [pinned.json()["id"]]), "canary")

    # Pinning stable beats a 100 % canary.
    rollout(fleet, "set", AGENT, "--percent", "100")
    with fleet.client() as c:
        stable = c.post(
            "/v1/runs", json={**pin, "version": "stable"}, headers={"X-Fleet-Admin-Key": ADMIN_KEY}
        )
    assert stable.status_code == 202, stable.text
    assert_all_ran_as(wait_ended(fleet, [stable.json()["id"]]), "stable")
    # The refused submissions created no runs: only the two pinned ones ended.
    metrics = version_metrics(fleet)
    assert metrics.get(("fleet_version_runs_total", AGENT, "canary", "ok")) == 1
    assert metrics.get(("fleet_version_runs_total", AGENT, "stable", "ok")) == 1


# -- restarts -------------------------------------------------------------------------------------


def test_a_rollback_survives_a_restart_of_every_fleet_process_and_queued_canary_runs_keep_their_version(
    clean: Fleet,
) -> None:
    fleet = clean
    rollout(fleet, "set", AGENT, "--percent", "100")
    for worker in [p for p in live_procs(fleet) if p.name == "worker"]:
        fleet.stop_proc(worker)
    queued = submit_many(fleet, 4)  # no agent worker: they wait in the queue, as canary runs
    assert [(r["status"], r["version"]) for r in queued] == [("queued", "canary")] * 4

    report = rollout(fleet, "rollback", AGENT)[AGENT]
    assert (report["state"], report["canary_percent"]) == ("rolled_back", 0)

    stop_all(fleet)
    assert not live_procs(fleet)
    start_all(fleet)

    # Runs queued before the rollback keep the version they were given.
    assert_all_ran_as(wait_ended(fleet, [r["id"] for r in queued]), "canary")
    report = rollout(fleet, "status", AGENT)[AGENT]
    assert (report["state"], report["canary_percent"]) == ("rolled_back", 0)
    # Every new run goes to stable (a 100 % canary would take them all).
    assert_all_ran_as(submit_and_wait(fleet, 20), "stable")
