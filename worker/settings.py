"""The fleet's configuration: one Settings class for the API, the workers and the CLI.

Precedence: environment > YAML file named by ``FLEET_CONFIG`` > the built-in safe defaults.
Nested YAML keys are set from the environment as ``FLEET_<SECTION>__<KEY>``. Secrets come from
the environment or from files (``FLEET_API_KEYS_FILE``, ``FLEET_REDIS_PASSWORD_FILE``,
``/run/secrets/<name>``), never from the YAML file's defaults, and are masked wherever settings
are shown.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from worker.gateway.breaker import BreakerPolicy
from worker.gateway.ratelimit import parse_rate
from worker.gateway.retrybudget import RetryPolicy

SECRETS_DIR = Path("/run/secrets")
PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "secret", "password", "xxx", "todo"})
# The largest max_cost_usd a run may have, like an agent's daily spend (worker/control/policy.py): larger is a
# typo, and costs are counted in micro-dollar integers in Redis.
MAX_RUN_COST_USD = 1_000_000


# Set by `fleet up` for the processes it starts: a one-machine dev stack (see fleetcli/up.py).
DEV_STACK_ENV = "FLEET_DEV_STACK"


class ConfigError(Exception):
    """A setting that does not parse; the message names the setting."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuntimeEnv(_Section):
    AGENT_MAX_STEPS: int = Field(25, gt=0)
    AGENT_MAX_TOOL_CALLS: int = Field(12, ge=0)
    AGENT_MAX_SECONDS: float = Field(60, gt=0)
    AGENT_MAX_TOKENS: int = Field(200_000, ge=0)
    AGENT_MAX_COST_USD: float = Field(1.0, ge=0, le=MAX_RUN_COST_USD)


class RuntimeSection(_Section):
    env: RuntimeEnv = RuntimeEnv()
    # Prefork workers import what a run needs and freeze the collector's objects in the main
    # process before the pool forks, so the children share those pages (worker/preload.py).
    # Off only to measure the difference (bench/bench_memory.py).
    prefork_preload: bool = True
    # A run that waits (a tool or model reply, a backoff, a rate-limit slot, a Sleep) longer than
    # park_after_ms parks: its execution ends, its pool child is free, and a timer or the reply
    # resumes it on any agent worker (worker/run/timers.py). False: a waiting run holds its child.
    park_waits: bool = True
    park_after_ms: int = Field(50, ge=0, le=60_000)
    # How often each agent worker's scheduler looks for due timers and for kill switches that
    # stop parked runs (a reply rings it at once).
    timer_tick_ms: int = Field(50, ge=5, le=5_000)


class RetriesSection(_Section):
    max: int = Field(2, ge=0, le=10)
    backoff_ms: list[int] = Field(default_factory=lambda: [200, 800])

    @field_validator("backoff_ms")
    @classmethod
    def _non_negative(cls, value: list[int]) -> list[int]:
        if not value or any(v < 0 for v in value):
            raise ValueError("backoff_ms needs at least one value, each >= 0")
        return value


class HttpSection(_Section):
    allow_hosts: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(1_048_576, gt=0)


class SearchSection(_Section):
    url: str | None = None


class BreakerSection(_Section):
    """The settable fields of a tool's BreakerPolicy, each valid when the policy says so."""

    failure_threshold: int = BreakerPolicy.failure_threshold
    failure_rate: float = BreakerPolicy.failure_rate
    min_calls: int = BreakerPolicy.min_calls
    window_s: float = BreakerPolicy.window_s
    cooldown_s: float = BreakerPolicy.cooldown_s

    @field_validator("*")
    @classmethod
    def _valid_for_the_breaker(cls, value: float, info: ValidationInfo) -> float:
        BreakerPolicy.check(str(info.field_name), value)
        return value


class RetryBudgetSection(_Section):
    """The fields of a tool's RetryPolicy, each valid when the policy says so."""

    ratio: float = RetryPolicy.ratio
    min_retries: int = RetryPolicy.min_retries
    window_s: float = RetryPolicy.window_s

    @field_validator("*")
    @classmethod
    def _valid_for_the_retry_budget(cls, value: float, info: ValidationInfo) -> float:
        RetryPolicy.check(str(info.field_name), value)
        return value


DEFAULT_TOOL_CONCURRENCY = 1000


