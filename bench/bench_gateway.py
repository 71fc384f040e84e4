"""The tool gateway against bare Celery, side by side, in one run, on one Redis (issue 3).

    .venv/bin/python bench/bench_gateway.py [--steps K] [--blocks N] [--decisions N]

Starts its own redis-server, a real fleet (`fleet api`, one `fleet worker`, one `fleet tool-worker`,
as the fleet runs them: the tool worker on its default threads pool) and a bare Celery worker with the
same command-line shape (`--pool threads --concurrency 32`), serving the two bare tasks defined below
(the fleet on db 0, the bare app on db 1 of the same server). Then:

- gateway round trip: scripted runs whose every step is one `echo` tool call (`"loop": true`, ended
  by `max_steps`); a sample is one step's `duration_ms` from the run's step log, i.e. the whole
  gateway path as the run sees it: kill switches, allowlist, schema, quota, tool-call budget,
  breaker, the subtask on `tools.echo`, the tool worker's checks and the reply. Baselines, in
  blocks interleaved with the fleet's runs so background load hits all sides alike:
  * bare BLPOP (the requirement's baseline): `send_task("bare.echo_reply")` to the bare threads
    worker, whose task RPUSHes the args to a reply list that the client BLPOPs. That is the
    mechanism the fleet's loop uses (a task cannot `.get()` a subtask), so the ratio is what the
    gateway adds on top of a Celery subtask, not a difference in how the answer comes back;
  * bare `.get()`: `bare.echo.delay(args).get()`, the plain Celery client round trip (result
    backend, pub/sub), for reference.
- rate limiter decision: `worker.gateway.ratelimit.RateLimiter.acquire` against the real redis-server in a
  tight loop (max_wait 0), interleaved call by call with a bare `PING` from the same client.

Prints a Markdown table and exits 1 if a requirement fails (2 if the bench itself could not run).
Module-level `app` is the bare Celery app (`celery -A bench.bench_gateway worker -Q bare_echo`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import kombu  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402

from bench.bare_app import make_app  # noqa: E402
from bench.bench_core import Baselines, cpu_model, percentile  # noqa: E402
from tests.harness import Fleet, Proc, RedisServer, wait_for  # noqa: E402

ECHO_REPLY_TASK = "bare.echo_reply"  # RPUSHes its args to a reply list (the fleet's mechanism)
ECHO_TASK = "bare.echo"  # returns its args through the result backend (`.get()`)
ECHO_QUEUE = "bare_echo"
REPLY_TTL_S = 300
ROUND_TRIP_RATIO_MAX = 1.5  # gateway round trip <= 1.5x a bare Celery subtask round trip
DECISION_P99_MAX_MS = 1.0  # rate limiter decision p99 <= 1 ms
EXIT_FAILED, EXIT_ERROR = 1, 2
ECHO_ARGS = {"n": 1}


# -- the bare Celery app ------------------------------------------------------------------------------


def make_echo_app(redis_url: str, events: bool = False) -> celery.Celery:
    """bench/bare_app.py's app (the fleet's delivery settings, none of its code) plus two echo tasks."""
    bare = make_app(redis_url, events=events)
    bare.conf.task_routes = {
        **bare.conf.task_routes,
        ECHO_REPLY_TASK: {"queue": ECHO_QUEUE},
        ECHO_TASK: {"queue": ECHO_QUEUE},
    }
    clients: list[redis.Redis] = []

    def client() -> redis.Redis:
        if not clients:  # one pooled client per process, made in the worker (not before a fork)
            clients.append(redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=15))
        return clients[0]

    @bare.task(name=ECHO_REPLY_TASK, shared=False, ignore_result=True)
    def echo_reply(reply_key: str, args: dict[str, Any]) -> None:
        pipe = client().pipeline(transaction=True)
        pipe.rpush(reply_key, json.dumps({"ok": True, "result": args}))
        pipe.expire(reply_key, REPLY_TTL_S)
        pipe.execute()

    @bare.task(name=ECHO_TASK, shared=False)
    def echo(args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": args}

    return bare


app = make_echo_app(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/1"),
    events=os.environ.get("BENCH_BARE_EVENTS", "") == "1",
)


def spawn_echo_worker(baselines: Baselines, concurrency: int = 32) -> Proc:
    """A bare worker shaped like `fleet tool-worker`: threads pool, 32 threads, quiet, INFO."""
    name = f"bare-echo-{uuid.uuid4().hex[:6]}@%h"
    proc = baselines.spawn(
        "bare-echo-worker",
        "-m", "celery", "-A", "bench.bench_gateway", "--quiet", "worker", "-Q", ECHO_QUEUE,
        "--pool", "threads", "--concurrency", str(concurrency), "-n", name, "--without-mingle",
        "--loglevel", "INFO",
    )  # fmt: skip
    wait_for(lambda: " ready." in proc.text(), 60, f"bare echo worker did not start:\n{proc.text()}")
    return proc


# -- reporting (shared with bench_fleet.py) -------------------------------------------------------------


@dataclass
class Row:
    """One line of the table; `check` decides pass/fail from (agentfleet value, ratio)."""

    metric: str
    fleet: float | None
    bare: float | None = None
    required: str = "—"
    check: Callable[[float, float], bool] | None = None
    target: str | None = None  # shown instead of the ratio (e.g. "vs 20/s")
    digits: int = 1

    @property
    def ratio(self) -> float:
        if self.fleet is None or not self.bare:
            return math.nan
        return self.fleet / self.bare

    @property
    def verdict(self) -> str:
        if self.check is None:
            return "—"
        if self.fleet is None:
            return "FAIL"
        return "pass" if self.check(self.fleet, self.ratio) else "FAIL"

    def cells(self) -> list[str]:
        def num(value: float | None) -> str:
            return "—" if value is None or math.isnan(value) else f"{value:.{self.digits}f}"

        ratio = self.target or ("—" if math.isnan(self.ratio) else f"{self.ratio:.2f}x")
        return [self.metric, num(self.fleet), num(self.bare), ratio, self.required, self.verdict]


def render(rows: list[Row], header: str = "ratio") -> str:
    lines = [
        f"| metric | agentfleet | bare baseline | {header} | required | pass/fail |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(load_before: tuple[float, float, float]) -> str:
    load_after = os.getloadavg()
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1048576
    return (
        f"- machine: `{platform.machine()}`, {cpu_model()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, "
        f"Linux {platform.release()}; load average {load_before[0]:.2f} at start, {load_after[0]:.2f} at end"
    )


def versions_line(server: RedisServer) -> str:
    import fastapi
    import uvicorn

    redis_version = server.client().info("server")["redis_version"]
    return (
        f"- versions: Python {platform.python_version()}, Celery {celery.__version__}, kombu "
        f"{kombu.__version__}, redis-py {redis.__version__}, Redis {redis_version}, FastAPI "
        f"{fastapi.__version__}, uvicorn {uvicorn.__version__}"
    )


def p99(values: list[float]) -> float:
    return percentile(values, 99)


def ts(stamp: str) -> float:
    """ISO 8601 UTC (`…Z`) as Unix seconds."""
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def log_events(proc: Proc, event: str) -> Iterator[dict[str, Any]]:
    """The JSON log lines of a fleet process whose event is `event`."""
    for line in proc.text().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if data.get("event") == event:
                    yield data


# -- resource use (robust to a loaded machine, unlike the milliseconds) -------------------------------------


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def usage(r: redis.Redis, groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each group of process trees and of this process, Redis' command count and CPU
    seconds (server-wide), and a monotonic clock."""
    out = {name: sum(tree_cpu_s(pid) for pid in pids) for name, pids in groups.items()}
    out["self"] = time.process_time()
    stats = r.info("commandstats")
    out["redis_calls"] = float(sum(int(v["calls"]) for v in stats.values()))
    cpu = r.info("cpu")
    out["redis_cpu"] = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    out["wall"] = time.monotonic()
    return out


