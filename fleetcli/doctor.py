"""`fleet doctor`: what a process of one kind needs, checked from where it will run, before it starts.

One check is one line: `ok`, `warn` (works, but not as the fleet's design assumes) or `FAIL` (the
process would not work), with the reason. The kinds pick the checks:

| check | api | worker | tool-worker |
| --- | --- | --- | --- |
| config: the settings load and validate, every allowlisted tool is registered | x | x | x |
| redis: answers with the configured URL and password; AOF and maxmemory-policy; clock skew | x | x | x |
| database: the run history's database answers | x | x | x |
| secrets.api_keys | x | | |
| secrets.webhooks (when webhooks are configured) | x | | x |
| secrets.model_key (when the `llm` agent is configured) | | | x |
| upstream.*: DNS, TCP connect, TLS handshake, the SSRF guard, the model key | | | x |

`all` is every column. No secret value is ever part of a result: a message names a secret's
setting or file, never its content, and any URL is shown with its password masked.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx
import redis

from fleetcli.validate import validate_settings
from worker.settings import ConfigError, Settings, load_settings, masked_url

Status = Literal["ok", "warn", "fail"]
KINDS = ("api", "worker", "tool-worker", "all")
# What ops/redis.conf sets (tests/fleetcli/test_doctor.py checks the two agree): without AOF a restart loses
# queued runs; with eviction Redis drops the fleet's keys (runs, budgets, kill switches) when full.
REDIS_EXPECTED = {"appendonly": "yes", "maxmemory-policy": "noeviction"}
REDIS_WHY = {
    "appendonly": "a Redis restart loses queued runs",
    "maxmemory-policy": "a full Redis evicts runs, budgets and kill switches",
}
CLOCK_SKEW_WARN_S = 2.0  # run deadlines, leases and timers assume loosely synced clocks
STAGE_TIMEOUT_S = 5.0  # each of DNS, connect, TLS handshake
HTTP_TIMEOUT_S = 10.0  # the model service's GET /models
HOST_RE = re.compile(r"[\w.:-]+")  # a host name or address: no scheme, path or wildcard


@dataclass(frozen=True)
class Check:
    """One check's result: `name` (e.g. `redis`, `upstream.llm`), `status` and a reason."""

    name: str
    status: Status
    detail: str


class StageFailed(Exception):
    """An upstream failed at one stage (`dns`, `connect`, `tls`, `guard`, `http`)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


# -- running --------------------------------------------------------------------------------------


def run(kind: str) -> list[Check]:
    """Every check `kind` needs, in order. A configuration that does not load ends the list: the
    other checks need it."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    try:
        settings = load_settings()
        validate_settings(settings)
    except ConfigError as exc:
        return [Check("config", "fail", str(exc))]
    checks = [check_config(settings)]
    checks += check_redis(settings)
    checks.append(check_database(settings))
    if kind in ("api", "all"):
        checks.append(check_api_keys(settings))
    if kind in ("api", "tool-worker", "all"):
        checks += check_webhook_secrets(settings)
    if kind in ("tool-worker", "all"):
        checks += check_model_key(settings)
        checks += check_upstreams(settings)
    return checks


def render_text(kind: str, checks: list[Check]) -> str:
    """One line per check (`ok`, `warn`, `FAIL`), then a summary line."""
    label = {"ok": "ok", "warn": "warn", "fail": "FAIL"}
    width = max(len(c.name) for c in checks)
    lines = [f"{label[c.status]:<4}  {c.name:<{width}}  {c.detail}" for c in checks]
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")}
    lines.append(
        f"fleet doctor --kind {kind}: {counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failed"
    )
    return "\n".join(lines)


def render_json(kind: str, checks: list[Check]) -> str:
    return json.dumps({"kind": kind, "ok": passed(checks), "checks": [asdict(c) for c in checks]}, indent=2)


def passed(checks: list[Check]) -> bool:
    """True when no check failed (warnings pass)."""
    return all(c.status != "fail" for c in checks)


def main(kind: str, as_json: bool) -> int:
    """`fleet doctor`: print the checks; 0 when every needed check passes, else 1."""
    checks = run(kind)
    print(render_json(kind, checks) if as_json else render_text(kind, checks))
    return 0 if passed(checks) else 1


# -- configuration --------------------------------------------------------------------------------