class ApprovalSection(_Section):
    # Tools whose every call waits for a human's decision (POST /v1/runs/{id}/approvals/{call_id});
    # an agent's policy `approve_tools` adds to it. The run parks meanwhile (worker/control/approvals.py).
    required: list[str] = Field(default_factory=list)
    # An approval not decided within this many seconds expires: the call is denied.
    timeout_s: int = Field(86400, gt=0, le=30 * 86400)


class ToolsSection(_Section):
    allowlist: list[str] = Field(default_factory=lambda: ["search.read", "http.get"])
    timeouts_ms: dict[str, int] = Field(default_factory=lambda: {"default": 8000})
    retries: RetriesSection = RetriesSection()
    rate_limits: dict[str, str] = Field(default_factory=dict)
    tenant_rate_limits: dict[str, str] = Field(default_factory=dict)
    # Calls of one tool in flight at once, fleet-wide (a sorted set in Redis,
    # worker/gateway/toolslots.py), so a hanging or slow dependency cannot take every tool worker's
    # capacity; a call over it is rate_limited.
    max_concurrency: dict[str, int] = Field(default_factory=lambda: {"default": DEFAULT_TOOL_CONCURRENCY})
    # Calls one tool-worker process holds at once (worker/gateway/pool.py); past it, the Celery task waits
    # for a free slot and its message stays unacked: backpressure (held in memory; a run's timer
    # retries a call that a dead tool worker held).
    worker_max_inflight: int = Field(2000, gt=0)
    # Threads that run plain (non-async) tools in one tool-worker process.
    sync_threads: int = Field(32, gt=0)
    costs_usd: dict[str, float] = Field(default_factory=dict)
    # A result over this is cut (marked truncated) on the tool worker, before Redis, the run and the logs.
    max_result_bytes: int = Field(1_048_576 + 65_536, ge=1024, le=64 * 1_048_576)
    breaker: BreakerSection = BreakerSection()
    retry_budget: RetryBudgetSection = RetryBudgetSection()
    http: HttpSection = HttpSection()
    search: SearchSection = SearchSection()
    approval: ApprovalSection = ApprovalSection()

    @field_validator("timeouts_ms")
    @classmethod
    def _positive_timeouts(cls, value: dict[str, int]) -> dict[str, int]:
        for name, ms in value.items():
            if ms <= 0:
                raise ValueError(f"timeouts_ms.{name} must be > 0")
        return {"default": 8000, **value}

    @field_validator("max_concurrency")
    @classmethod
    def _positive_concurrency(cls, value: dict[str, int]) -> dict[str, int]:
        for name, n in value.items():
            if n <= 0:
                raise ValueError(f"max_concurrency.{name} must be > 0")
        return {"default": DEFAULT_TOOL_CONCURRENCY, **value}

    @field_validator("rate_limits", "tenant_rate_limits")
    @classmethod
    def _rates_parse(cls, value: dict[str, str]) -> dict[str, str]:
        for name, rate in value.items():
            try:
                parse_rate(rate)  # the rule the gateway applies to the same text
            except ValueError:
                message = f"rate_limits.{name}: {rate!r} is not like '20/s', '600/m' or '5000/h'"
                raise ValueError(message) from None
        return value

    def timeout_s(self, tool: str, declared_ms: int | None = None) -> float:
        """The timeout of one attempt of `tool` in seconds: config, else the tool's own, else default."""
        ms = self.timeouts_ms.get(tool, declared_ms or self.timeouts_ms["default"])
        return ms / 1000.0

    def concurrency(self, tool: str) -> int:
        return self.max_concurrency.get(tool, self.max_concurrency["default"])


class ObservabilitySection(_Section):
    # Celery task events for runs (Flower's task list shows runs). Off: they are three Redis
    # PUBLISHes per run from the agent worker's main process, about 1.5 ms of CPU, a third of a
    # 1-step run's; the API, /metrics and the logs show every run, Flower still its workers.
    run_task_events: bool = False
    sampled_tool_results: bool = True
    result_sample_rate: float = Field(0.01, ge=0, le=1)
    result_max_bytes: int = Field(2048, ge=64, le=1_048_576)  # of a sampled tool result in a log line
    log_max_line_bytes: int = Field(8192, ge=1024, le=1_048_576)
    # Turning redaction off takes this explicit setting, and every process warns at start.
    redaction: bool = True
    traces_sample_rate: float = Field(0.0, ge=0, le=1)  # Sentry performance traces
    # Celery task events from tool workers (Flower's view of each tool call). Off: a tool call is
    # short and frequent, its events are two Redis PUBLISHes before the tool runs, and the step
    # log, the logs and /metrics already show every call. Runs: `run_task_events` (above).
    tool_task_events: bool = False
    # OpenTelemetry traces (worker/obs/tracing.py; on with OTEL_EXPORTER_OTLP_ENDPOINT): export
    # prompts, model answers, tool arguments and results as span attributes, redacted and capped
    # at result_max_bytes each. Off: spans carry names, ids, timings, outcomes and token counts.
    otel_content: bool = False