class Meter:
    """Resource use over measured intervals (`with meter.over():`), less what the same processes
    use while idle (Celery's polling, heartbeats), as measured by `idle()`."""

    def __init__(self, r: redis.Redis, groups: dict[str, list[int]]) -> None:
        self.r = r
        self.groups = groups
        self.total: dict[str, float] = {}
        self.idle_per_s: dict[str, float] = {}

    @contextlib.contextmanager
    def over(self, record: bool = True) -> Iterator[None]:
        before = usage(self.r, self.groups)
        yield
        after = usage(self.r, self.groups)
        if record:
            for key, value in after.items():
                self.total[key] = self.total.get(key, 0.0) + value - before[key]

    def idle(self, seconds: float) -> None:
        """Measure the idle rates of every counter over `seconds` of doing nothing."""
        before = usage(self.r, self.groups)
        time.sleep(seconds)
        after = usage(self.r, self.groups)
        wall = after["wall"] - before["wall"]
        self.idle_per_s = {key: (after[key] - before[key]) / wall for key in after if key != "wall"}

    def per(self, key: str, count: int, scale: float = 1000.0) -> float:
        """`key` per unit of work (x `scale`: ms from seconds by default), idle use subtracted."""
        if not count or key not in self.total:
            return math.nan
        busy = self.total[key] - self.idle_per_s.get(key, 0.0) * self.total.get("wall", 0.0)
        return max(0.0, busy) * scale / count