def check_config(settings: Settings) -> Check:
    """The plugins import and every tool on the allowlist is registered (built-in or plugin)."""
    from worker import agents, tools

    try:
        agents.load_plugins(settings.plugins)
    except Exception as exc:  # a plugin's import error of any kind: name the module list, not a trace
        return Check("config", "fail", f"plugins: cannot import: {type(exc).__name__}: {exc}")
    known = set(tools.tool_names())
    missing = [name for name in settings.tools.allowlist if name not in known]
    if missing:
        return Check(
            "config",
            "fail",
            f"tools.allowlist names tools that are not registered: {', '.join(missing)} "
            "(a plugin module in `plugins` registers its own tools)",
        )
    return Check(
        "config", "ok", f"settings valid; {len(settings.tools.allowlist)} allowlisted tool(s), all registered"
    )


# -- Redis ----------------------------------------------------------------------------------------


def check_redis(settings: Settings) -> list[Check]:
    """Redis answers with the configured URL and password (through the fleet's own client
    factory, so every URL form the fleet supports), then its persistence settings and the clock."""
    from worker.redis_conn import password_problem, redis_for, sentinel_password_problem

    where = masked_url(settings.redis_url)
    client = redis_for(settings)  # with the Sentinels' password on a Sentinel URL
    try:
        started = time.monotonic()
        client.ping()
        rtt_ms = (time.monotonic() - started) * 1000
    except redis.RedisError as exc:
        refused = sentinel_password_problem(settings)  # redis-py reports it as no primary found
        if refused:
            return [Check("redis", "fail", refused)]
        if _auth_problem(exc):
            problem = password_problem(settings) or _scrub(f"Redis at {where}: {exc}", settings.redis_url)
            return [Check("redis", "fail", problem)]
        reason = _scrub(f"{type(exc).__name__}: {exc}", settings.redis_url)
        return [Check("redis", "fail", f"Redis at {where} does not answer: {reason}")]
    try:
        checks = [Check("redis", "ok", f"Redis at {where} answers (PING {rtt_ms:.1f} ms)")]
        checks += check_redis_config(client)
        checks.append(check_capacity(settings))
        checks.append(check_clock(client))
        return checks
    finally:
        client.close()


def _auth_problem(exc: redis.RedisError) -> bool:
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthenticationWrongNumberOfArgsError):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS"))


def _scrub(text: str, url: str) -> str:
    password = urlsplit(url).password
    return text.replace(unquote(password), "***") if password else text


def check_redis_config(client: redis.Redis) -> list[Check]:
    """`appendonly` and `maxmemory-policy` as ops/redis.conf sets them; a warning names the
    setting that differs, or says that Redis does not show them (a managed Redis may forbid CONFIG)."""
    checks = []
    for setting, expected in REDIS_EXPECTED.items():
        name = f"redis.{setting}"
        try:
            value = str(client.config_get(setting).get(setting, ""))
        except redis.RedisError as exc:
            checks.append(
                Check(name, "warn", f"cannot read it (CONFIG GET: {exc}); ops/redis.conf sets {expected}")
            )
            continue
        if value == expected:
            checks.append(Check(name, "ok", value))
        else:
            checks.append(
                Check(
                    name,
                    "warn",
                    f"{setting} is {value!r}, ops/redis.conf sets {expected}: {REDIS_WHY[setting]}",
                )
            )
    return checks


def check_capacity(settings: Settings) -> Check:
    """Whether Redis' maxmemory holds FLEET_MAX_QUEUED queued runs, the live runs and the hot set
    (worker/capacity.py, the warning /readyz shows); a warning, never a failure."""
    import asyncio

    from worker.capacity import MIB, ArchiveRate, read_capacity
    from worker.keys import Keys
    from worker.redis_conn import async_redis_for

    async def read() -> Any:
        client = async_redis_for(settings, timeout_s=STAGE_TIMEOUT_S)
        try:
            return await read_capacity(client, Keys(settings.key_prefix), settings, ArchiveRate())
        finally:
            await client.aclose()

    try:
        capacity = asyncio.run(read())
    except (redis.RedisError, OSError) as exc:
        return Check("redis.capacity", "warn", f"cannot read INFO memory: {type(exc).__name__}")
    warning = capacity.warning()
    if warning:
        return Check("redis.capacity", "warn", warning)
    if not capacity.maxmemory:
        return Check("redis.capacity", "ok", "maxmemory unlimited (ops/redis.conf sets 1gb)")
    return Check(
        "redis.capacity",
        "ok",
        f"maxmemory {capacity.maxmemory / MIB:.0f} MiB holds FLEET_MAX_QUEUED={capacity.max_queued} "
        f"queued runs and the live and hot runs (about {capacity.needed() / MIB:.0f} MiB)",
    )


