"""Sentinels and data nodes with passwords, for real: a primary and a replica with `requirepass`,
Sentinels with their own `requirepass`; the fleet's clients (redis-py, asyncio with its pub/sub,
Celery's broker and result backend) reach the primary through them with the passwords from the
secrets files, and a wrong or missing password stops a process at start, naming the setting and
never the password."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ROOT, SentinelGroup
from worker.celery_app import make_app
from worker.redis_conn import async_redis_for, password_problem, redis_for
from worker.settings import load_settings

NODE_PASSWORD = "node-" + secrets.token_urlsafe(16)
SENTINEL_PASSWORD = "sentinel-" + secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    setup = SentinelGroup(
        replicas=1, sentinels=1, password=NODE_PASSWORD, sentinel_password=SENTINEL_PASSWORD
    )
    yield setup
    setup.close()


def secret_file(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n")
    return str(path)


@pytest.fixture
def env(group: SentinelGroup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "REDIS_URL": group.url,
        "FLEET_REDIS_PASSWORD_FILE": secret_file(tmp_path, "redis_password", NODE_PASSWORD),
        "FLEET_REDIS_SENTINEL_PASSWORD_FILE": secret_file(tmp_path, "sentinel_password", SENTINEL_PASSWORD),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def test_clients_reach_the_primary_through_sentinels_with_both_passwords(env: dict[str, str]) -> None:
    settings = load_settings()
    r = redis_for(settings)
    r.set("probe", "1")
    assert r.get("probe") == "1"
    assert r.info("replication")["role"] == "master"
    assert password_problem(settings) is None

    async def publish_and_hear() -> str:
        ar = async_redis_for(settings)
        pubsub = ar.pubsub()
        await pubsub.psubscribe("fleet:run:*:ended")  # what the API's waiter does
        await ar.publish("fleet:run:x:ended", "done")
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await ar.aclose()
                return str(message["data"])
        raise AssertionError("no message on the pattern subscription")

    assert asyncio.run(publish_and_hear()) == "done"


def test_celery_sends_to_the_primary_and_its_result_backend_answers(env: dict[str, str]) -> None:
    settings = load_settings()
    app = make_app(settings)
    app.send_task("fleet.probe", queue="sentinel-probe", ignore_result=True)
    assert redis_for(settings).llen("sentinel-probe") == 1
    assert app.backend.client.ping()  # type: ignore[attr-defined]
    app.close()


def test_a_wrong_or_missing_sentinel_password_is_named_and_never_shown(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(12)
    monkeypatch.setenv("FLEET_REDIS_SENTINEL_PASSWORD_FILE", secret_file(tmp_path, "wrong", wrong))
    problem = password_problem(load_settings())
    assert problem is not None and "refused the Sentinel password" in problem
    assert "FLEET_REDIS_SENTINEL_PASSWORD" in problem and wrong not in problem

    monkeypatch.setenv("FLEET_REDIS_SENTINEL_PASSWORD_FILE", secret_file(tmp_path, "empty", ""))
    problem = password_problem(load_settings())
    assert problem is not None and "needs a password" in problem


def test_a_wrong_node_password_is_named_by_its_file(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(12)
    path = secret_file(tmp_path, "node_wrong", wrong)
    monkeypatch.setenv("FLEET_REDIS_PASSWORD_FILE", path)
    problem = password_problem(load_settings())
    assert problem is not None and f"refused the password from {path}" in problem
    assert wrong not in problem and ":***@" in problem


def test_the_api_exits_2_at_start_with_a_wrong_sentinel_password(env: dict[str, str], tmp_path: Path) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(12)
    child_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
        **env,
        "FLEET_REDIS_SENTINEL_PASSWORD_FILE": secret_file(tmp_path, "wrong_api", wrong),
        "FLEET_API_KEYS": "t1:key-tenant-one-0001",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "fleetcli", "api"],
        env=child_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "refused the Sentinel password" in done.stderr and wrong not in done.stderr + done.stdout


def test_fleet_config_shows_neither_password(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fleetcli", "config"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert NODE_PASSWORD not in done.stdout and SENTINEL_PASSWORD not in done.stdout
    assert "redis+sentinel://:***@" in done.stdout


def doctor(env: dict[str, str], tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    child_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
        **env,
        "FLEET_API_KEYS": "t1:key-tenant-one-0001",
        "FLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'history.db'}",
        "PYTHONPATH": str(ROOT),
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "fleetcli", "doctor", "--kind", "worker"],
        env=child_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fleet_doctor_reaches_redis_through_the_sentinels_and_names_a_refused_sentinel_password(
    env: dict[str, str], tmp_path: Path
) -> None:
    healthy = doctor(env, tmp_path)
    (redis_line,) = [ln for ln in healthy.stdout.splitlines() if ln.split()[1:2] == ["redis"]]
    assert redis_line.startswith("ok "), healthy.stdout + healthy.stderr

    wrong = "wrong-" + secrets.token_urlsafe(12)
    refused = doctor(
        env, tmp_path, FLEET_REDIS_SENTINEL_PASSWORD_FILE=secret_file(tmp_path, "wrong_doc", wrong)
    )
    assert refused.returncode == 1
    (redis_line,) = [ln for ln in refused.stdout.splitlines() if ln.split()[1:2] == ["redis"]]
    assert redis_line.startswith("FAIL") and "refused the Sentinel password" in redis_line
    for secret in (wrong, NODE_PASSWORD, SENTINEL_PASSWORD):
        assert secret not in refused.stdout + refused.stderr