# -- gateway round trip ---------------------------------------------------------------------------------


@dataclass
class RoundTrips:
    fleet_ms: list[float] = field(default_factory=list)
    blpop_ms: list[float] = field(default_factory=list)
    get_ms: list[float] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)


def fleet_block(fleet: Fleet, steps: int) -> tuple[str, list[float]]:
    """One scripted run of `steps` echo calls; the steps' duration_ms from its step log."""
    plan = {"plan": [{"tool": "echo", "args": ECHO_ARGS}], "loop": True}
    run = fleet.submit(input=plan, budgets={"max_steps": steps, "max_tool_calls": steps})
    deadline = time.monotonic() + 120
    with fleet.client() as http:
        while True:
            done = http.get(f"/v1/runs/{run['id']}", params={"wait": 10, "steps": "true"}).json()
            if done["status"] not in ("queued", "running") or time.monotonic() > deadline:
                break
    entries = done.get("steps") or []
    good = [e for e in entries if e.get("tool") == "echo" and e.get("ok") is True]
    if done["stop_reason"] != "max_steps" or len(good) != steps:
        bad = [e for e in entries if e not in good][:3]
        raise RuntimeError(f"echo run {run['id']} ended {done['status']}/{done['stop_reason']}: {bad}")
    return run["id"], [float(e["duration_ms"]) for e in good]


def blpop_block(bare: celery.Celery, r: redis.Redis, steps: int) -> list[float]:
    """`steps` bare subtask round trips: send_task, then BLPOP the reply list the task writes."""
    samples = []
    for i in range(steps):
        key = f"bench:reply:{uuid.uuid4().hex}:{i}"
        t0 = time.perf_counter()
        bare.send_task(ECHO_REPLY_TASK, args=[key, ECHO_ARGS], queue=ECHO_QUEUE)
        reply = r.blpop([key], timeout=10)
        elapsed = time.perf_counter() - t0
        if reply is None or json.loads(reply[1]) != {"ok": True, "result": ECHO_ARGS}:
            raise RuntimeError(f"bare echo_reply answered {reply!r}")
        samples.append(elapsed * 1000)
    return samples


def get_block(bare: celery.Celery, steps: int) -> list[float]:
    """`steps` plain Celery client round trips: `echo.delay(args).get()`."""
    echo = bare.tasks[ECHO_TASK]
    samples = []
    for _ in range(steps):
        t0 = time.perf_counter()
        value = echo.delay(ECHO_ARGS).get(timeout=10)
        elapsed = time.perf_counter() - t0
        if value != {"ok": True, "result": ECHO_ARGS}:
            raise RuntimeError(f"bare echo returned {value!r}")
        samples.append(elapsed * 1000)
    return samples


def measure_round_trips(
    fleet: Fleet,
    bare: celery.Celery,
    r: redis.Redis,
    steps: int,
    blocks: int,
    warmup: int,
    meters: dict[str, Meter],
) -> RoundTrips:
    """Blocks of `steps` samples per side, the sides' order rotating block by block; `meters`
    ("fleet", "blpop") add up the resource use of the measured blocks."""
    out = RoundTrips()
    sides = ("fleet", "blpop", "get")
    for block in range(warmup + blocks):
        record = block >= warmup
        shift = block % len(sides)
        for side in sides[shift:] + sides[:shift]:
            if side == "fleet":
                with meters["fleet"].over(record):
                    run_id, samples = fleet_block(fleet, steps)
                if record:
                    out.run_ids.append(run_id)
                    out.fleet_ms += samples
            elif side == "blpop":
                with meters["blpop"].over(record):
                    samples = blpop_block(bare, r, steps)
                if record:
                    out.blpop_ms += samples
            else:
                samples = get_block(bare, steps)
                if record:
                    out.get_ms += samples
    return out


# -- rate limiter decisions ---------------------------------------------------------------------------


@dataclass
class Decisions:
    admit_ms: list[float]
    reject_ms: list[float]
    ping_ms: list[float]
    admitted: int
    rejected: int
    server_us: dict[str, float] = field(default_factory=dict)  # Redis' own time per call, by command