def clock_skew_s(client: redis.Redis, now: Callable[[], float] = time.time) -> tuple[float, float]:
    """(this host's clock minus Redis' TIME, the round trip), in seconds."""
    before = now()
    seconds, micros = client.time()
    after = now()
    return (before + after) / 2 - (seconds + micros / 1e6), after - before


def check_clock(client: redis.Redis, now: Callable[[], float] = time.time) -> Check:
    """The skew against Redis' TIME; a warning over CLOCK_SKEW_WARN_S (beyond the round trip)."""
    try:
        skew_s, rtt_s = clock_skew_s(client, now)
    except redis.RedisError as exc:
        return Check("clock", "warn", f"cannot read Redis TIME: {exc}")
    if abs(skew_s) > CLOCK_SKEW_WARN_S + rtt_s / 2:
        side = "ahead of" if skew_s > 0 else "behind"
        return Check(
            "clock",
            "warn",
            f"this host's clock is {abs(skew_s):.1f} s {side} Redis' (over {CLOCK_SKEW_WARN_S:g} s): "
            "deadlines, leases and timers assume synced clocks; check NTP",
        )
    return Check("clock", "ok", f"skew against Redis TIME {skew_s * 1000:+.0f} ms")


# -- the run history ------------------------------------------------------------------------------


def check_database(settings: Settings) -> Check:
    """The run history's database accepts a connection and a `SELECT 1` (SQLite: its file opens)."""
    from sqlalchemy import text

    from worker.history.db import describe_error, make_engine, masked

    url = settings.history_database_url()
    try:
        engine = make_engine(url)
    except Exception as exc:
        return Check("database", "fail", f"{masked(url)}: {describe_error(exc, url)}")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return Check("database", "fail", f"{masked(url)} does not answer: {describe_error(exc, url)}")
    finally:
        engine.dispose()
    return Check("database", "ok", f"{masked(url)} answers")


# -- secrets --------------------------------------------------------------------------------------


def check_api_keys(settings: Settings) -> Check:
    """At least one API key, else every /v1 call gets 401. Counts only: a key is never shown."""
    keys = settings.tenant_keys()
    if not keys:
        return Check(
            "secrets.api_keys",
            "fail",
            "no API keys: set FLEET_API_KEYS, FLEET_API_KEYS_FILE or /run/secrets/fleet_api_keys "
            "(every /v1 call would get 401)",
        )
    tenants = len(set(keys.values()))
    return Check("secrets.api_keys", "ok", f"{len(keys)} key(s) for {tenants} tenant(s)")


def check_webhook_secrets(settings: Settings) -> list[Check]:
    """When webhooks are configured: a signing secret for every tenant that may send them."""
    hooks = settings.webhooks
    if not hooks.allow_hosts and not hooks.tenant_allow_hosts:
        return []
    secrets = settings.tenant_webhook_secrets()
    if not secrets:
        return [
            Check(
                "secrets.webhooks",
                "fail",
                "webhooks are configured but no tenant has a secret: set FLEET_WEBHOOK_SECRETS, "
                "FLEET_WEBHOOK_SECRETS_FILE or /run/secrets/fleet_webhook_secrets "
                "(every run with a webhook would get 422)",
            )
        ]
    unsigned = sorted(set(hooks.tenant_allow_hosts) - set(secrets))
    if unsigned:
        return [
            Check(
                "secrets.webhooks",
                "fail",
                f"webhooks.tenant_allow_hosts names tenants without a webhook secret: {', '.join(unsigned)}",
            )
        ]
    return [Check("secrets.webhooks", "ok", f"a signing secret for {len(secrets)} tenant(s)")]


def model_key_source(settings: Settings) -> str | None:
    """Where OPENAI_API_KEY comes from (the environment or its file), None when it is not set."""
    import os

    from worker.settings import SECRETS_DIR

    if os.environ.get("OPENAI_API_KEY"):
        return "the environment"
    if settings.secret("OPENAI_API_KEY"):
        return str(SECRETS_DIR / "openai_api_key")
    return None


