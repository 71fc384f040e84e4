"""agentfleet against bare Celery and bare FastAPI, side by side, in one run, on one Redis.

    .venv/bin/python bench/bench_core.py [--runs N] [--seconds S]

Starts its own redis-server, a real fleet (`fleet api`, one `fleet worker`, one `fleet tool-worker`)
and the baselines (bench/bare_app.py served by a `celery worker` with the same pool, concurrency and
delivery settings; bench/bare_api.py served by uvicorn like `fleet api`), all against that server
(the fleet on db 0, the baselines on db 1). Then:

- latency: N sequential 1-step scripted runs (POST /v1/runs, then GET /v1/runs/{id}?wait=10)
  against N sequential `noop.delay().get()`, interleaved sample by sample so background load hits
  both alike;
- throughput: POST /v1/runs from the same number of keep-alive connections against both APIs,
  interleaved in rounds, with every worker stopped (neither side's tasks are consumed);
- the latency histograms' cost: a second fleet with `metrics.histograms: false` (its own API and
  workers, on db 2) takes part in both, interleaved with the first, and the ratio on/off is shown
  (goal: within 5 %).

Prints a Markdown table and exits 1 if a requirement fails (2 if the bench itself could not run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import fastapi  # noqa: E402
import httpx  # noqa: E402
import kombu  # noqa: E402
import psutil  # noqa: E402
import uvicorn  # noqa: E402

from tests.harness import KEY_T1, Fleet, Proc, RedisServer, free_port, wait_for  # noqa: E402
from worker.keys import AGENT_QUEUE  # noqa: E402

RUN_BODY = {"agent": "scripted", "input": {"plan": [{"final": "ok"}]}}
LATENCY_RATIO_MAX = 3.0  # run latency p50 <= 3x bare Celery round trip p50
THROUGHPUT_RATIO_MIN = 0.7  # POST /v1/runs throughput >= 0.7x the bare endpoint's
HISTOGRAMS_OVERHEAD_MAX = 1.05  # with the latency histograms on, within 5 % of them off
OFF_DB = 2  # the Redis db of the fleet without histograms
EXIT_FAILED, EXIT_ERROR = 1, 2


# -- processes --------------------------------------------------------------------------------------


@dataclass
class Baselines:
    """The bare Celery worker and the bare API, as real processes on db 1 of the bench's Redis."""

    redis_url: str
    concurrency: int
    events: bool
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-bare-")))
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.env = {
            **os.environ,
            "BENCH_REDIS_URL": self.redis_url,
            "BENCH_BARE_EVENTS": "1" if self.events else "0",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }

    def spawn(self, name: str, *argv: str) -> Proc:
        log = self.dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, *argv],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def spawn_worker(self) -> Proc:
        # The same command line shape as `fleet worker` under the harness: prefork, -Q, -n,
        # --concurrency, --without-mingle, log level INFO.
        name = f"bare-{uuid.uuid4().hex[:6]}@%h"
        return self.spawn(
            "bare-worker",
            "-m", "celery", "-A", "bench.bare_app", "worker", "-Q", "bare", "--pool", "prefork",
            "--concurrency", str(self.concurrency), "-n", name, "--without-mingle", "--loglevel", "INFO",
        )  # fmt: skip

    def spawn_api(self) -> Proc:
        return self.spawn(
            "bare-api", "-m", "bench.bare_api", "--port", str(self.api_port), "--log-level", "info"
        )

    def wait_ready(self, worker: Proc, api: Proc) -> None:
        wait_for(lambda: " ready." in worker.text(), 60, f"bare worker did not start:\n{worker.text()}")
        wait_for(lambda: _serves(api, self.api_url), 60, f"bare API did not start:\n{api.text()}")

    def stop(self, proc: Proc, timeout: float = 15) -> None:
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
            self.stop(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def _serves(proc: Proc, url: str) -> bool:
    if proc.popen.poll() is not None:
        raise RuntimeError(f"{proc.name} exited:\n{proc.text()}")
    try:
        httpx.get(f"{url}/docs", timeout=1)
        return True
    except httpx.HTTPError:
        return False


# -- statistics -------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _ts(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# -- latency ----------------------------------------------------------------------------------------


@dataclass
class LatencyResult:
    fleet_ms: list[float]
    bare_ms: list[float]
    post_ms: list[float]  # the fleet's POST round trip
    get_ms: list[float]  # the fleet's GET ?wait round trip
    queued_ms: list[float]  # created_at -> started_at (queue, pickup, child start)
    loop_ms: list[float]  # started_at -> finished_at (the budgeted loop)
    off_ms: list[float] = field(default_factory=list)  # the fleet without histograms


def run_once(http: httpx.Client) -> tuple[float, float, float, dict[str, Any]]:
    """One 1-step run: POST, then GET ?wait. Returns (start, posted, ended) perf-counter times and the run."""
    t0 = time.perf_counter()
    posted = http.post("/v1/runs", json=RUN_BODY)
    t1 = time.perf_counter()
    if posted.status_code != 202:
        raise RuntimeError(f"POST /v1/runs answered {posted.status_code}: {posted.text}")
    got = http.get(f"/v1/runs/{posted.json()['id']}", params={"wait": 10})
    t2 = time.perf_counter()
    run: dict[str, Any] = got.json()
    if got.status_code != 200 or run.get("status") != "succeeded" or run.get("output") != "ok":
        raise RuntimeError(f"the run did not succeed within the wait: {got.status_code} {run}")
    return t0, t1, t2, run


def measure_latency(
    fleet: Fleet, bare: celery.Celery, runs: int, warmup: int, fleet_off: Fleet
) -> LatencyResult:
    """Sequential 1-step runs against sequential no-op round trips, alternating which goes first;
    each fleet run is followed by one of the fleet without histograms (`fleet_off`)."""
    noop = bare.tasks["bare.noop"]
    result = LatencyResult([], [], [], [], [], [])

    def off_once(http: httpx.Client, record: bool) -> None:
        t0, _, t2, _ = run_once(http)
        if record:
            result.off_ms.append((t2 - t0) * 1000)

    def fleet_once(http: httpx.Client, record: bool) -> None:
        t0, t1, t2, run = run_once(http)
        if record:
            result.fleet_ms.append((t2 - t0) * 1000)
            result.post_ms.append((t1 - t0) * 1000)
            result.get_ms.append((t2 - t1) * 1000)
            created, started, finished = (_ts(run[k]) for k in ("created_at", "started_at", "finished_at"))
            result.queued_ms.append((started - created) * 1000)
            result.loop_ms.append((finished - started) * 1000)

    def bare_once(record: bool) -> None:
        t0 = time.perf_counter()
        value = noop.delay().get(timeout=10)
        elapsed = time.perf_counter() - t0
        if value != "ok":
            raise RuntimeError(f"bare.noop returned {value!r}")
        if record:
            result.bare_ms.append(elapsed * 1000)

    with fleet.client() as http, fleet_off.client() as http_off:
        for i in range(warmup + runs):
            record = i >= warmup
            if i % 2:
                fleet_once(http, record)
                off_once(http_off, record)
                bare_once(record)
            else:
                bare_once(record)
                off_once(http_off, record)
                fleet_once(http, record)
    return result


# -- throughput -------------------------------------------------------------------------------------


@dataclass
class Load:
    ok: int = 0  # 202s in the measured time
    seconds: float = 0.0
    accepted: int = 0  # 202s in all, warm-up included
    cpu_s: float = 0.0  # CPU time of the API server process in the measured time
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_s / self.ok if self.ok else math.inf


def _request_bytes(port: int, key: str) -> bytes:
    body = json.dumps(RUN_BODY).encode()
    head = (
        f"POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(port: int, request: bytes, stop_at: float, load: Load) -> None:
    """One keep-alive connection sending POSTs back to back until `stop_at`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            load.statuses[status] += 1
            if status == 202:
                load.ok += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def drive(port: int, key: str, connections: int, seconds: float) -> Load:
    """POST /v1/runs from `connections` connections for `seconds`; counts the answers by status.

    A raw asyncio HTTP/1.1 client: on a 2-core machine the load generator shares the CPU with the
    server, and this one spends far less of it per request than httpx, so the servers are measured,
    not the client.
    """
    load = Load()
    request = _request_bytes(port, key)

    async def main() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(_connection(port, request, stop_at, load) for _ in range(connections)))

    t0 = time.perf_counter()
    asyncio.run(main())
    load.seconds = time.perf_counter() - t0
    return load


def measure_throughput(
    apis: dict[str, tuple[int, int]], connections: int, seconds: float, round_s: float
) -> dict[str, Load]:
    """Rounds against every API (after one warm-up second each), in an order that turns each
    round; totals per side. `apis` maps a side to the (port, pid) of its API server, whose CPU
    time is measured per round."""
    ports = {side: port for side, (port, _) in apis.items()}
    servers = {side: psutil.Process(pid) for side, (_, pid) in apis.items()}
    totals = {side: Load() for side in apis}
    for side in apis:
        totals[side].accepted += drive(ports[side], KEY_T1, connections, 1.0).ok
    rounds = max(1, round(seconds / round_s))
    sides = list(apis)
    for i in range(rounds):
        order = sides[i % len(sides) :] + sides[: i % len(sides)]
        for side in order:
            cpu0 = _cpu_s(servers[side])
            load = drive(ports[side], KEY_T1, connections, seconds / rounds)
            total = totals[side]
            total.cpu_s += _cpu_s(servers[side]) - cpu0
            total.ok += load.ok
            total.accepted += load.ok
            total.seconds += load.seconds
            total.statuses.update(load.statuses)
    return totals


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


# -- report -----------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@dataclass
class Row:
    metric: str
    fleet: float
    bare: float
    required: str = "—"
    check: Callable[[float], bool] | None = None

    @property
    def ratio(self) -> float:
        return self.fleet / self.bare if self.bare else math.inf

    @property
    def verdict(self) -> str:
        if self.check is None:
            return "—"
        return "pass" if self.check(self.ratio) else "FAIL"


def render(
    rows: list[Row], digits: int = 1, columns: tuple[str, str] = ("agentfleet", "bare baseline")
) -> str:
    lines = [
        f"| metric | {columns[0]} | {columns[1]} | ratio | required | pass/fail |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.metric} | {row.fleet:.{digits}f} | {row.bare:.{digits}f} | {row.ratio:.2f}x "
            f"| {row.required} | {row.verdict} |"
        )
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_core", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="measured latency samples per side (300)")
    parser.add_argument("--warmup", type=int, default=30, help="latency samples per side not measured (30)")
    parser.add_argument("--seconds", type=float, default=15, help="throughput seconds per side (15)")
    parser.add_argument("--round", type=float, default=3, help="seconds of one throughput round (3)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent client connections (16)")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="prefork processes of the agent and bare workers (2)"
    )
    parser.add_argument(
        "--bare-events",
        action="store_true",
        help="give the bare Celery app the fleet's task-event settings (default: Celery's default, off)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        server = RedisServer()
        stack.callback(server.close)
        limits = {"FLEET_MAX_QUEUED": str(10**9), "FLEET_MAX_QUEUED_PER_TENANT": "0"}
        fleet = Fleet(server, env_extra=limits)
        stack.callback(fleet.close)
        off_url = f"redis://127.0.0.1:{server.port}/{OFF_DB}"
        fleet_off = Fleet(
            server, env_extra={**limits, "REDIS_URL": off_url, "FLEET_METRICS__HISTOGRAMS": "false"}
        )
        stack.callback(fleet_off.close)
        baselines = Baselines(
            f"redis://127.0.0.1:{server.port}/1", concurrency=args.concurrency, events=args.bare_events
        )
        stack.callback(baselines.close)
        try:
            print("starting redis-server, the fleet and the baselines …", file=sys.stderr, flush=True)
            bare_worker, bare_api_proc = baselines.spawn_worker(), baselines.spawn_api()
            fleet_api = fleet.start_api()
            agent_worker = fleet.start_worker(args.concurrency)
            tool_worker = fleet.start_tool_worker()
            off_api = fleet_off.start_api()
            off_workers = (fleet_off.start_worker(args.concurrency), fleet_off.start_tool_worker())
            baselines.wait_ready(bare_worker, bare_api_proc)

            from bench.bare_app import API_QUEUE, make_app

            bare_client = make_app(baselines.redis_url, events=args.bare_events)
            print(f"latency: {args.warmup} + {args.runs} samples per side …", file=sys.stderr, flush=True)
            lat = measure_latency(fleet, bare_client, args.runs, args.warmup, fleet_off)
            # the histograms were recorded by the one fleet, and not by the other
            recorded = bool(fleet.r.exists("fleet:hist:run_duration"))
            off_recorded = _exists(server.port, OFF_DB, "fleet:hist:run_duration")

            # Throughput: only the APIs and Redis run. Stopping both sides' workers keeps the machine's
            # two cores for the servers and the client; the bare side's tasks are not consumed either.
            for proc in (agent_worker, tool_worker):
                fleet.stop_proc(proc)
            for proc in off_workers:
                fleet_off.stop_proc(proc)
            baselines.stop(bare_worker)
            fleet_depth0 = fleet.r.llen(AGENT_QUEUE)
            off_depth0 = _llen(server.port, OFF_DB, AGENT_QUEUE)
            bare_depth0 = _llen(server.port, 1, API_QUEUE)
            print(
                f"throughput: {args.connections} connections, {args.seconds:g} s per side …",
                file=sys.stderr,
                flush=True,
            )
            loads = measure_throughput(
                {
                    "bare": (baselines.api_port, bare_api_proc.popen.pid),
                    "fleet": (fleet.api_port, fleet_api.popen.pid),
                    "off": (fleet_off.api_port, off_api.popen.pid),
                },
                args.connections,
                args.seconds,
                args.round,
            )
            fleet_load, bare_load, off_load = loads["fleet"], loads["bare"], loads["off"]
            fleet_enqueued = fleet.r.llen(AGENT_QUEUE) - fleet_depth0
            off_enqueued = _llen(server.port, OFF_DB, AGENT_QUEUE) - off_depth0
            bare_enqueued = _llen(server.port, 1, API_QUEUE) - bare_depth0
            redis_version = server.client().info("server")["redis_version"]
        except Exception as exc:
            print(f"bench_core: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(fleet.logs(), file=sys.stderr)
            print(fleet_off.logs(), file=sys.stderr)
            for proc in baselines.procs:
                print(f"==== {proc.name} ====\n{proc.text()[-4000:]}", file=sys.stderr)
            return EXIT_ERROR

    rows = [
        Row(
            "run latency p50 (ms)",
            statistics.median(lat.fleet_ms),
            statistics.median(lat.bare_ms),
            f"≤ {LATENCY_RATIO_MAX:g}x",
            lambda ratio: ratio <= LATENCY_RATIO_MAX,
        ),
        Row("run latency p90 (ms)", percentile(lat.fleet_ms, 90), percentile(lat.bare_ms, 90)),
        Row("run latency p99 (ms)", percentile(lat.fleet_ms, 99), percentile(lat.bare_ms, 99)),
        Row(
            "POST /v1/runs throughput (req/s)",
            fleet_load.rps,
            bare_load.rps,
            f"≥ {THROUGHPUT_RATIO_MIN:g}x",
            lambda ratio: ratio >= THROUGHPUT_RATIO_MIN,
        ),
        Row(
            "API server CPU per accepted POST (ms)",
            fleet_load.cpu_ms_per_request,
            bare_load.cpu_ms_per_request,
        ),
    ]
    overhead = [
        Row(
            "run latency p50 (ms)",
            statistics.median(lat.fleet_ms),
            statistics.median(lat.off_ms),
            f"≤ {HISTOGRAMS_OVERHEAD_MAX:g}x",
            lambda ratio: ratio <= HISTOGRAMS_OVERHEAD_MAX,
        ),
        Row("run latency p90 (ms)", percentile(lat.fleet_ms, 90), percentile(lat.off_ms, 90)),
        Row(
            "POST /v1/runs throughput (req/s)",
            fleet_load.rps,
            off_load.rps,
            f"≥ {1 / HISTOGRAMS_OVERHEAD_MAX:.2f}x",
            lambda ratio: ratio >= 1 / HISTOGRAMS_OVERHEAD_MAX,
        ),
        Row(
            "API server CPU per accepted POST (ms)",
            fleet_load.cpu_ms_per_request,
            off_load.cpu_ms_per_request,
        ),
    ]
    # Every accepted POST (warm-up included) put exactly one message on its queue: nothing consumed.
    sane = (
        fleet_enqueued == fleet_load.accepted
        and bare_enqueued == bare_load.accepted
        and off_enqueued == off_load.accepted
        and recorded
        and not off_recorded
    )
    off_other = {s: n for s, n in off_load.statuses.items() if s != 202}
    load_after = os.getloadavg()
    fleet_other = {s: n for s, n in fleet_load.statuses.items() if s != 202}
    bare_other = {s: n for s, n in bare_load.statuses.items() if s != 202}
    median = statistics.median
    print(f"# agentfleet core benchmark — {started:%Y-%m-%d %H:%M} UTC\n")
    command = " ".join(["bench/bench_core.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"`{command}`")
    print()
    print(render(rows))
    print()
    print("The latency histograms' cost (`metrics.histograms` on, the default, against off; same run):")
    print()
    print(render(overhead, columns=("histograms on", "histograms off")))
    print()
    print(
        f"- machine: `{platform.machine()}`, {cpu_model()}, {os.cpu_count()} cores, "
        f"load average {load_before[0]:.2f} at start, {load_after[0]:.2f} at end"
    )
    print(
        f"- versions: Python {platform.python_version()}, Celery {celery.__version__}, "
        f"kombu {kombu.__version__}, Redis {redis_version}, FastAPI {fastapi.__version__}, "
        f"uvicorn {uvicorn.__version__}"
    )
    print(
        f"- latency: {args.runs} sequential samples per side after {args.warmup} warm-up, interleaved; "
        f"agentfleet = `POST /v1/runs` + `GET /v1/runs/{{id}}?wait=10` of a 1-step scripted run "
        f"(httpx, keep-alive); bare = `noop.delay().get()` (Redis result backend)"
    )
    print(
        f"- agentfleet latency p50 by part: POST {median(lat.post_ms):.1f} ms, GET ?wait "
        f"{median(lat.get_ms):.1f} ms; server side: created→started {median(lat.queued_ms):.1f} ms, "
        f"started→finished {median(lat.loop_ms):.1f} ms"
    )
    print(
        f"- workers: agent worker and bare worker both prefork, concurrency {args.concurrency}, "
        f"prefetch 1, acks_late + reject_on_worker_lost, JSON, `--without-mingle`, log level INFO; "
        f"task events: agentfleet off (its default, observability.run_task_events), "
        f"bare {'on' if args.bare_events else 'off'}"
    )
    print(
        f"- throughput: {args.connections} keep-alive connections, {fleet_load.seconds:.1f} s vs "
        f"{bare_load.seconds:.1f} s in rotating rounds after 1 s warm-up each; workers stopped, "
        f"so neither side's tasks are consumed; bare = one `def` endpoint calling `send_task` "
        f"(ignore_result) under uvicorn, served like `fleet api`"
    )
    print(
        f"- checks (warm-up included): agentfleet {fleet_load.accepted} x 202 (other: "
        f"{fleet_other or 'none'}), {fleet_enqueued} new messages on `agents`; bare "
        f"{bare_load.accepted} x 202 (other: {bare_other or 'none'}), {bare_enqueued} new messages "
        f"on `{API_QUEUE}`; without histograms {off_load.accepted} x 202 (other: {off_other or 'none'}), "
        f"{off_enqueued} new messages; histograms recorded with them on: {recorded}, off: {off_recorded}"
    )
    print(
        "- histograms off: a second fleet (API, agent worker, tool worker) with "
        f"`FLEET_METRICS__HISTOGRAMS=false` on db {OFF_DB} of the same Redis, its latency samples "
        "interleaved with the first fleet's and its throughput rounds with both APIs'"
    )
    failed = [row.metric for row in [*rows, *overhead] if row.verdict == "FAIL"]
    if not sane or fleet_other or bare_other or off_other:
        print("\nbench_core: a sanity check failed (non-202 answers or missing messages)", file=sys.stderr)
        return EXIT_FAILED
    if failed:
        print(f"\nbench_core: requirement failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _exists(port: int, db: int, key: str) -> bool:
    import redis

    client = redis.Redis(port=port, db=db, socket_timeout=5)
    try:
        return bool(client.exists(key))
    finally:
        client.close()


def _llen(port: int, db: int, key: str) -> int:
    import redis

    client = redis.Redis(port=port, db=db, socket_timeout=5)
    try:
        return int(client.llen(key))
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