def measure_decisions(url: str, count: int, warmup: int) -> Decisions:
    """RateLimiter.acquire in a tight loop (max_wait 0) against a PING from the same client.

    Interleaved call by call: PING, an acquire on a rate high enough that every call is admitted
    (1,000,000/s), and an acquire on a rate that refuses all but the first (1/h), order rotating.
    """
    from worker.gateway.ratelimit import RateLimiter, parse_rate
    from worker.keys import Keys
    from worker.redis_conn import make_redis

    r = make_redis(url)  # the same client the fleet's processes use
    limiter = RateLimiter(r, Keys(f"bench{uuid.uuid4().hex[:6]}"))
    fast, slow = parse_rate("1000000/s"), parse_rate("1/h")
    out = Decisions([], [], [], 0, 0)
    perf = time.perf_counter_ns

    def ping() -> None:
        t0 = perf()
        r.ping()
        if record:
            out.ping_ms.append((perf() - t0) / 1e6)

    def admit() -> None:
        t0 = perf()
        decision = limiter.acquire("bench.admit", fast, 0.0)
        if record:
            out.admit_ms.append((perf() - t0) / 1e6)
            out.admitted += decision.allowed

    def reject() -> None:
        t0 = perf()
        decision = limiter.acquire("bench.reject", slow, 0.0)
        if record:
            out.reject_ms.append((perf() - t0) / 1e6)
            out.rejected += not decision.allowed

    def server_stats() -> dict[str, tuple[int, int]]:
        stats = r.info("commandstats")
        return {
            k: (int(stats[f"cmdstat_{k}"]["calls"]), int(stats[f"cmdstat_{k}"]["usec"]))
            for k in ("evalsha", "ping")
        }

    ops = [ping, admit, reject]
    for i in range(warmup + count):
        record = i >= warmup
        if i == warmup:
            before = server_stats()
        for op in ops[i % 3 :] + ops[: i % 3]:
            op()
    after = server_stats()
    for name in ("evalsha", "ping"):
        calls = after[name][0] - before[name][0]
        out.server_us[name] = (after[name][1] - before[name][1]) / calls if calls else math.nan
    r.close()
    return out