def check_model_key(settings: Settings) -> list[Check]:
    """When the `llm` agent is configured, its key is set (the value is never read out)."""
    if "llm" not in settings.agents:
        return []
    source = model_key_source(settings)
    if source is None:
        return [
            Check(
                "secrets.model_key",
                "fail",
                "the llm agent is configured and OPENAI_API_KEY is not set (nor /run/secrets/openai_api_key)",
            )
        ]
    return [Check("secrets.model_key", "ok", f"OPENAI_API_KEY is set (from {source})")]


# -- upstreams ------------------------------------------------------------------------------------


def check_upstreams(settings: Settings) -> list[Check]:
    """Every upstream the configuration relies on: the llm agent's base_url (each version's),
    tools.search.url, and each host of tools.http.allow_hosts."""
    checks = [check_model_service(url, settings) for url in model_base_urls(settings)]
    if settings.tools.search.url:
        checks.append(check_url_upstream("upstream.search", settings.tools.search.url, settings))
    checks += [check_allowed_host(host, settings) for host in settings.tools.http.allow_hosts]
    if not checks:
        checks.append(Check("upstream", "ok", "none configured (no llm agent, search url or allow_hosts)"))
    return checks


def model_base_urls(settings: Settings) -> list[str]:
    """The llm agent's base_url of each of its versions (stable and canary may differ), deduplicated."""
    from worker.agents.llmconfig import config_from
    from worker.control.rollout import CANARY, STABLE, has_versions, version_config

    if "llm" not in settings.agents:
        return []
    config = dict(settings.agents["llm"])
    versions = (STABLE, CANARY) if has_versions(config) else (None,)
    urls = [config_from(version_config(config, v)).base_url for v in versions]
    return list(dict.fromkeys(urls))


def check_model_service(base_url: str, settings: Settings) -> Check:
    """The network stages to `base_url`, then `GET <base_url>/models` with the key: 401 or 403 is
    "key refused", a failure distinct from "unreachable"."""
    name = "upstream.llm"
    try:
        url = _http_url(base_url, "agents.llm.base_url")
        stages = reach(url, settings, trusted=True)
        key = settings.secret("OPENAI_API_KEY")
        status = _get_models(url, key)
    except StageFailed as exc:
        return Check(name, "fail", f"{_shown(base_url)}: {exc}")
    answer = f"GET /models {status}"
    if status in (401, 403):
        return Check(name, "fail", f"{_shown(base_url)}: {stages}; key refused: {answer}")
    if 200 <= status < 300:
        return Check(name, "ok", f"{_shown(base_url)}: {stages}; {answer}")
    if status in (404, 405):
        return Check(
            name,
            "warn",
            f"{_shown(base_url)}: {stages}; {answer} (the service lists no models; key not refused)",
        )
    return Check(name, "fail", f"{_shown(base_url)}: {stages}; {answer}")


def check_url_upstream(name: str, text: str, settings: Settings) -> Check:
    """The network stages to a configured URL (operator config: exempt from the address block)."""
    try:
        url = _http_url(text, "tools.search.url")
        return Check(name, "ok", f"{_shown(text)}: {reach(url, settings, trusted=True)}")
    except StageFailed as exc:
        return Check(name, "fail", f"{_shown(text)}: {exc}")


def check_allowed_host(entry: str, settings: Settings) -> Check:
    """A host of tools.http.allow_hosts: a bare host name (the SSRF guard compares the URL's host
    exactly, so `https://x`, `x:8443` or `*.x` never match), that resolves; a connect to 443
    (with TLS) or 80 answers, else a warning (the host may serve another port)."""
    name = f"upstream.allow_hosts[{entry}]"
    host = entry.strip().strip("[]").lower()
    try:
        parsed = httpx.URL(f"http://{_bracketed(host)}/")
        bare = parsed.host == host and parsed.port is None and bool(HOST_RE.fullmatch(host))
    except (httpx.InvalidURL, ValueError):
        bare = False
    if not bare or not host:
        return Check(
            name,
            "fail",
            "guard: not a bare host name; the SSRF guard compares a URL's host exactly, so "
            "this entry permits nothing (write the host only: no scheme, port, path or wildcard)",
        )
    failures = []
    for scheme in ("https", "http"):
        try:
            return Check(
                name, "ok", f"{scheme}: {reach(httpx.URL(f'{scheme}://{_bracketed(host)}/'), settings)}"
            )
        except StageFailed as exc:
            if exc.stage in ("dns", "guard"):
                return Check(name, "fail", str(exc))
            failures.append(f"{scheme}: {exc}")
    return Check(name, "warn", "; ".join(failures) + " (it may serve another port)")


