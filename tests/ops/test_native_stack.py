"""The compose topology run natively: docker-compose.yml's api, worker replicas, tool-worker and
flower as local processes from the file's own commands and environment and the images' ENV,
against a real redis-server running ops/redis.conf (tests/ops/native.py maps container names
and paths to the host, nothing else), so the compose file cannot drift from what works: the
healthchecks, the preflight, Redis's password, runs on both worker replicas, the admin, metrics
and Flower secrets, the soft shutdown within the stop grace, and the kill switch."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psutil
import pytest

from tests.harness import TERMINAL, wait_for
from tests.ops.helpers import FLEET_SERVICES, celery_conf, duration_s
from tests.ops.native import NativeStack


@pytest.fixture(scope="module")
def stack() -> Iterator[NativeStack]:
    native = NativeStack()
    try:
        native.start()
        yield native
    finally:
        native.close()


def epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def test_compose_services_start_natively_and_pass_their_healthchecks(stack: NativeStack) -> None:
    replicas = {p.service for p in stack.procs}
    assert replicas == set(FLEET_SERVICES)
    assert len(stack.replicas("worker")) >= 2, "docker-compose.yml runs two agent worker replicas"
    checks = stack.healthchecks()
    assert len(checks) == len(stack.procs)
    for name, check in checks.items():
        assert check.returncode == 0, f"{name}: {check.args}: {check.stdout.decode(errors='replace')}"
    with stack.client() as c:
        ready = c.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["workers"] == {"agent": len(stack.replicas("worker")), "tool": 1}
    info = stack.redis().info("persistence")
    assert info["aof_enabled"] == 1, "redis-server runs ops/redis.conf"
    assert stack.redis().config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"


def test_the_compose_preflight_passes_on_the_compose_stack_and_prints_no_secret(stack: NativeStack) -> None:
    out = stack.preflight.stdout
    assert stack.preflight.returncode == 0, out + stack.preflight.stderr
    lines = out.splitlines()
    names = {line.split()[1] for line in lines[:-1]}
    assert {"config", "redis", "redis.appendonly", "redis.maxmemory-policy", "clock", "database",
            "secrets.api_keys", "upstream"} <= names, out  # fmt: skip
    assert all(line.startswith("ok ") for line in lines[:-1]), "ops/redis.conf and the secrets: all ok"
    for secret in (stack.api_key, stack.redis_password, stack.admin_key):
        assert secret not in out + stack.preflight.stderr


def test_redis_refuses_clients_without_the_password_and_no_process_logs_it(stack: NativeStack) -> None:
    import redis as redis_py

    with pytest.raises(redis_py.AuthenticationError):
        redis_py.Redis(port=stack.redis_port, socket_timeout=5).ping()
    assert stack.redis().ping(), "the password from the secret file is Redis's requirepass"
    clients = stack.redis().client_list()
    assert len(clients) > len(stack.procs), "every fleet process is connected, so it authenticated"
    for proc in stack.procs:
        assert stack.redis_password not in proc.text(), f"{proc.service} logged the Redis password"
        assert "REDIS_URL" in proc.env and "@" not in proc.env["REDIS_URL"]


def test_runs_submitted_through_the_compose_api_finish_on_both_worker_replicas(stack: NativeStack) -> None:
    run_ids = []
    for i in range(8):
        resp = stack.submit([{"tool": "echo", "args": {"i": i}}, {"sleep": 1}, {"final": f"done-{i}"}])
        assert resp.status_code == 202, resp.text
        run_ids.append(resp.json()["id"])
    for i, run_id in enumerate(run_ids):
        run = stack.wait(run_id)
        assert (run["status"], run["output"]) == ("succeeded", f"done-{i}"), run
        step = run["steps"][0]
        assert step["tool"] == "echo" and step["ok"] is True, step  # answered by the tool worker
    started = [p.text().count('"run started"') for p in stack.replicas("worker")]
    assert sum(started) >= len(run_ids) and all(started), f"runs per replica: {started}"


def test_admin_api_takes_its_keys_from_the_mounted_secret(stack: NativeStack) -> None:
    with stack.client(stack.admin_key) as admin:
        assert admin.get("/v1/admin/policies/scripted").status_code == 200
    with stack.client() as tenant:
        assert tenant.get("/v1/admin/policies/scripted").status_code == 401


def test_metrics_ask_for_the_token_from_the_mounted_secret(stack: NativeStack) -> None:
    url = f"http://127.0.0.1:{stack.ports['api']}/metrics"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=10).status_code == 401
    scrape = httpx.get(url, headers={"Authorization": f"Bearer {stack.metrics_token}"}, timeout=10)
    assert scrape.status_code == 200 and "fleet_queue_depth" in scrape.text


def test_flower_serves_behind_basic_auth_from_the_secret(stack: NativeStack) -> None:
    url = f"http://127.0.0.1:{stack.ports['flower']}"
    user = stack.replicas("flower")[0].env["FLEET_FLOWER_USER"]
    assert httpx.get(f"{url}/", timeout=10).status_code == 401
    assert httpx.get(f"{url}/", auth=(user, "wrong-password"), timeout=10).status_code == 401
    assert httpx.get(f"{url}/", auth=(user, stack.flower_password), timeout=10).status_code == 200


def test_sigterm_soft_shutdown_requeues_a_running_run_within_the_stop_grace(stack: NativeStack) -> None:
    """`docker stop` sends SIGTERM to the container's main process only, then SIGKILL after
    stop_grace_period. The worker must exit before that, and its running run must not be lost."""
    soft_s = float(celery_conf().worker_soft_shutdown_timeout)
    grace_s = duration_s(stack.compose["services"]["worker"]["stop_grace_period"])
    plan: list[dict[str, Any]] = [{"sleep": 1}] * int(soft_s + 2) + [{"final": "survived"}]
    resp = stack.submit(plan, max_seconds=60)
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["id"]
    r = stack.redis()
    wait_for(lambda: stack.get(run_id)["started_at"] and r.get(stack.keys.run_lease(run_id)), 20, "never ran")
    started_at = stack.get(run_id)["started_at"]
    holder_pid = int(r.get(stack.keys.run_lease(run_id)).split(":")[1])  # host:pid:token of the holder
    [victim] = [
        p
        for p in stack.replicas("worker")
        if p.popen and p.popen.poll() is None
        and holder_pid in {c.pid for c in psutil.Process(p.popen.pid).children(recursive=True)}
    ]  # fmt: skip
    assert victim.popen is not None
    sent = time.monotonic()
    victim.popen.send_signal(signal.SIGTERM)  # the main process only, as docker stop does
    try:
        code = victim.popen.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the worker outlived stop_grace_period ({grace_s} s):\n{victim.text()}"
        ) from None
    exited_after_s = time.monotonic() - sent
    assert code == 0, victim.text()[-3000:]
    at_exit = stack.get(run_id)
    assert at_exit["status"] not in TERMINAL, "the run outlasts the soft shutdown, so it is requeued"
    run = stack.wait(run_id, timeout=40)
    assert (run["status"], run["output"]) == ("succeeded", "survived"), (run, stack.logs())
    assert run["started_at"] == started_at, "resumed, not started again"
    assert run["usage"]["steps"] == len(plan)
    assert exited_after_s >= soft_s - 1, "running work got the soft shutdown's time to finish"


def test_kill_all_stops_a_running_loop_and_refuses_submissions_until_deleted(stack: NativeStack) -> None:
    resp = stack.submit([{"sleep": 0.5}], loop=True, max_seconds=30)
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["id"]
    wait_for(lambda: stack.get(run_id)["status"] == "running", 20, "the loop run never ran")
    r = stack.redis()
    pipe = r.pipeline(transaction=True)
    pipe.set(stack.keys.kill_all(), "incident 42")  # what the runbook's redis-cli SET does
    pipe.time()
    _, (seconds, micros) = pipe.execute()
    killed_at = seconds + micros / 1e6
    try:
        run = stack.wait(run_id, timeout=10)
        assert (run["status"], run["stop_reason"]) == ("stopped", "killed"), run
        assert run["error"]["message"] == "incident 42", run
        assert epoch(run["finished_at"]) - killed_at <= 1.0, "stops within 1 s while it sleeps"
        refused = stack.submit([{"final": "x"}])
        assert refused.status_code == 503, refused.text
        assert "incident 42" in refused.json()["error"]["message"]
    finally:
        r.delete(stack.keys.kill_all())
    restored = stack.submit([{"final": "back"}])
    assert restored.status_code == 202, restored.text
    assert stack.wait(restored.json()["id"])["status"] == "succeeded"
