"""Settings: precedence, the seed's env names, secrets and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.gateway.breaker import BreakerPolicy
from worker.gateway.ratelimit import parse_rate
from worker.gateway.retrybudget import RetryPolicy
from worker.settings import ConfigError, Settings, load_settings, masked_url, parse_tenant_keys

SAFE_DEFAULT = """\
runtime:
  env:
    AGENT_MAX_STEPS: 25
    AGENT_MAX_TOOL_CALLS: 12
    AGENT_MAX_SECONDS: 60
tools:
  allowlist: ["search.read", "http.get"]
  timeouts_ms: { default: 8000 }
  retries: { max: 2, backoff_ms: [200, 800] }
observability:
  sampled_tool_results: true
  result_sample_rate: 0.01
rollout:
  canary_percent: 10
  rollback_on_error_rate: 0.05
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("FLEET_", "AGENT_MAX_")) or name in ("REDIS_URL", "SENTRY_DSN"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return str(path)


def test_built_in_defaults_are_the_safe_default_config() -> None:
    s = load_settings()
    assert (s.max_steps, s.max_tool_calls, s.max_seconds) == (25, 12, 60)
    assert s.tools.allowlist == ["search.read", "http.get"]
    assert s.tools.timeout_s("anything") == 8.0
    assert s.tools.retries.backoff_ms == [200, 800]
    assert s.redis_url == "redis://127.0.0.1:6379/0"


def test_safe_default_yaml_is_accepted_verbatim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_CONFIG", write(tmp_path, SAFE_DEFAULT))
    s = load_settings()
    assert s.rollout.canary_percent == 10 and s.observability.result_sample_rate == 0.01


def test_environment_beats_yaml_beats_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FLEET_CONFIG",
        write(
            tmp_path,
            "runtime: {env: {AGENT_MAX_STEPS: 9, AGENT_MAX_SECONDS: 30}}\ntools: {allowlist: [echo]}\n",
        ),
    )
    monkeypatch.setenv("AGENT_MAX_STEPS", "7")
    monkeypatch.setenv("FLEET_TOOLS__TIMEOUTS_MS", '{"echo": 100}')
    s = load_settings()
    assert s.max_steps == 7  # env
    assert s.max_seconds == 30  # yaml
    assert s.max_tool_calls == 12  # default
    assert s.tools.allowlist == ["echo"]  # yaml, untouched by another env key of the same section
    assert s.tools.timeout_s("echo") == 0.1 and s.tools.timeout_s("other") == 8.0


@pytest.mark.parametrize(
    ("env", "yaml_text", "named"),
    [
        ({"AGENT_MAX_STEPS": "abc"}, None, "AGENT_MAX_STEPS"),
        ({"AGENT_MAX_SECONDS": "-1"}, None, "AGENT_MAX_SECONDS"),
        ({"FLEET_TOOLS__RETRIES__MAX": "-1"}, None, "tools.retries.max"),
        ({}, "tools: {allowlistt: []}\n", "tools.allowlistt"),
        ({}, "tools: {rate_limits: {http.get: 'fast'}}\n", "rate_limits"),
        ({}, "tools: {tenant_rate_limits: {http.get: '0/s'}}\n", "tenant_rate_limits"),
        ({"FLEET_TOOLS__BREAKER__FAILURE_RATE": "1.5"}, None, "tools.breaker.failure_rate"),
        ({}, "tools: {breaker: {window_s: 0}}\n", "tools.breaker.window_s"),
        ({}, "tools: {retry_budget: {ratio: 11}}\n", "tools.retry_budget.ratio"),
        ({}, "tools: [oops\n", "FLEET_CONFIG"),
        ({"FLEET_API_PORT": "http"}, None, "api_port"),
        ({"FLEET_LOG_LEVEL": "LOUD"}, None, "log_level"),
        ({"FLEET_LOG_FORMAT": "xml"}, None, "log_format"),
        ({"AGENT_MAX_COST_USD": "1e303"}, None, "AGENT_MAX_COST_USD"),
        ({}, "runtime: {env: {AGENT_MAX_COST_USD: 1.0e+303}}\n", "AGENT_MAX_COST_USD"),
        ({}, "tools: {max_concurrency: {http.get: 0}}\n", "max_concurrency.http.get"),
        ({"FLEET_TOOLS__WORKER_MAX_INFLIGHT": "0"}, None, "worker_max_inflight"),
        ({}, "tools: {sync_threads: -1}\n", "sync_threads"),
    ],
)
def test_a_bad_setting_is_an_error_that_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], yaml_text: str | None, named: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if yaml_text is not None:
        monkeypatch.setenv("FLEET_CONFIG", write(tmp_path, yaml_text))
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings()


def test_a_rate_the_gateway_cannot_parse_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="'0/s' is not like '20/s'"):
        Settings(tools={"rate_limits": {"http.get": "0/s"}})
    assert parse_rate(Settings(tools={"rate_limits": {"http.get": "5/m"}}).tools.rate_limits["http.get"])


