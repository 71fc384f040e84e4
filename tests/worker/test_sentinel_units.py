"""REDIS_URL's Sentinel form (redis+sentinel://): parsing, the errors of a malformed one, the
passwords of the data nodes and of the Sentinels, and what Celery is given. No server here:
tests/fleet/test_sentinel.py runs a fleet on real Sentinels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT, free_port
from worker.celery_app import celery_redis_url, make_app, sentinel_options
from worker.settings import ConfigError, SentinelURL, load_settings, masked_url, parse_sentinel_url


def test_a_sentinel_url_names_its_sentinels_master_and_database() -> None:
    parsed = parse_sentinel_url("redis+sentinel://s1:26379,s2:26380,10.0.0.3/mymaster/2")

    assert parsed == SentinelURL((("s1", 26379), ("s2", 26380), ("10.0.0.3", 26379)), "mymaster", 2)
    assert parse_sentinel_url("redis+sentinel://[::1]:26379/m").sentinels == (("::1", 26379),)
    assert parse_sentinel_url("redis+sentinel://s1:26379/m/").db == 0


def test_a_sentinel_url_carries_the_data_nodes_password_percent_encoded() -> None:
    parsed = parse_sentinel_url("redis+sentinel://fleet:p%40ss@s1:26379,s2:26379/m/0")

    assert (parsed.username, parsed.password) == ("fleet", "p@ss")
    assert "p@ss" not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://s1:26379,s2:26379", "no master name"),
        ("redis+sentinel://s1:26379/", "no master name"),
        ("redis+sentinel://s1:26379,,s2:26379/m/0", "empty Sentinel host"),
        ("redis+sentinel:///m/0", "empty Sentinel host"),
        ("redis+sentinel://s1:263x9/m/0", "bad port"),
        ("redis+sentinel://s1:70000/m/0", "bad port"),
        ("redis+sentinel://:26379/m/0", "has no host"),
        ("redis+sentinel://s1:26379/m/zero", "is not a number"),
        ("redis+sentinel://s1:26379/m/0/extra", "too many path parts"),
    ],
)
def test_a_malformed_sentinel_url_stops_the_process_naming_the_problem_not_the_password(
    url: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_url = url.replace("redis+sentinel://", "redis+sentinel://:hunter2-secret@")
    monkeypatch.setenv("REDIS_URL", secret_url)

    with pytest.raises(ConfigError) as raised:
        load_settings()

    assert str(raised.value).startswith("REDIS_URL: ") and problem in str(raised.value)
    assert "hunter2-secret" not in str(raised.value) and ":***@" in str(raised.value)


def test_the_data_nodes_password_file_goes_into_a_sentinel_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("n0de pass\n")
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://s1:26379,s2:26379/mymaster/1")
    monkeypatch.setenv("FLEET_REDIS_PASSWORD_FILE", str(secret))

    s = load_settings()

    assert s.sentinel is not None and s.sentinel.password == "n0de pass"
    assert masked_url(s.redis_url) == "redis+sentinel://:***@s1:26379,s2:26379/mymaster/1"
    assert s.sentinel_password() is None  # the Sentinels' password is a setting of its own


def test_the_sentinels_password_comes_from_its_setting_or_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://s1:26379/m/0")
    secret = tmp_path / "sentinel_password"
    secret.write_text("sentinel-secret\n")
    monkeypatch.setenv("FLEET_REDIS_SENTINEL_PASSWORD_FILE", str(secret))
    assert load_settings().sentinel_password() == "sentinel-secret"

    monkeypatch.setenv("FLEET_REDIS_SENTINEL_PASSWORD", "from-the-env-1")
    assert load_settings().sentinel_password() == "from-the-env-1"

    monkeypatch.setenv("FLEET_REDIS_SENTINEL_PASSWORD_FILE", str(tmp_path / "missing"))
    monkeypatch.delenv("FLEET_REDIS_SENTINEL_PASSWORD")
    with pytest.raises(ConfigError, match=r"^FLEET_REDIS_SENTINEL_PASSWORD_FILE: cannot read"):
        load_settings().sentinel_password()


def test_celery_gets_one_sentinel_url_per_sentinel_and_the_master_name_in_its_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://:p%3Bw@s1:26379,[::1]:26380/mymaster/3")
    monkeypatch.setenv("FLEET_REDIS_SENTINEL_PASSWORD", "sentinel-pw-9")
    s = load_settings()

    assert celery_redis_url(s) == "sentinel://:p%3Bw@s1:26379/3;sentinel://:p%3Bw@[::1]:26380/3"
    options = sentinel_options(s)
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"]["password"] == "sentinel-pw-9"
    app = make_app(s)
    assert app.conf.broker_transport_options["master_name"] == "mymaster"
    assert app.conf.result_backend_transport_options["master_name"] == "mymaster"
    assert app.conf.broker_transport_options["visibility_timeout"] >= 3600
    with app.connection() as conn:  # kombu sees every Sentinel (its alternates)
        assert conn.transport_cls == "sentinel" and len(conn.alt) == 2


def test_a_plain_redis_url_is_left_as_it_is_and_waits_for_no_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    s = load_settings()

    assert (s.sentinel, celery_redis_url(s), sentinel_options(s)) == (None, "redis://redis:6379/0", {})
    assert s.wait_replicas == 0


def test_on_sentinel_a_write_waits_for_one_replica_unless_set_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://s1:26379/m/0")
    assert load_settings().wait_replicas == 1
    monkeypatch.setenv("FLEET_REDIS__WAIT_REPLICAS", "0")
    assert load_settings().wait_replicas == 0
    monkeypatch.setenv("FLEET_REDIS__WAIT_REPLICAS", "2")
    monkeypatch.setenv("FLEET_REDIS__WAIT_TIMEOUT_MS", "0")
    with pytest.raises(ConfigError, match=r"redis\.wait_timeout_ms"):
        load_settings()


def test_fleet_up_starts_no_redis_for_a_sentinel_url_whose_primary_does_not_answer(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
        "REDIS_URL": f"redis+sentinel://:node-pw-123@127.0.0.1:{free_port()}/mymaster/0",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "fleetcli", "up", "--no-flower"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no primary answers at redis+sentinel://:***@127.0.0.1:" in done.stderr
    assert "node-pw-123" not in done.stdout + done.stderr