class MetricsSection(_Section):
    """What the fleet counts for /metrics beyond its counters and gauges (worker/obs/histograms.py)."""

    # Latency histograms (run, queue wait, step, tool and model calls), counted in Redis inside
    # the scripts that run at those moments. Off only to measure their cost (bench/bench_core.py).
    histograms: bool = True
    # fleet_cost_usd_total gets a `tenant` label: one series per agent and tenant (cardinality).
    cost_by_tenant: bool = False


class RolloutSection(_Section):
    canary_percent: float = Field(10, ge=0, le=100)
    rollback_on_error_rate: float = Field(0.05, ge=0, le=1)
    min_runs: int = Field(20, gt=0)  # ended canary runs before the error rate can roll it back
    window_s: float = Field(600, ge=60)  # the sliding window of ended runs, per agent and version


class WebhooksSection(_Section):
    """Signed webhooks of runs (worker/webhooks/): where they may go and how they are retried."""

    # Hosts every tenant's webhooks may target; a host listed here or for the tenant is also
    # exempt from the private-address block, as `tools.http.allow_hosts` is for http.get.
    allow_hosts: list[str] = Field(default_factory=list)
    tenant_allow_hosts: dict[str, list[str]] = Field(default_factory=dict)
    # Seconds before each retry of a failed delivery, the last repeating; jitter is added.
    retry_backoff_s: list[float] = Field(default_factory=lambda: [1.0, 5.0, 30.0, 300.0, 1800.0])
    max_age_s: int = Field(86400, gt=0)  # a delivery not made by then is dropped (`expired`)
    timeout_s: float = Field(10.0, gt=0, le=300)  # one attempt, DNS and body included

    @field_validator("retry_backoff_s")
    @classmethod
    def _positive_backoffs(cls, value: list[float]) -> list[float]:
        if not value or any(not v > 0 for v in value):
            raise ValueError("retry_backoff_s needs at least one value, each > 0")
        return value


class RedisSection(_Section):
    """What a write to Redis waits for before the fleet relies on it (README "Redis Sentinel and
    durability")."""

    # Replicas that must acknowledge a run's creation (before the 202) and a write tool's claim
    # and result (before the tool runs, before the run sees the result): Redis WAIT. None: 1
    # when REDIS_URL is a Sentinel URL, else 0 (a single Redis has no replica to wait for).
    wait_replicas: int | None = Field(None, ge=0, le=16)
    # How long one WAIT may take. A run's creation that no replica acknowledged in time is
    # answered 503 with Retry-After (its Idempotency-Key makes the retry safe); a write tool's
    # claim that none acknowledged is not run (a retryable `rate_limited` result).
    wait_timeout_ms: int = Field(500, gt=0, le=60_000)


class ArchiveSection(_Section):
    """How ended runs move from Redis to the run history's database (worker/history/)."""

    batch: int = Field(200, gt=0, le=5_000)  # runs claimed, read and written per transaction
    # A batch the database refused is retried after retry_min_s, doubling up to retry_max_s.
    retry_min_s: float = Field(1.0, gt=0, le=3600)
    retry_max_s: float = Field(60.0, gt=0, le=3600)
    purge_batch: int = Field(1_000, gt=0, le=100_000)  # runs deleted per transaction by the purge
    purge_every_s: int = Field(86_400, ge=60)  # how often one agent worker purges expired history

    @model_validator(mode="after")
    def _ordered(self) -> ArchiveSection:
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must be >= retry_min_s")
        return self


