"""`fleet doctor`, the deploy preflight (fleetcli/doctor.py).

The command runs as a real subprocess against a real redis-server of the test's own (with a
password) and a local HTTP stub standing in for the model service's `GET /models`; the check
functions are also called directly where that is cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import pytest
import yaml

from fleetcli import doctor
from tests.harness import FLEET_CMD, ROOT, RedisServer, free_port
from worker.settings import Settings

MODEL_KEY = "sk-doctor-" + secrets.token_urlsafe(16)
API_KEY = "api-" + secrets.token_urlsafe(16)
REDIS_PASSWORD = "rp-" + secrets.token_urlsafe(16)


class ModelStub:
    """An OpenAI-compatible service's `GET /v1/models`: 200 for MODEL_KEY, 401 for any other key."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    self.send_response(404)
                    self.end_headers()
                    return
                good = self.headers.get("Authorization") == f"Bearer {MODEL_KEY}"
                body = json.dumps({"data": [{"id": "m"}]} if good else {"error": "bad key"}).encode()
                self.send_response(200 if good else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def redis_auth() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True, password=REDIS_PASSWORD)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def model() -> Iterator[ModelStub]:
    stub = ModelStub()
    try:
        yield stub
    finally:
        stub.close()


@dataclass
class Result:
    code: int
    out: str
    err: str

    def line(self, name: str) -> str:
        [found] = [ln for ln in self.out.splitlines() if ln.split()[1:2] == [name]]
        return found