def reach(url: httpx.URL, settings: Settings, trusted: bool = False) -> str:
    """DNS, TCP connect and, for https, a TLS handshake to `url`'s host, and the SSRF guard's
    verdict on it, as the tools would connect; a summary, else StageFailed naming the stage.
    `trusted`: operator config (base_url, search url), exempt from the address block as in the tools."""
    from worker.tools.base import ToolFailure
    from worker.tools.netguard import allowed_hosts, checked_addresses

    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = resolve(host, port)
    allowed = allowed_hosts([*settings.tools.http.allow_hosts, *([url.host] if trusted else [])])
    try:
        checked_addresses(url, allowed)
    except ToolFailure as failure:
        raise StageFailed("guard", f"the SSRF guard refuses it: {failure.message}") from None
    sock = connect(host, addresses, port)
    try:
        done = f"dns ok ({len(addresses)} address(es)), connect ok ({host}:{port})"
        if url.scheme == "https":
            version = handshake(sock, host, port)
            done += f", tls ok ({version})"
        return done
    finally:
        sock.close()


def resolve(host: str, port: int, timeout_s: float = STAGE_TIMEOUT_S) -> list[str]:
    """The host's addresses (an address literal is its own), within `timeout_s`."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    found: list[Any] = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            found.append(exc)

    # getaddrinfo has no timeout of its own; a daemon thread never holds the process at exit
    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not found:
        raise StageFailed("dns", f"cannot resolve {host}: no answer within {timeout_s:g} s")
    result = found[0]
    if isinstance(result, BaseException):
        raise StageFailed("dns", f"cannot resolve {host}: {_reason(result)}")
    addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in result))
    if not addresses:
        raise StageFailed("dns", f"cannot resolve {host}: no addresses")
    return addresses


def connect(host: str, addresses: list[str], port: int, timeout_s: float = STAGE_TIMEOUT_S) -> socket.socket:
    """A TCP connection to the first of `addresses` that accepts one."""
    failures = []
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=timeout_s)
        except OSError as exc:
            failures.append(f"{address}: {_reason(exc)}")
    raise StageFailed("connect", f"no connection to {host}:{port} ({'; '.join(failures)})")


def handshake(sock: socket.socket, host: str, port: int, timeout_s: float = STAGE_TIMEOUT_S) -> str:
    """A TLS handshake over `sock` with the tools' trust store and SNI `host`; the TLS version."""
    from worker.tools.http_client import _ssl_context

    sock.settimeout(timeout_s)
    try:
        with _ssl_context().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=True) as tls:
            return tls.version() or "TLS"
    except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
        raise StageFailed("tls", f"TLS handshake with {host}:{port} failed: {_reason(exc)}") from None


def _get_models(base_url: httpx.URL, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = str(base_url).rstrip("/") + "/models"
    try:
        with httpx.Client(trust_env=False, timeout=HTTP_TIMEOUT_S, follow_redirects=False) as client:
            return client.get(url, headers=headers).status_code
    except httpx.TimeoutException:
        raise StageFailed("http", f"GET /models: no answer within {HTTP_TIMEOUT_S:g} s") from None
    except httpx.HTTPError as exc:
        raise StageFailed("http", f"GET /models failed: {type(exc).__name__}") from None


def _http_url(text: str, setting: str) -> httpx.URL:
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise StageFailed("config", f"{setting} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise StageFailed("config", f"{setting} needs an http(s) URL with a host")
    return url


def _shown(text: str) -> str:
    """A configured URL as shown: scheme, host, port and path, without userinfo or query (either
    may carry a token)."""
    try:
        url = httpx.URL(text)
        return str(url.copy_with(userinfo=b"", query=None, fragment=None))
    except (httpx.InvalidURL, ValueError, TypeError):
        return "<not a URL>"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