def test_breaker_and_retry_budget_settings_are_the_runtime_policies() -> None:
    tools = Settings().tools
    assert BreakerPolicy(**tools.breaker.model_dump()) == BreakerPolicy()
    assert RetryPolicy(**tools.retry_budget.model_dump()) == RetryPolicy()
    with pytest.raises(ValueError, match="window_s must be > 0"):
        BreakerPolicy(window_s=0)  # the rule the settings refused above
    with pytest.raises(ValueError, match="min_retries must be >= 0"):
        RetryPolicy(min_retries=-1)


def test_tool_limits_default_to_a_thousand_per_tool_fleet_wide() -> None:
    tools = Settings().tools
    assert (tools.concurrency("http.get"), tools.worker_max_inflight, tools.sync_threads) == (1000, 2000, 32)
    tools = Settings(tools={"max_concurrency": {"http.get": 3}}).tools
    assert (tools.concurrency("http.get"), tools.concurrency("echo")) == (3, 1000)


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_CONFIG", "/nonexistent/fleet.yaml")
    with pytest.raises(ConfigError, match="FLEET_CONFIG"):
        load_settings()


def test_api_keys_parse_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_tenant_keys("a:key-aaaaaaaa, b:key-bbbbbbbb") == {"key-aaaaaaaa": "a", "key-bbbbbbbb": "b"}
    keys_file = tmp_path / "keys"
    keys_file.write_text("# tenants\nacme:key-from-file-1\n")
    monkeypatch.setenv("FLEET_API_KEYS_FILE", str(keys_file))
    assert load_settings().tenant_keys() == {"key-from-file-1": "acme"}


@pytest.mark.parametrize("raw", ["nocolon", "a:", ":key-aaaaaaaa", "a:short", "bad tenant:key-aaaaaaaa"])
def test_bad_api_keys_are_refused_without_echoing_the_key(raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_tenant_keys(raw)
    assert "FLEET_API_KEYS" in str(err.value)
    assert "key-aaaaaaaa" not in str(err.value)


def test_placeholder_secrets_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTRY_DSN", "changeme")
    with pytest.raises(ConfigError, match="SENTRY_DSN"):
        load_settings()


def test_secrets_are_masked_when_dumped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_API_KEYS", "t:very-secret-key-1")
    monkeypatch.setenv("SENTRY_DSN", "https://secretpart@example.invalid/1")
    dumped = str(load_settings().model_dump(mode="json"))
    assert "very-secret-key-1" not in dumped and "secretpart" not in dumped


def test_one_api_key_for_two_tenants_is_refused_by_position_not_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_tenant_keys("a:key-aaaaaaaa, b:key-bbbbbbbb,c:key-aaaaaaaa")
    assert "entry 3 repeats the key of entry 1" in str(err.value)
    assert "key-aaaaaaaa" not in str(err.value)
    keys_file = tmp_path / "keys"
    keys_file.write_text("acme:shared-key-123\nglobex:shared-key-123\n")
    monkeypatch.setenv("FLEET_API_KEYS_FILE", str(keys_file))
    with pytest.raises(ConfigError) as from_file:
        load_settings().tenant_keys()
    assert "FLEET_API_KEYS_FILE: entry 2 repeats the key of entry 1" in str(from_file.value)
    assert "shared-key-123" not in str(from_file.value)


# -- the Redis password -----------------------------------------------------------------------


def test_the_redis_password_comes_from_its_file_into_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("pa ss/w@rd:1\n")
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/2")
    monkeypatch.setenv("FLEET_REDIS_PASSWORD_FILE", str(secret))

    s = load_settings()

    assert s.redis_url == "redis://:pa%20ss%2Fw%40rd%3A1@redis:6379/2"
    assert s.redis_password_source == str(secret)
    assert masked_url(s.redis_url) == "redis://:***@redis:6379/2"


def test_a_password_in_redis_url_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("from-the-file")
    monkeypatch.setenv("REDIS_URL", "rediss://fleet:from-the-url@redis:6380/0")
    monkeypatch.setenv("FLEET_REDIS_PASSWORD_FILE", str(secret))

    s = load_settings()

    assert s.redis_url == "rediss://fleet:from-the-url@redis:6380/0"
    assert s.redis_password_source == "REDIS_URL"


def test_a_user_name_in_redis_url_keeps_the_password_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("s3cret")
    monkeypatch.setenv("REDIS_URL", "redis://fleet@redis:6379/0")
    monkeypatch.setenv("FLEET_REDIS_PASSWORD_FILE", str(secret))

    assert load_settings().redis_url == "redis://fleet:s3cret@redis:6379/0"


def test_no_file_and_an_empty_file_mean_no_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().redis_password_source is None  # /run/secrets/redis_password is absent here
    empty = tmp_path / "redis_password"
    empty.write_text("\n")
    monkeypatch.setenv("FLEET_REDIS_PASSWORD_FILE", str(empty))

    s = load_settings()

    assert (s.redis_url, s.redis_password_source) == ("redis://127.0.0.1:6379/0", None)


def test_an_unreadable_password_file_is_a_config_error_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_REDIS_PASSWORD_FILE", str(tmp_path / "missing"))

    with pytest.raises(ConfigError, match=r"^FLEET_REDIS_PASSWORD_FILE: cannot read .*missing"):
        load_settings()