def doctor_run(
    redis_server: RedisServer,
    *args: str,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    password: str = REDIS_PASSWORD,
) -> Result:
    """`fleet doctor ARGS` with the Redis password in a file, API keys, a SQLite history and
    `config` as its YAML file; `env` adds to (or, with "", removes from) the environment."""
    folder = Path(tempfile.mkdtemp(prefix="fleet-doctor-"))
    (folder / "redis_password").write_text(password + "\n")
    (folder / "fleet.yaml").write_text(yaml.safe_dump(config or {}))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "AGENT_MAX_", "OPENAI_"))}
    full = {
        **base,
        "REDIS_URL": redis_server.url,
        "FLEET_REDIS_PASSWORD_FILE": str(folder / "redis_password"),
        "FLEET_CONFIG": str(folder / "fleet.yaml"),
        "FLEET_API_KEYS": f"acme:{API_KEY}",
        "FLEET_DATABASE_URL": f"sqlite:///{folder / 'history.db'}",
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    full = {k: v for k, v in full.items() if v != ""}
    done = subprocess.run(
        [*FLEET_CMD, "doctor", *args], env=full, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    return Result(done.returncode, done.stdout, done.stderr)


def llm_config(base_url: str) -> dict[str, Any]:
    return {"agents": {"llm": {"base_url": base_url, "model": "m"}}}


def assert_no_secret(result: Result) -> None:
    for value in (MODEL_KEY, API_KEY, REDIS_PASSWORD):
        assert value not in result.out + result.err


# -- the command against real processes -----------------------------------------------------------


def test_a_healthy_stack_passes_every_check(redis_auth: RedisServer, model: ModelStub) -> None:
    result = doctor_run(redis_auth, config=llm_config(model.base_url), env={"OPENAI_API_KEY": MODEL_KEY})
    assert result.code == 0, result.out + result.err
    for name in ("config", "redis", "redis.appendonly", "redis.maxmemory-policy", "redis.capacity",
                 "clock", "database", "secrets.api_keys", "secrets.model_key", "upstream.llm"):  # fmt: skip
        assert result.line(name).startswith("ok "), result.out
    assert "GET /models 200" in result.line("upstream.llm")
    assert "connect ok" in result.line("upstream.llm")
    assert_no_secret(result)


def test_a_wrong_redis_password_fails_and_names_redis(redis_auth: RedisServer) -> None:
    result = doctor_run(redis_auth, "--kind", "worker", password="not-the-password-" + "x" * 8)
    assert result.code == 1, result.out
    line = result.line("redis")
    assert line.startswith("FAIL") and "Redis" in line and "password" in line
    assert "not-the-password" not in result.out + result.err
    assert_no_secret(result)


def test_an_unreachable_base_url_fails_at_connect(redis_auth: RedisServer) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    result = doctor_run(redis_auth, "--kind", "tool-worker", config=llm_config(closed),
                        env={"OPENAI_API_KEY": MODEL_KEY})  # fmt: skip
    assert result.code == 1, result.out
    line = result.line("upstream.llm")
    assert line.startswith("FAIL") and "connect" in line and "key refused" not in line
    assert_no_secret(result)


def test_a_refused_model_key_fails_with_401_distinct_from_unreachable(
    redis_auth: RedisServer, model: ModelStub
) -> None:
    wrong = "sk-wrong-" + secrets.token_urlsafe(12)
    result = doctor_run(redis_auth, "--kind", "tool-worker", config=llm_config(model.base_url),
                        env={"OPENAI_API_KEY": wrong})  # fmt: skip
    assert result.code == 1, result.out
    line = result.line("upstream.llm")
    assert line.startswith("FAIL") and "key refused" in line and "401" in line
    assert "connect ok" in line, "the network stages passed: only the key is refused"
    assert wrong not in result.out + result.err


def test_a_missing_model_key_fails_and_no_secret_is_printed(
    redis_auth: RedisServer, model: ModelStub
) -> None:
    result = doctor_run(redis_auth, config=llm_config(model.base_url))
    assert result.code == 1, result.out
    assert result.line("secrets.model_key").startswith("FAIL")
    assert "OPENAI_API_KEY" in result.line("secrets.model_key")
    assert result.line("secrets.api_keys").startswith("ok"), "the API keys are there"
    assert_no_secret(result)


def test_json_output_parses_with_every_check(redis_auth: RedisServer, model: ModelStub) -> None:
    result = doctor_run(redis_auth, "--json", config=llm_config(model.base_url))
    assert result.code == 1
    report = json.loads(result.out)
    assert report["kind"] == "all" and report["ok"] is False
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["redis"] == "ok" and statuses["secrets.model_key"] == "fail"
    assert set(statuses.values()) <= {"ok", "warn", "fail"}
    assert all(isinstance(c["detail"], str) and c["detail"] for c in report["checks"])
    assert_no_secret(result)


def test_the_kind_picks_the_checks(redis_auth: RedisServer, model: ModelStub) -> None:
    """An agent worker needs no model key and no upstream: the missing key fails only the kinds
    that call the model."""
    config = llm_config(model.base_url)
    worker = doctor_run(redis_auth, "--kind", "worker", "--json", config=config)
    assert worker.code == 0, worker.out
    names = {c["name"] for c in json.loads(worker.out)["checks"]}
    assert {"config", "redis", "clock", "database"} <= names
    assert not any(n.startswith(("secrets.", "upstream")) for n in names)
    api = doctor_run(redis_auth, "--kind", "api", "--json", config=config, env={"FLEET_API_KEYS": ""})
    assert api.code == 1
    checks = {c["name"]: c["status"] for c in json.loads(api.out)["checks"]}
    assert checks["secrets.api_keys"] == "fail" and "upstream.llm" not in checks
    assert doctor_run(redis_auth, "--kind", "tool-worker", config=config).code == 1


def test_redis_without_aof_or_room_for_the_queue_is_a_warning_naming_the_setting() -> None:
    server = RedisServer(appendonly=False, password=REDIS_PASSWORD)
    try:
        server.client().config_set("maxmemory", "1mb")
        result = doctor_run(server, "--kind", "worker")
    finally:
        server.close()
    assert result.code == 0, "a warning passes"
    line = result.line("redis.appendonly")
    assert line.startswith("warn") and "appendonly" in line
    capacity = result.line("redis.capacity")
    assert capacity.startswith("warn") and "maxmemory" in capacity and "FLEET_MAX_QUEUED" in capacity


def test_an_invalid_config_fails_naming_the_setting(redis_auth: RedisServer) -> None:
    result = doctor_run(redis_auth, "--kind", "worker", config={"tools": {"allowlist": ["no.such.tool"]}})
    assert result.code == 1
    assert result.line("config").startswith("FAIL") and "no.such.tool" in result.line("config")
    bad = doctor_run(redis_auth, config={"tools": {"retries": {"max": -1}}})
    assert bad.code == 1 and "tools.retries.max" in bad.line("config")


def test_a_usage_error_exits_2(redis_auth: RedisServer) -> None:
    assert doctor_run(redis_auth, "--kind", "database").code == 2
    assert doctor_run(redis_auth, "--verbose").code == 2


# -- the check functions --------------------------------------------------------------------------


def test_the_expected_redis_settings_are_ops_redis_conf() -> None:
    directives = {}
    for line in (ROOT / "ops" / "redis.conf").read_text().splitlines():
        parts = line.split("#")[0].split()
        if len(parts) >= 2:
            directives[parts[0]] = " ".join(parts[1:])
    for name, value in doctor.REDIS_EXPECTED.items():
        assert directives[name] == value, name


def test_clock_skew_over_two_seconds_is_a_warning() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    assert doctor.check_clock(r).status == "ok"
    import time

    ahead = doctor.check_clock(r, now=lambda: time.time() + 5)
    assert ahead.status == "warn" and "ahead" in ahead.detail
    behind = doctor.check_clock(r, now=lambda: time.time() - 5)
    assert behind.status == "warn" and "behind" in behind.detail


def test_https_to_a_plain_http_port_fails_at_the_tls_stage(model: ModelStub) -> None:
    with pytest.raises(doctor.StageFailed) as failed:
        doctor.reach(httpx.URL(f"https://127.0.0.1:{model.port}/"), Settings(), trusted=True)
    assert failed.value.stage == "tls"


def test_the_ssrf_guard_stage_refuses_a_private_upstream_not_allowed(model: ModelStub) -> None:
    url = httpx.URL(f"http://127.0.0.1:{model.port}/")
    with pytest.raises(doctor.StageFailed) as failed:
        doctor.reach(url, Settings())
    assert failed.value.stage == "guard" and "loopback" in str(failed.value)
    allowed = Settings.model_validate({"tools": {"http": {"allow_hosts": ["127.0.0.1"]}}})
    assert "connect ok" in doctor.reach(url, allowed)


def test_an_allow_hosts_entry_that_is_not_a_bare_host_fails() -> None:
    settings = Settings()
    for entry in ("https://api.example.com", "api.example.com:8443", "*.example.com", "a/b"):
        check = doctor.check_allowed_host(entry, settings)
        assert check.status == "fail" and check.detail.startswith("guard"), entry


def test_a_host_that_does_not_resolve_fails_at_dns() -> None:
    check = doctor.check_allowed_host("no-such-host.invalid", Settings())
    assert check.status == "fail" and check.detail.startswith("dns")


def test_webhooks_need_a_secret_for_each_tenant_that_may_send_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_WEBHOOK_SECRETS", raising=False)
    assert doctor.check_webhook_secrets(Settings()) == [], "no webhooks configured: nothing to check"
    hooks = {"webhooks": {"tenant_allow_hosts": {"acme": ["h.example"], "beta": ["h.example"]}}}
    [none] = doctor.check_webhook_secrets(Settings.model_validate(hooks))
    assert none.status == "fail"
    secret = "s" * 24
    one = Settings.model_validate({**hooks, "webhook_secrets": f"acme:{secret}"})
    [partial] = doctor.check_webhook_secrets(one)
    assert partial.status == "fail" and "beta" in partial.detail and secret not in partial.detail
    both = Settings.model_validate({**hooks, "webhook_secrets": f"acme:{secret},beta:{secret}"})
    assert [c.status for c in doctor.check_webhook_secrets(both)] == ["ok"]


def test_the_search_service_is_checked_up_to_its_connect(model: ModelStub) -> None:
    url = f"http://127.0.0.1:{model.port}/search?token=abc"
    check = doctor.check_url_upstream("upstream.search", url, Settings())
    assert check.status == "ok" and "connect ok" in check.detail, "operator config: the guard exempts it"
    assert "token=abc" not in check.detail, "a query may carry a token"
    closed = doctor.check_url_upstream("upstream.search", f"http://127.0.0.1:{free_port()}/", Settings())
    assert closed.status == "fail" and closed.detail.split(": ")[1] == "connect"


@pytest.fixture
def untrusted_tls(tmp_path: Path) -> Iterator[int]:
    """A TLS server on loopback with a self-signed certificate (made by the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                context.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_an_untrusted_certificate_fails_at_the_tls_stage(untrusted_tls: int) -> None:
    with pytest.raises(doctor.StageFailed) as failed:
        doctor.reach(httpx.URL(f"https://127.0.0.1:{untrusted_tls}/v1"), Settings(), trusted=True)
    assert failed.value.stage == "tls" and "certificate" in str(failed.value)