class Settings(BaseSettings):
    """Everything a fleet process reads at start. Invalid values stop the process."""

    model_config = SettingsConfigDict(
        env_prefix="FLEET_",
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    runtime: RuntimeSection = RuntimeSection()
    tools: ToolsSection = ToolsSection()
    observability: ObservabilitySection = ObservabilitySection()
    metrics: MetricsSection = MetricsSection()
    rollout: RolloutSection = RolloutSection()
    webhooks: WebhooksSection = WebhooksSection()
    archive: ArchiveSection = ArchiveSection()
    redis: RedisSection = RedisSection()
    # Per-agent settings, keyed by agent name (the `llm` agent's model and prices live here).
    agents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Modules imported by every process at start; they register user agents and tools.
    plugins: list[str] = Field(default_factory=list)

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL"))
    # The Redis password when REDIS_URL has none: this file, else /run/secrets/redis_password.
    redis_password_file: Path | None = None
    # The Sentinels' own password (their `requirepass`), for a redis+sentinel:// REDIS_URL: this,
    # else the file FLEET_REDIS_SENTINEL_PASSWORD_FILE names, else /run/secrets/redis_sentinel_password;
    # none: the Sentinels take no password. The data nodes' password is the URL's (or the file above).
    redis_sentinel_password: SecretStr | None = None
    redis_sentinel_password_file: Path | None = None
    key_prefix: str = Field("fleet", pattern=r"^[A-Za-z0-9_.-]+$")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Console lines on a terminal and JSON lines otherwise (auto), or always one of them.
    log_format: Literal["auto", "json", "console"] = "auto"

    # The fleet's budget caps; the env names of the seed config override `runtime.env`.
    agent_max_steps: int | None = Field(None, gt=0, validation_alias=AliasChoices("AGENT_MAX_STEPS"))
    agent_max_tool_calls: int | None = Field(
        None, ge=0, validation_alias=AliasChoices("AGENT_MAX_TOOL_CALLS")
    )
    agent_max_seconds: float | None = Field(None, gt=0, validation_alias=AliasChoices("AGENT_MAX_SECONDS"))
    agent_max_tokens: int | None = Field(None, ge=0, validation_alias=AliasChoices("AGENT_MAX_TOKENS"))
    agent_max_cost_usd: float | None = Field(
        None, ge=0, le=MAX_RUN_COST_USD, validation_alias=AliasChoices("AGENT_MAX_COST_USD")
    )

    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, gt=0, lt=65536)
    api_keys: SecretStr | None = None
    api_keys_file: Path | None = None
    admin_keys: SecretStr | None = (
        None  # comma-separated keys of /v1/admin (or /run/secrets/fleet_admin_keys)
    )
    max_body_bytes: int = Field(262_144, gt=0)
    max_queued: int = Field(10_000, gt=0)
    # One tenant's share of the queue: runs in status `queued` (0: no per-tenant limit).
    max_queued_per_tenant: int = Field(1_000, ge=0)
    # Open `?wait` requests (and event streams) per tenant, counted fleet-wide in Redis (0: no limit).
    max_waiters_per_tenant: int = Field(100, ge=0)
    # Bearer token that /metrics asks for when set (tenant names appear in its labels).
    metrics_token: SecretStr | None = None
    run_ttl_s: int = Field(7 * 86400, gt=0)
    # The run history (worker/history/): a SQLAlchemy URL, PostgreSQL (postgresql+psycopg://) in
    # production, or the file, or /run/secrets/fleet_database_url; none: SQLite in data_dir.
    database_url: SecretStr | None = None
    database_url_file: Path | None = None
    data_dir: Path = Field(default_factory=lambda: default_data_dir())
    hot_ttl_s: int = Field(3600, gt=0)  # what an archived run keeps in Redis: its keys' new TTL
    history_retention_days: int = Field(90, gt=0, le=36_500)  # archived runs older than this are purged
    max_attempts: int = Field(3, gt=0, le=20)

    # `tenant:secret,...`: the key each tenant's webhooks are signed with (or the file, or
    # /run/secrets/fleet_webhook_secrets).
    webhook_secrets: SecretStr | None = None
    webhook_secrets_file: Path | None = None

    api_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None

    sentry_dsn: SecretStr | None = Field(None, validation_alias=AliasChoices("SENTRY_DSN"))
    flower_user: str = "fleet"
    flower_password: SecretStr | None = None
    flower_port: int = Field(5555, gt=0, lt=65536)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = os.environ.get("FLEET_CONFIG")
        if config_path:
            path = Path(config_path)
            if not path.is_file():
                raise ConfigError(f"FLEET_CONFIG: no such file: {config_path}")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @field_validator(
        "api_keys",
        "api_key",
        "sentry_dsn",
        "flower_password",
        "admin_keys",
        "metrics_token",
        "webhook_secrets",
        "database_url",
        "redis_sentinel_password",
    )
    @classmethod
    def _no_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None  # an empty variable (compose passes unset ones as "") is no secret
        if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("is a placeholder, not a secret")
        return value

    # Where the password in `redis_url` came from, for messages: "REDIS_URL", a file, or None.
    _redis_password_source: str | None = PrivateAttr(None)
    _sentinel: SentinelURL | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _secret_files(self) -> Settings:
        """SENTRY_DSN may also come from /run/secrets/sentry_dsn (a mounted secret)."""
        if self.sentry_dsn is None:
            from_file = self.secret("SENTRY_DSN")
            if from_file:
                self.sentry_dsn = SecretStr(from_file)
        self._add_redis_password()
        self._sentinel = parse_sentinel_url(self.redis_url) if is_sentinel_url(self.redis_url) else None
        return self

    def _add_redis_password(self) -> None:
        """Put the password from FLEET_REDIS_PASSWORD_FILE or /run/secrets/redis_password into
        `redis_url`, unless the URL has one, so every client (redis-py, Celery, Flower) uses it."""
        if urlsplit(self.redis_url).password is not None:
            self._redis_password_source = "REDIS_URL"
            return
        path = self.redis_password_file or SECRETS_DIR / "redis_password"
        if self.redis_password_file is None and not path.is_file():
            return
        try:
            password = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"FLEET_REDIS_PASSWORD_FILE: cannot read {path}: {exc.strerror}") from None
        if password:  # an empty file is no password, as an empty variable is no secret
            self.redis_url = url_with_password(self.redis_url, password)
            self._redis_password_source = str(path)

    @property
    def redis_password_source(self) -> str | None:
        """Where the Redis password comes from (REDIS_URL or a file's path); None: no password."""
        return self._redis_password_source

    @property
    def sentinel(self) -> SentinelURL | None:
        """REDIS_URL's parts when it is a redis+sentinel:// URL, else None (a plain Redis)."""
        return self._sentinel

    def sentinel_password(self) -> str | None:
        """The Sentinels' password: FLEET_REDIS_SENTINEL_PASSWORD, FLEET_REDIS_SENTINEL_PASSWORD_FILE
        or /run/secrets/redis_sentinel_password; None: none (or REDIS_URL is no Sentinel URL)."""
        if self._sentinel is None:
            return None
        raw, _ = _env_or_file(
            self.redis_sentinel_password, self.redis_sentinel_password_file, "FLEET_REDIS_SENTINEL_PASSWORD"
        )
        if not raw.strip() and self.redis_sentinel_password_file is None:
            # the default secret file is /run/secrets/redis_sentinel_password (no FLEET_ prefix)
            default = SECRETS_DIR / "redis_sentinel_password"
            raw = default.read_text() if default.is_file() else ""
        return raw.strip() or None

    @property
    def wait_replicas(self) -> int:
        """Replicas a durable write waits for (redis.wait_replicas; default 1 on Sentinel, else 0)."""
        if self.redis.wait_replicas is not None:
            return self.redis.wait_replicas
        return 1 if self._sentinel is not None else 0

    # -- derived values -------------------------------------------------------------------------

    @property
    def max_steps(self) -> int:
        return self.agent_max_steps or self.runtime.env.AGENT_MAX_STEPS

    @property
    def max_tool_calls(self) -> int:
        if self.agent_max_tool_calls is not None:
            return self.agent_max_tool_calls
        return self.runtime.env.AGENT_MAX_TOOL_CALLS

    @property
    def max_seconds(self) -> float:
        return self.agent_max_seconds or self.runtime.env.AGENT_MAX_SECONDS

    @property
    def max_tokens(self) -> int:
        if self.agent_max_tokens is not None:
            return self.agent_max_tokens
        return self.runtime.env.AGENT_MAX_TOKENS

    @property
    def max_cost_usd(self) -> float:
        if self.agent_max_cost_usd is not None:
            return self.agent_max_cost_usd
        return self.runtime.env.AGENT_MAX_COST_USD

    def tenant_keys(self) -> dict[str, str]:
        """API key -> tenant, from FLEET_API_KEYS, FLEET_API_KEYS_FILE or /run/secrets/fleet_api_keys."""
        raw, source = _env_or_file(self.api_keys, self.api_keys_file, "FLEET_API_KEYS")
        return parse_tenant_keys(raw, source)

    def tenant_webhook_secrets(self) -> dict[str, str]:
        """Tenant -> webhook signing secret, from FLEET_WEBHOOK_SECRETS, FLEET_WEBHOOK_SECRETS_FILE or
        /run/secrets/fleet_webhook_secrets (`tenant:secret`, commas or newlines)."""
        raw, source = _env_or_file(self.webhook_secrets, self.webhook_secrets_file, "FLEET_WEBHOOK_SECRETS")
        return parse_webhook_secrets(raw, source)

    def history_database_url(self) -> str:
        """The run history's SQLAlchemy URL: FLEET_DATABASE_URL, FLEET_DATABASE_URL_FILE or
        /run/secrets/fleet_database_url, else SQLite at `<data_dir>/history.db`. Secret: show it
        only through worker.history.db.masked."""
        url, _ = _env_or_file(self.database_url, self.database_url_file, "FLEET_DATABASE_URL")
        return url.strip() or f"sqlite:///{self.data_dir / 'history.db'}"

    def admin_key_set(self) -> frozenset[str]:
        """Keys that may call /v1/admin: FLEET_ADMIN_KEYS or /run/secrets/fleet_admin_keys."""
        raw = self.admin_keys.get_secret_value() if self.admin_keys else self.secret("FLEET_ADMIN_KEYS") or ""
        keys = frozenset(k.strip() for k in re.split(r"[,\n]", raw) if k.strip())
        for key in keys:
            if len(key) < 16 or key.lower() in PLACEHOLDER_SECRETS:
                raise ConfigError("FLEET_ADMIN_KEYS: every admin key needs at least 16 characters")
        return keys

    def metrics_bearer(self) -> str | None:
        """The token /metrics asks for: FLEET_METRICS_TOKEN or /run/secrets/fleet_metrics_token."""
        if self.metrics_token is not None:
            return self.metrics_token.get_secret_value().strip()
        return self.secret("FLEET_METRICS_TOKEN")

    def secret(self, name: str) -> str | None:
        """A secret that lives in the environment or in /run/secrets/<lowercase name>."""
        value = os.environ.get(name)
        if value:
            return value
        path = SECRETS_DIR / name.lower()
        if path.is_file():
            return path.read_text().strip() or None
        return None


