"""A Redis with a password: a real fleet takes it from the secrets file; a wrong one stops it at start.

The redis-server runs with `--requirepass`; REDIS_URL has no password, so the processes can only
have it from FLEET_REDIS_PASSWORD_FILE (what /run/secrets/redis_password is in a container).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import ROOT, Fleet, RedisServer, free_port, wait_for

PASSWORD = "rp-" + secrets.token_urlsafe(24)
WRONG_PASSWORD = "wrong-" + secrets.token_urlsafe(24)
FLOWER_PASSWORD = "flower-" + secrets.token_urlsafe(12)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    redis_server = RedisServer(password=PASSWORD)
    yield redis_server
    redis_server.close()


def password_file(directory: Path, password: str) -> str:
    path = directory / "redis_password"
    path.write_text(password + "\n")
    path.chmod(0o400)
    return str(path)


@pytest.fixture(scope="module")
def fleet(server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    secret = password_file(tmp_path_factory.mktemp("secrets"), PASSWORD)
    running = Fleet(
        server, env_extra={"FLEET_REDIS_PASSWORD_FILE": secret, "FLEET_FLOWER_PASSWORD": FLOWER_PASSWORD}
    )
    try:
        running.start()
        yield running
    finally:
        running.close()


def test_the_server_refuses_a_client_without_the_password(server: RedisServer) -> None:
    import redis

    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=server.port, socket_timeout=5).ping()


def test_a_fleet_runs_a_run_with_the_password_from_the_secrets_file(fleet: Fleet) -> None:
    assert "@" not in fleet.env["REDIS_URL"], "the password is not in the URL"
    plan = [{"tool": "echo", "args": {"n": 1}}, {"final": "done"}]

    run = fleet.wait(fleet.submit(input={"plan": plan})["id"])

    assert (run["status"], run["output"]) == ("succeeded", "done"), (run, fleet.logs())
    assert run["steps"][0]["ok"] is True, "the tool worker answered through the same Redis"
    with fleet.client() as c:
        assert c.get("/readyz").status_code == 200
    assert fleet.r.exists(f"fleet:run:{run['id']}")
    for proc in fleet.procs:
        assert PASSWORD not in proc.text(), f"{proc.name} logged the password"


def test_flower_sees_the_workers_through_the_password_protected_broker(fleet: Fleet) -> None:
    port = free_port()
    flower = fleet.spawn("flower", "flower", f"--port={port}")
    url = f"http://127.0.0.1:{port}/api/workers?refresh=1"
    auth = ("fleet", FLOWER_PASSWORD)
    workers: dict[str, object] = {}

    def sees_both_kinds() -> bool:
        nonlocal workers
        try:
            resp = httpx.get(url, auth=auth, timeout=10)
        except httpx.HTTPError:
            return False
        workers = resp.json() if resp.status_code == 200 else {}
        names = list(workers)
        return any(n.startswith("agent-") for n in names) and any(n.startswith("tool-") for n in names)

    wait_for(sees_both_kinds, 60, f"Flower never listed the workers: {workers}\n{flower.text()[-3000:]}")
    fleet.stop_proc(flower)
    assert PASSWORD not in flower.text(), "Flower logged the password"


def fleet_cli(env: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetcli", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


def test_the_cli_uses_the_password_and_fleet_config_masks_it(fleet: Fleet) -> None:
    switched = fleet_cli(fleet.env, "kill", "tool", "echo", "--reason", "auth test")
    try:
        assert switched.returncode == 0, switched.stderr
        assert fleet.r.get("fleet:kill:tool:echo") == "auth test"
    finally:
        fleet.r.delete("fleet:kill:tool:echo")

    shown = fleet_cli(fleet.env, "config")

    assert shown.returncode == 0, shown.stderr
    assert f"redis_url: redis://:***@127.0.0.1:{fleet.redis.port}/0" in shown.stdout
    assert PASSWORD not in shown.stdout + shown.stderr


@pytest.mark.parametrize("process", [["api"], ["worker"], ["tool-worker"], ["flower"]])
@pytest.mark.parametrize("how", ["wrong file", "wrong url", "none"])
def test_a_refused_password_stops_the_process_at_start_without_showing_it(
    process: list[str], how: str, server: RedisServer, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "AGENT_MAX_"))}
    env.update(PYTHONPATH=str(ROOT), REDIS_URL=server.url, FLEET_FLOWER_PASSWORD="flower-" + PASSWORD[:12])
    if how == "wrong file":
        env["FLEET_REDIS_PASSWORD_FILE"] = password_file(tmp_path, WRONG_PASSWORD)
    elif how == "wrong url":
        env["REDIS_URL"] = f"redis://:{WRONG_PASSWORD}@127.0.0.1:{server.port}/0"

    result = fleet_cli(env, *process)

    assert result.returncode == 2, (result.stdout, result.stderr)
    message = result.stderr.strip()
    where = f"Redis at redis://{':***@' if how != 'none' else ''}127.0.0.1:{server.port}/0"
    assert message.startswith(f"fleet: {where}"), message
    expected = {
        "wrong file": f"refused the password from {env.get('FLEET_REDIS_PASSWORD_FILE')}",
        "wrong url": "refused the password from REDIS_URL",
        "none": "needs a password",
    }[how]
    assert expected in message, message
    assert WRONG_PASSWORD not in result.stdout + result.stderr
    assert PASSWORD not in result.stdout + result.stderr
