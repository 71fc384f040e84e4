"""docker-compose.yml run for real: the built images in Docker, Redis and PostgreSQL beside them.

What the compose file, the Dockerfiles and ops/runbook.md promise, proven on the running stack:
every service healthy; a run through the published port; scaling seen by /readyz; the kill
switch set with redis-cli in the Redis container; uid 10001 on a read-only root; no secret in
the images' history; a graceful stop of 3 of 4 agent workers that loses none of 6 running runs;
worker healthchecks failing while Redis is stopped and passing again once it is back. The tests
leave the stack as they found it (default scale, no kill switch), so that they pass in any order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.containers.conftest import IMAGES, SERVICES, Stack, docker
from worker.keys import Keys

pytestmark = pytest.mark.containers

KEYS = Keys("fleet")  # FLEET_KEY_PREFIX in .env.example


def wait_until(predicate: Any, timeout: float, message: str | Callable[[], str], every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(every)


def workers_ready(stack: Stack) -> dict[str, int] | None:
    resp = stack.ready()
    if resp.status_code != 200:
        return None
    workers: dict[str, int] = resp.json()["workers"]
    return workers


def scale(stack: Stack, agent: int, tool: int) -> None:
    stack.up("--scale", f"worker={agent}", "--scale", f"tool-worker={tool}")
    stack.wait_healthy()
    wait_until(
        lambda: workers_ready(stack) == {"agent": agent, "tool": tool},
        90,
        lambda: f"/readyz: {stack.ready().text}",
    )


def test_every_service_becomes_healthy(stack: Stack) -> None:
    states = stack.wait_healthy()
    running = {stack.service_of(c) for c in stack.containers(running=True)}
    assert set(SERVICES) <= running, states
    for c in stack.containers(running=True):
        assert c["State"]["Health"]["Status"] == "healthy", (c["Name"], states)
    resp = stack.ready()
    assert resp.status_code == 200, resp.text
    assert resp.json()["redis"] == "ok"


def test_a_run_submitted_through_the_published_port_succeeds(stack: Stack) -> None:
    resp = stack.submit([{"tool": "echo", "args": {"n": 1}}, {"final": "done in containers"}])
    assert resp.status_code == 202, resp.text
    run = stack.wait(resp.json()["id"])
    assert (run["status"], run["output"]) == ("succeeded", "done in containers"), run
    step = run["steps"][0]
    assert step["tool"] == "echo" and step["ok"] is True, step  # answered by the tool worker


def test_scaling_workers_shows_in_readyz(stack: Stack) -> None:
    default = {"agent": len(stack.containers("worker", running=True)), "tool": 1}
    try:
        scale(stack, 4, 2)
        assert len(stack.containers("worker", running=True)) == 4
        assert len(stack.containers("tool-worker", running=True)) == 2
    finally:
        scale(stack, default["agent"], default["tool"])


def test_kill_switch_set_with_redis_cli_in_the_redis_container_makes_the_api_answer_503(stack: Stack) -> None:
    key = KEYS.kill_all()
    try:
        assert stack.redis_cli("SET", key, "1") == "OK"
        resp = stack.submit([{"final": "never"}])
        assert resp.status_code == 503, resp.text
        assert "Retry-After" in resp.headers
    finally:
        assert stack.redis_cli("DEL", key) == "1"
    resp = stack.submit([{"final": "after the switch"}])
    assert resp.status_code == 202, resp.text
    assert stack.wait(resp.json()["id"])["status"] == "succeeded"


@pytest.mark.parametrize("service", ["api", "worker", "tool-worker", "flower"])
def test_fleet_containers_run_as_uid_10001_on_a_read_only_root(stack: Stack, service: str) -> None:
    for c in stack.containers(service, running=True):
        assert c["HostConfig"]["ReadonlyRootfs"] is True, c["Name"]
        assert c["HostConfig"]["CapDrop"] == ["ALL"], c["Name"]
        status = docker("exec", c["Id"], "cat", "/proc/1/status").stdout
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uids) == {"10001"}, (c["Name"], uids)
        write = docker("exec", c["Id"], "python", "-c", "open('/app/x', 'w')", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr, write
        tmp = docker("exec", c["Id"], "python", "-c", "open('/tmp/x', 'w').write('ok')", check=False)
        assert tmp.returncode == 0, tmp  # the tmpfs


@pytest.mark.parametrize("image", IMAGES.values())
def test_docker_history_shows_no_secret(stack: Stack, image: str) -> None:
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "useradd --system --uid 10001" in history, history  # the runtime stage's own steps
    for name, value in stack.secrets().items():
        assert value not in history, f"{image}: the {name} secret is in its history"
    for word in ("fleet_api_keys", "redis_password", "openai_api_key", "secrets/"):
        assert word not in history, f"{image}: {word} in its history"


def steps_logged(container: dict[str, Any], run_ids: list[str]) -> int:
    """Lines of a worker's log about these runs: a run's steps are tasks, on any agent worker."""
    logs = docker("logs", container["Id"]).stdout
    return sum(logs.count(f'"run_id": "{run_id}"') for run_id in run_ids)


def test_stopping_3_of_4_agent_workers_mid_run_loses_none_of_6_running_runs(stack: Stack) -> None:
    default = len(stack.containers("worker", running=True))
    scale(stack, 4, 1)
    try:
        # Longer than the 15 s soft shutdown, which the stopped workers use up.
        plan: list[dict[str, Any]] = [{"sleep": 1}] * 20 + [{"final": "survived"}]
        run_ids = []
        for _ in range(6):
            resp = stack.submit(plan, max_seconds=60)
            assert resp.status_code == 202, resp.text
            run_ids.append(resp.json()["id"])
        wait_until(
            lambda: all(stack.get(r)["status"] == "running" for r in run_ids) and time.sleep(3) is None,
            60,
            lambda: f"not all 6 runs running: {[stack.get(r)['status'] for r in run_ids]}",
        )
        workers = stack.containers("worker", running=True)
        by_load = sorted(workers, key=lambda c: -steps_logged(c, run_ids))
        victims = by_load[:3]
        assert sum(steps_logged(c, run_ids) for c in victims) > 0, "the stopped workers ran steps"
        started = time.monotonic()
        docker("stop", *[c["Id"] for c in victims], timeout=120)  # SIGTERM, then the grace
        stopped_s = time.monotonic() - started
        for c in victims:
            code = docker("inspect", "-f", "{{.State.ExitCode}}", c["Id"]).stdout.strip()
            assert code == "0", f"{c['Name']} exited {code}: not a clean soft shutdown"
        assert stopped_s < 30, f"the stop took {stopped_s:.0f} s: Docker's SIGKILL came"
        assert any(stack.get(r)["status"] == "running" for r in run_ids), "the stop came mid-run"
        for run_id in run_ids:
            run = stack.wait(run_id, timeout=120)
            assert (run["status"], run["output"]) == ("succeeded", "survived"), run
        assert len(stack.containers("worker", running=True)) == 1
    finally:
        scale(stack, default, 1)


def health(stack: Stack, service: str) -> set[str]:
    return {c["State"]["Health"]["Status"] for c in stack.containers(service, running=True)}


def test_worker_healthchecks_go_unhealthy_while_redis_is_stopped_and_healthy_when_it_is_back(
    stack: Stack,
) -> None:
    """A worker beats only while it reaches Redis: its probe fails after 15 s without a beat and
    3 failed checks 15 s apart. The API's probe is /healthz (the process serves), its readiness
    /readyz (503 without Redis). Docker restarts no unhealthy container; compose's restart policy
    is for exits, and none happens."""
    stack.compose("stop", "redis")
    try:
        wait_until(lambda: stack.ready().status_code == 503, 60, "/readyz stayed 200 without Redis")
        resp = stack.submit([{"final": "no redis"}])
        assert resp.status_code == 503, resp.text
        wait_until(
            lambda: (
                health(stack, "worker") == {"unhealthy"} and health(stack, "tool-worker") == {"unhealthy"}
            ),
            150,
            lambda: f"workers still healthy without Redis: {stack.states()}",
            every=3,
        )
        assert health(stack, "api") == {"healthy"}, stack.states()
    finally:
        stack.compose("start", "redis")
    stack.wait_healthy(timeout=180)
    wait_until(lambda: workers_ready(stack), 90, lambda: f"/readyz: {stack.ready().text}")
    for c in stack.containers(running=True):
        assert c["RestartCount"] == 0, f"{c['Name']} restarted during the Redis stop"
    resp = stack.submit([{"tool": "echo", "args": {}}, {"final": "redis is back"}])
    assert resp.status_code == 202, resp.text
    assert stack.wait(resp.json()["id"])["status"] == "succeeded"