def _env_or_file(value: SecretStr | None, path: Path | None, name: str) -> tuple[str, str]:
    """A secret's text and where it came from: the setting `name` (the environment or the config),
    else the file `<name>_FILE` names, else /run/secrets/<lowercase name> when it exists ('' when
    none). A named file that cannot be read is a ConfigError naming it, never its content."""
    if value is not None and value.get_secret_value():
        return value.get_secret_value(), name
    source = f"{name}_FILE"
    file = path or SECRETS_DIR / name.lower()
    if path is None and not file.is_file():
        return "", source
    try:
        return file.read_text(), source
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read {file}: {exc.strerror}") from None


def default_data_dir() -> Path:
    """Where a process keeps files of its own (the SQLite run history): $XDG_DATA_HOME/agentfleet,
    else .local/share/agentfleet in the user's home folder."""
    base = os.environ.get("XDG_DATA_HOME")
    if not base:
        try:
            base = str(Path.home() / ".local" / "share")
        except (KeyError, RuntimeError):  # a user without a home (an arbitrary container uid)
            base = str(Path(tempfile.gettempdir()))
    return Path(base) / "agentfleet"


def parse_tenant_keys(raw: str, source: str = "FLEET_API_KEYS") -> dict[str, str]:
    """Parse ``tenant:key,tenant:key`` (commas or newlines) into key -> tenant."""
    keys: dict[str, str] = {}
    positions: dict[str, int] = {}
    for position, item in enumerate(re.split(r"[,\n]", raw), start=1):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        tenant, sep, key = item.partition(":")
        tenant, key = tenant.strip(), key.strip()
        if not sep or not tenant or not key:
            raise ConfigError(f"{source}: entry {position} is not 'tenant:key'")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", tenant):
            raise ConfigError(f"{source}: entry {position}: tenant may hold only letters, digits, '_.-'")
        if len(key) < 8 or key.lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(f"{source}: entry {position}: key is too short or a placeholder")
        if key in keys:
            # One key for two entries would authenticate as whichever came last: refuse it, and
            # name positions only, never the key.
            raise ConfigError(
                f"{source}: entry {position} repeats the key of entry {positions[key]}; "
                "each API key belongs to one tenant"
            )
        keys[key] = tenant
        positions[key] = position
    return keys