# -- main ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="echo calls per run and per bare block (100)")
    parser.add_argument("--blocks", type=int, default=6, help="measured blocks per side (6)")
    parser.add_argument("--warmup", type=int, default=1, help="blocks per side not measured (1)")
    parser.add_argument("--decisions", type=int, default=5000, help="measured limiter decisions (5000)")
    parser.add_argument(
        "--bare-events",
        action="store_true",
        help="give the bare app the fleet's task-event settings (default: Celery's default, off)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 1 <= args.steps <= 200:
        print("bench_gateway: --steps must be 1..200 (the step log keeps 200 entries)", file=sys.stderr)
        return EXIT_ERROR
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    caps = {"AGENT_MAX_STEPS": 1000, "AGENT_MAX_TOOL_CALLS": 1000, "AGENT_MAX_SECONDS": 300}
    with contextlib.ExitStack() as stack:
        server = RedisServer()
        stack.callback(server.close)
        fleet = Fleet(server, {"runtime": {"env": caps}})
        stack.callback(fleet.close)
        bare_url = f"redis://127.0.0.1:{server.port}/1"
        baselines = Baselines(bare_url, concurrency=32, events=args.bare_events)
        stack.callback(baselines.close)
        try:
            print("starting redis-server, the fleet and the bare worker …", file=sys.stderr, flush=True)
            fleet.start_api()
            agent_worker = fleet.start_worker(1)
            tool_worker = fleet.start_tool_worker()
            echo_worker = spawn_echo_worker(baselines)
            bare = make_echo_app(bare_url, events=args.bare_events)
            bare_r = redis.Redis.from_url(bare_url, decode_responses=True, socket_timeout=15)
            stack.callback(bare_r.close)
            total = args.warmup + args.blocks
            print(
                f"round trips: {total} blocks x {args.steps} per side ({args.warmup} warm-up) …",
                file=sys.stderr,
                flush=True,
            )
            meters = {
                "fleet": Meter(
                    fleet.r, {"caller": [agent_worker.popen.pid], "worker": [tool_worker.popen.pid]}
                ),
                "blpop": Meter(fleet.r, {"worker": [echo_worker.popen.pid]}),
            }
            trips = measure_round_trips(fleet, bare, bare_r, args.steps, args.blocks, args.warmup, meters)
            for meter in meters.values():
                meter.idle(3.0)
            print(f"rate limiter: {args.decisions} decisions …", file=sys.stderr, flush=True)
            dec = measure_decisions(server.url, args.decisions, warmup=500)
            versions = versions_line(server)
        except Exception as exc:
            print(f"bench_gateway: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(fleet.logs(), file=sys.stderr)
            for proc in baselines.procs:
                print(f"==== {proc.name} ====\n{proc.text()[-4000:]}", file=sys.stderr)
            return EXIT_ERROR

    ratio_ok: Callable[[float, float], bool] = lambda _v, ratio: ratio <= ROUND_TRIP_RATIO_MAX  # noqa: E731
    p50 = statistics.median
    rows = [
        Row("tool-call round trip p50 (ms)", p50(trips.fleet_ms), p50(trips.blpop_ms),
            f"≤ {ROUND_TRIP_RATIO_MAX:g}x", ratio_ok, digits=2),
        Row("tool-call round trip p99 (ms)", p99(trips.fleet_ms), p99(trips.blpop_ms),
            f"≤ {ROUND_TRIP_RATIO_MAX:g}x", ratio_ok, digits=2),
        Row("… against bare `.get()` p50 (ms)", p50(trips.fleet_ms), p50(trips.get_ms), digits=2),
        Row("… against bare `.get()` p99 (ms)", p99(trips.fleet_ms), p99(trips.get_ms), digits=2),
        Row("rate limiter decision p50 (ms)", p50(dec.admit_ms), p50(dec.ping_ms), digits=3),
        Row("rate limiter decision p99 (ms)", p99(dec.admit_ms), p99(dec.ping_ms),
            f"≤ {DECISION_P99_MAX_MS:g} ms", lambda value, _r: value <= DECISION_P99_MAX_MS, digits=3),
        Row("rate limiter refusal p99 (ms)", p99(dec.reject_ms), p99(dec.ping_ms), digits=3),
        Row("rate limiter: Redis' own time per call (µs)", dec.server_us["evalsha"], dec.server_us["ping"],
            digits=1),
    ]  # fmt: skip
    fm, bm, n_fleet, n_bare = meters["fleet"], meters["blpop"], len(trips.fleet_ms), len(trips.blpop_ms)
    cost_rows = [
        Row("Redis commands per round trip", fm.per("redis_calls", n_fleet, 1),
            bm.per("redis_calls", n_bare, 1)),
        Row("Redis server CPU per round trip (ms)", fm.per("redis_cpu", n_fleet), bm.per("redis_cpu", n_bare),
            digits=3),
        Row("caller CPU per round trip (ms)", fm.per("caller", n_fleet), bm.per("self", n_bare), digits=3),
        Row("worker CPU per round trip (ms)", fm.per("worker", n_fleet), bm.per("worker", n_bare), digits=3),
    ]  # fmt: skip
    command = " ".join(["bench/bench_gateway.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"# agentfleet tool gateway benchmark — {started:%Y-%m-%d %H:%M} UTC\n")
    print(f"`{command}`\n")
    print(render(rows))
    print()
    print(
        "Where a round trip's cost goes, over the same measured blocks (informational). Caller: the "
        "agent worker (agentfleet) or this client process (bare); worker: the tool worker or the bare "
        "worker; whole process trees; Redis commands (INFO commandstats) and CPU server-wide; "
        "idle use (polling, heartbeats; measured for 3 s) subtracted:\n"
    )
    print(render(cost_rows))
    print()
    print(machine_line(load_before))
    print(versions)
    print(
        f"- round trip: {len(trips.fleet_ms)} samples per side ({args.blocks} blocks of {args.steps}, after "
        f"{args.warmup} warm-up block(s)), the sides' order rotating block by block. agentfleet = "
        f"`duration_ms` of each `echo` step in the step log of a looping scripted run (one agent "
        f"process, `fleet tool-worker` on its defaults: threads, 32); bare = `send_task` + `BLPOP` of "
        f"a reply list that the task RPUSHes (the fleet's own mechanism), from one client process, "
        f"to a `celery worker --pool threads --concurrency 32` with bench/bare_app.py's settings "
        f"(acks_late, prefetch 1, JSON), task events {'on' if args.bare_events else 'off'} "
        f"(the fleet's tool workers send none by default: observability.tool_task_events); "
        f"`.get()` = `delay(args).get()` through the result backend"
    )
    print(
        f"- rate limiter: {len(dec.admit_ms)} calls of `RateLimiter.acquire(max_wait_s=0)` per case "
        f"against the same redis-server over loopback (the fleet's `make_redis` client), interleaved "
        f"with `PING`: admitted {dec.admitted}/{len(dec.admit_ms)} at 1000000/s, refused "
        f"{dec.rejected}/{len(dec.reject_ms)} at 1/h; Redis' own time per call = `usec` / `calls` of "
        f"EVALSHA (the GCRA script, both cases) and PING in INFO commandstats: the work inside Redis, "
        f"without the network and the scheduling"
    )
    failed = [row.metric for row in rows if row.verdict == "FAIL"]
    if failed:
        print(f"\nbench_gateway: requirement failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