WEBHOOK_SECRET_MIN_CHARS = 16


def parse_webhook_secrets(raw: str, source: str = "FLEET_WEBHOOK_SECRETS") -> dict[str, str]:
    """Parse ``tenant:secret,tenant:secret`` (commas or newlines) into tenant -> secret.

    A message names an entry's position, never its secret."""
    secrets: dict[str, str] = {}
    for position, item in enumerate(re.split(r"[,\n]", raw), start=1):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        tenant, sep, secret = item.partition(":")
        tenant, secret = tenant.strip(), secret.strip()
        if not sep or not tenant or not secret:
            raise ConfigError(f"{source}: entry {position} is not 'tenant:secret'")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", tenant):
            raise ConfigError(f"{source}: entry {position}: tenant may hold only letters, digits, '_.-'")
        if len(secret) < WEBHOOK_SECRET_MIN_CHARS or secret.lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(
                f"{source}: entry {position}: a secret needs at least {WEBHOOK_SECRET_MIN_CHARS} characters"
            )
        if tenant in secrets:
            raise ConfigError(
                f"{source}: entry {position} repeats tenant {tenant}; give each tenant one secret"
            )
        secrets[tenant] = secret
    return secrets


def url_with_password(url: str, password: str) -> str:
    """`url` with `password` (percent-encoded) in its userinfo, keeping any user name."""
    parts = urlsplit(url)
    user = parts.username or ""  # as written in the URL, already percent-encoded
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_DEFAULT_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    """The parts of `redis+sentinel://[[user]:password@]host:port,host:port/<master>[/<db>]`.

    `password` (and `username`) are the data nodes' (the primary's and the replicas'); the
    Sentinels' own password is a setting of its own (Settings.sentinel_password)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() == SENTINEL_SCHEME


def parse_sentinel_url(url: str) -> SentinelURL:
    """The parts of a Sentinel REDIS_URL, or a ConfigError that says what is wrong with it (and
    never shows the password)."""
    shown = masked_url(url)
    problem = f"REDIS_URL: {shown}: "
    form = f" (the form is {SENTINEL_SCHEME}://[:password@]host:port,host:port/<master>/<db>)"
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    path, _, _query = path.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            raise ConfigError(problem + "empty Sentinel host in the host list" + form)
        host, colon, port_text = item.rpartition(":")  # an IPv6 address goes in brackets
        if not colon or (host.startswith("[") and not host.endswith("]")):
            host, port_text = item, str(SENTINEL_DEFAULT_PORT)
        host = host.removeprefix("[").removesuffix("]")
        if not host:
            raise ConfigError(problem + f"Sentinel {item!r} has no host" + form)
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(problem + f"Sentinel {item!r} has a bad port (1-65535)" + form)
        sentinels.append((host, int(port_text)))
    parts = [unquote(p) for p in path.split("/")] if path else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash
    if not parts or not parts[0]:
        raise ConfigError(problem + "no master name (the Sentinels' name for the primary)" + form)
    if len(parts) > 2:
        raise ConfigError(problem + "too many path parts after the master name" + form)
    db_text = parts[1] if len(parts) == 2 else "0"
    if not db_text.isdigit():
        raise ConfigError(problem + f"database {db_text!r} is not a number" + form)
    return SentinelURL(tuple(sentinels), parts[0], int(db_text), username, password)


def masked_url(url: str) -> str:
    """A URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def load_settings() -> Settings:
    """Build Settings, turning any validation error into a ConfigError that names the setting."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            problems.append(f"{setting_name(err['loc'])}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    except ConfigError:
        raise
    except Exception as exc:  # YAML syntax errors and the like: name the file, not the content.
        raise ConfigError(f"FLEET_CONFIG: cannot load {os.environ.get('FLEET_CONFIG')}: {exc}") from None


def setting_name(loc: tuple[int | str, ...]) -> str:
    """`tools.retries.max (FLEET_TOOLS__RETRIES__MAX)` for a nested key; env aliases as they are."""
    parts = [str(part) for part in loc]
    if not parts:
        return "settings"
    if parts[0].isupper():  # an alias such as AGENT_MAX_STEPS or SENTRY_DSN
        return ".".join(parts)
    env = "FLEET_" + "__".join(part.upper() for part in parts)
    return f"{'.'.join(parts)} ({env})"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, loaded once."""
    return load_settings()
