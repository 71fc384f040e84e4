"""agentfleet as a fleet against bare Celery and bare FastAPI, side by side, in one run (issue 7).

    .venv/bin/python bench/bench_fleet.py [--latency-runs N] [--throughput-runs N] [--kill-runs N]

Starts its own redis-server, a real fleet (`fleet api`, `fleet worker`s, `fleet tool-worker`s) and
the baselines of bench/bench_core.py (bench/bare_app.py served by prefork `celery worker`s with the
same concurrency and delivery settings; bench/bare_api.py under uvicorn), all against that server
(the fleet on db 0, the baselines on db 1), and measures, in this order:

1. latency: sequential 1-step runs (POST, then GET ?wait) against `noop.delay().get()`, interleaved
   sample by sample (bench_core.measure_latency), with 2 agent workers and 2 bare workers;
2. throughput: N 1-step runs queued up front while both agent workers' consumers are paused
   (Celery's `cancel_consumer`), then released (`add_consumer`); runs/s = completions per second
   from the first to the last completion (server timestamps: the runs' `finished_at`, the bare
   results' `date_done`); the same for N `bare.noop` tasks on 2 bare workers;
3. per-step overhead: runs of 1 and of 11 `{"sleep": 0}` steps (and of `echo` steps), interleaved;
   (median run time of 11 - median of 1) / 10, run time = finished_at - started_at;
4. rate limiter accuracy: `tools.rate_limits: {http.get: "20/s"}`, 3 agent and 3 tool workers, runs
   looping `http.get` against a local counting server; requests it received per second in a 10 s
   window against the configured rate;
5. recovery: a run in a 3 s think step, its agent worker's whole process group SIGKILLed (another
   worker running); time from the kill until the resumed execution began the step again
   (finished_at minus the resumed step's duration_ms) — repeated, the worst one counts;
6. kill-all: 100 running runs (looping think time; some waiting on a 30 s `test.sleep` tool call)
   on enough agent processes, `SET fleet:kill:all`; per run finished_at - the moment of the SET;
7. API throughput: POST /v1/runs against the bare FastAPI send_task endpoint, workers stopped
   (bench_core.measure_throughput).

Prints one Markdown table and exits 1 if a requirement fails (2 if the bench itself could not run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402
from celery import Celery  # noqa: E402

from bench.bare_app import NOOP_TASK  # noqa: E402
from bench.bare_app import QUEUE as BARE_QUEUE  # noqa: E402
from bench.bare_app import make_app as make_bare_app  # noqa: E402
from bench.bench_core import Baselines, measure_latency, measure_throughput  # noqa: E402
from bench.bench_gateway import (  # noqa: E402
    Meter,
    Row,
    machine_line,
    p99,
    render,
    ts,
    versions_line,
)
from tests.harness import TERMINAL, CountingServer, Fleet, Proc, RedisServer, wait_for  # noqa: E402
from worker.settings import ObservabilitySection  # noqa: E402

THROUGHPUT_RATIO_MIN = 0.5  # 1-step runs/s >= 0.5x bare Celery no-op tasks/s
KILL_P99_MAX_S = 1.0  # kill-all: every run stops within 1 s (p99)
RATE_ERROR_MAX = 0.05  # rate limiter: observed within +-5 % of the configured rate
RECOVERY_MAX_S = 30.0  # a run resumes within 30 s of its worker's death
RATE = 20.0  # calls/s configured for http.get
RATE_WINDOW_S = 10.0
EXIT_FAILED, EXIT_ERROR = 1, 2
ONE_STEP = {"plan": [{"final": "ok"}]}
HOST = socket.gethostname()
STATS_RUNS = "fleet:stats:runs"  # worker.keys.Keys().stats_runs()

CONFIG: dict[str, Any] = {
    # caps high enough for looping runs; every run still has a budget of its own
    "runtime": {
        "env": {"AGENT_MAX_STEPS": 100_000, "AGENT_MAX_TOOL_CALLS": 100_000, "AGENT_MAX_SECONDS": 300}
    },
    "tools": {
        "rate_limits": {"http.get": f"{RATE:g}/s"},
        # the per-process bulkhead (default 8) must not refuse the bench's own concurrency
        "max_concurrency": {"default": 8, "test.sleep": 100, "http.get": 32},
    },
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- processes -----------------------------------------------------------------------------------------


@dataclass
class Workers:
    """The fleet's and the baselines' workers, started with names the bench knows (for control)."""

    fleet: Fleet
    baselines: Baselines
    agents: list[tuple[Proc, str]] = field(default_factory=list)
    tools: list[Proc] = field(default_factory=list)
    bare: list[tuple[Proc, str]] = field(default_factory=list)

    def start_agents(self, count: int, concurrency: int, timeout_s: float = 120) -> list[tuple[Proc, str]]:
        """`count` agent workers at once (`fleet worker --concurrency C`), waited for together."""
        started = []
        for _ in range(count):
            name = f"agent-{uuid.uuid4().hex[:6]}@{HOST}"
            argv = ["worker", "--concurrency", str(concurrency), "-n", name, "--without-mingle"]
            started.append((self.fleet.spawn("worker", *argv), name))
        for proc, _ in started:
            wait_for(lambda p=proc: " ready." in p.text(), timeout_s, f"worker did not start:\n{proc.text()}")
        self.agents += started
        return started

    def start_tools(self, count: int, timeout_s: float = 120) -> None:
        """`count` tool workers (`fleet tool-worker`, its defaults: threads, 32, every tool queue)."""
        started = []
        for _ in range(count):
            name = f"tool-{uuid.uuid4().hex[:6]}@{HOST}"
            started.append(self.fleet.spawn("tool-worker", "tool-worker", "-n", name, "--without-mingle"))
        for proc in started:
            wait_for(
                lambda p=proc: " ready." in p.text(), timeout_s, f"tool worker did not start:\n{proc.text()}"
            )
        self.tools += started

    def start_bare(self, count: int, concurrency: int, timeout_s: float = 120) -> None:
        """Bare prefork workers, shaped like bench_core's (and like `fleet worker`)."""
        started = []
        for _ in range(count):
            name = f"bare-{uuid.uuid4().hex[:6]}@{HOST}"
            proc = self.baselines.spawn(
                "bare-worker",
                "-m", "celery", "-A", "bench.bare_app", "worker", "-Q", BARE_QUEUE, "--pool", "prefork",
                "--concurrency", str(concurrency), "-n", name, "--without-mingle", "--loglevel", "INFO",
            )  # fmt: skip
            started.append((proc, name))
        for proc, _ in started:
            wait_for(
                lambda p=proc: " ready." in p.text(), timeout_s, f"bare worker did not start:\n{proc.text()}"
            )
        self.bare += started

    def stop_agents(self, hard: bool = False) -> None:
        for proc, _ in self.agents:
            kill_group(proc) if hard else self.fleet.stop_proc(proc)
        self.agents = []

    def stop_tools(self) -> None:
        for proc in self.tools:
            kill_group(proc)  # tool threads may sit in 30 s test.sleep calls nobody waits for
        self.tools = []

    def stop_bare(self) -> None:
        for proc, _ in self.bare:
            self.baselines.stop(proc)
        self.bare = []


def kill_group(proc: Proc) -> None:
    """SIGKILL a process group the bench started, and reap it."""
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=10)


def set_consuming(app: Celery, queue: str, names: list[str], on: bool) -> None:
    """Pause or resume `queue` on the named workers (Celery remote control), checking every reply."""
    control = app.control.add_consumer if on else app.control.cancel_consumer
    replies = control(queue, destination=names, reply=True, timeout=10)
    answered = {name for reply in replies or [] for name in reply}
    if answered != set(names):
        raise RuntimeError(f"{'add' if on else 'cancel'}_consumer({queue}): replies {replies}")


# -- run records ---------------------------------------------------------------------------------------


def run_times(r: redis.Redis, run_ids: list[str]) -> list[dict[str, Any]]:
    """status and server timestamps of runs, straight from their records (one pipeline)."""
    pipe = r.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hmget(
            f"fleet:run:{run_id}", ["status", "stop_reason", "created_ts", "started_ts", "finished_ts"]
        )
    out = []
    for run_id, (status, stop_reason, created, started, finished) in zip(
        run_ids, pipe.execute(), strict=True
    ):
        out.append(
            {
                "id": run_id,
                "status": status,
                "stop_reason": stop_reason,
                "created": float(created) if created else None,
                "started": float(started) if started else None,
                "finished": float(finished) if finished else None,
            }
        )
    return out


def wait_ended(r: redis.Redis, run_ids: list[str], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        records = run_times(r, run_ids)
        if all(rec["status"] in TERMINAL for rec in records):
            return records
        if time.monotonic() > deadline:
            left = [rec for rec in records if rec["status"] not in TERMINAL]
            raise RuntimeError(f"{len(left)} runs did not end within {timeout_s:g} s, e.g. {left[:2]}")
        time.sleep(0.05)


def submit_all(fleet: Fleet, bodies: list[dict[str, Any]]) -> list[str]:
    ids = []
    with fleet.client() as http:
        for body in bodies:
            resp = http.post("/v1/runs", json=body)
            if resp.status_code != 202:
                raise RuntimeError(f"POST /v1/runs answered {resp.status_code}: {resp.text}")
            ids.append(resp.json()["id"])
    return ids


# -- 2. throughput ---------------------------------------------------------------------------------------


@dataclass
class Throughput:
    fleet_meter: Meter  # resource use of the measured drains
    bare_meter: Meter
    n: int  # runs (tasks) per side, all rounds
    fleet_runs: int = 0  # completions counted (n - 1 per round: from the first to the last)
    fleet_s: float = 0.0  # first to last completion, summed over rounds
    fleet_from_resume_s: float = 0.0
    bare_tasks: int = 0
    bare_s: float = 0.0
    bare_from_resume_s: float = 0.0

    @property
    def fleet_rate(self) -> float:
        return self.fleet_runs / self.fleet_s

    @property
    def bare_rate(self) -> float:
        return self.bare_tasks / self.bare_s


def fleet_drain(
    fleet: Fleet, fleet_app: Celery, names: list[str], n: int, meter: Meter | None = None
) -> tuple[int, float, float]:
    """Queue n 1-step runs with the agent workers paused, release them; (n-1, first→last end, resume→last)."""
    set_consuming(fleet_app, "agents", names, on=False)
    ids = submit_all(fleet, [{"agent": "scripted", "input": ONE_STEP}] * n)
    field_ = "runs|succeeded|finish"  # counted by the run store as each run ends
    base = int(fleet.r.hget(STATS_RUNS, field_) or 0)
    with meter.over() if meter else contextlib.nullcontext():
        resumed = time.time()
        set_consuming(fleet_app, "agents", names, on=True)
        # one cheap command per poll, so the bench's own polling costs Redis next to nothing
        wait_for(lambda: int(fleet.r.hget(STATS_RUNS, field_) or 0) >= base + n, 300, "runs did not end")
    records = wait_ended(fleet.r, ids, 60)
    if any(rec["status"] != "succeeded" for rec in records):
        bad = [rec for rec in records if rec["status"] != "succeeded"]
        raise RuntimeError(f"a throughput run did not succeed: {bad[:2]}")
    ends = sorted(rec["finished"] for rec in records)
    return n - 1, ends[-1] - ends[0], ends[-1] - resumed


def bare_drain(
    bare_app: Celery, names: list[str], n: int, meter: Meter | None = None
) -> tuple[int, float, float]:
    """The same for n `bare.noop` tasks: ends are the results' `date_done`."""
    set_consuming(bare_app, BARE_QUEUE, names, on=False)
    noop = bare_app.tasks[NOOP_TASK]
    results = [noop.delay() for _ in range(n)]
    keys = [f"celery-task-meta-{result.id}" for result in results]
    r = redis.Redis.from_url(bare_app.conf.broker_url, socket_timeout=15)
    try:
        with meter.over() if meter else contextlib.nullcontext():
            resumed = time.time()
            set_consuming(bare_app, BARE_QUEUE, names, on=True)
            wait_for(lambda: r.exists(*keys) >= n, 300, "bare tasks did not end")
    finally:
        r.close()
    ends = []
    for result in results:
        if result.get(timeout=60) != "ok":
            raise RuntimeError("bare.noop did not return 'ok'")
        done = result.date_done
        if done is None:
            raise RuntimeError(f"bare.noop {result.id} has no date_done")
        ends.append(done.timestamp())
    ends.sort()
    return n - 1, ends[-1] - ends[0], ends[-1] - resumed


def measure_drain(
    fleet: Fleet, fleet_app: Celery, bare_app: Celery, workers: Workers, n: int, rounds: int
) -> Throughput:
    fleet_names = [name for _, name in workers.agents]
    bare_names = [name for _, name in workers.bare]
    out = Throughput(
        fleet_meter=Meter(fleet.r, {"workers": [proc.popen.pid for proc, _ in workers.agents]}),
        bare_meter=Meter(fleet.r, {"workers": [proc.popen.pid for proc, _ in workers.bare]}),
        n=n * rounds,
    )
    # warm-up: every pool process has run a task (imports and clients made) on both sides
    fleet_drain(fleet, fleet_app, fleet_names, 20)
    bare_drain(bare_app, bare_names, 20)
    for i in range(rounds):
        for side in ("bare", "fleet") if i % 2 == 0 else ("fleet", "bare"):
            if side == "fleet":
                done, span, from_resume = fleet_drain(fleet, fleet_app, fleet_names, n, out.fleet_meter)
                out.fleet_runs += done
                out.fleet_s += span
                out.fleet_from_resume_s += from_resume
            else:
                done, span, from_resume = bare_drain(bare_app, bare_names, n, out.bare_meter)
                out.bare_tasks += done
                out.bare_s += span
                out.bare_from_resume_s += from_resume
    out.fleet_meter.idle(3.0)
    out.bare_meter.idle(3.0)
    return out


# -- 3. per-step overhead ------------------------------------------------------------------------------


def measure_step_overhead(fleet: Fleet, pairs: int) -> dict[str, float]:
    """(median run time of 11 steps - of 1 step) / 10, for think-time steps and echo steps."""
    kinds = {"sleep": {"sleep": 0}, "echo": {"tool": "echo", "args": {"n": 1}}}
    times: dict[tuple[str, int], list[float]] = {(k, n): [] for k in kinds for n in (1, 11)}
    for i in range(pairs + 1):  # the first round is a warm-up
        order = [(k, n) for k in kinds for n in (1, 11)]
        if i % 2:
            order.reverse()
        for kind, steps in order:
            run_id = submit_all(fleet, [{"agent": "scripted", "input": {"plan": [kinds[kind]] * steps}}])[0]
            (rec,) = wait_ended(fleet.r, [run_id], 60)
            if rec["status"] != "succeeded":
                raise RuntimeError(f"step-overhead run {run_id} ended {rec['status']}")
            if i:
                times[(kind, steps)].append(rec["finished"] - rec["started"])
    med = statistics.median
    return {k: (med(times[(k, 11)]) - med(times[(k, 1)])) / 10 * 1000 for k in kinds} | {
        f"{k}_1": med(times[(k, 1)]) * 1000 for k in kinds
    }


# -- 4. rate limiter accuracy ------------------------------------------------------------------------


@dataclass
class RateResult:
    observed: float
    in_window: int
    total: int
    runs: int


def measure_rate(fleet: Fleet, runs: int) -> RateResult:
    """Runs looping http.get (limited to RATE/s fleet-wide) against a counting server."""
    server = CountingServer()
    try:
        plan = {"plan": [{"tool": "http.get", "args": {"url": server.url("/ok")}}], "loop": True}
        seconds = RATE_WINDOW_S + 5
        body = {"agent": "scripted", "input": plan, "budgets": {"max_seconds": seconds}}
        ids = submit_all(fleet, [body] * runs)
        records = wait_ended(fleet.r, ids, seconds + 60)
        with server.lock:
            stamps = sorted(req["t"] for req in server.requests)
        if len(stamps) < 2:
            raise RuntimeError(f"the counting server got {len(stamps)} requests")
        # steady state: skip the first 2 s (runs still starting), then a fixed window
        start = stamps[0] + 2.0
        end = start + RATE_WINDOW_S
        if stamps[-1] < end:
            raise RuntimeError("the runs stopped calling before the window ended")
        in_window = sum(1 for t in stamps if start <= t < end)
        bad = [rec for rec in records if rec["stop_reason"] != "max_seconds"]
        if bad:
            raise RuntimeError(f"rate runs ended otherwise than max_seconds: {bad[:2]}")
        return RateResult(in_window / RATE_WINDOW_S, in_window, len(stamps), runs)
    finally:
        server.close()


# -- 5. recovery ------------------------------------------------------------------------------------------


@dataclass
class Recovery:
    resumed_s: float  # kill -> the resumed execution began the interrupted step (server time)
    finished_s: float  # kill -> finished_at
    seen_s: float  # kill -> the bench saw `attempts` become 2 (client polling)


def measure_recovery(fleet: Fleet, workers: Workers, think_s: float = 3.0) -> Recovery:
    """SIGKILL the process group of the agent worker that runs a run in a think step."""
    plan = {"plan": [{"sleep": 0.1}, {"sleep": think_s}, {"final": "ok"}]}
    run_id = submit_all(fleet, [{"agent": "scripted", "input": plan}])[0]
    key = f"fleet:run:{run_id}"
    wait_for(lambda: int(fleet.r.hget(key, "steps") or 0) >= 2, 30, "the recovery run never reached step 2")
    time.sleep(0.3)  # well inside the think step
    token = fleet.r.get(f"{key}:lease")
    if not token:
        raise RuntimeError("the recovery run holds no lease")
    pid = int(str(token).split(":")[1])
    victim = next(
        (
            (proc, name)
            for proc, name in workers.agents
            if pid in {c.pid for c in psutil.Process(proc.popen.pid).children(recursive=False)}
        ),
        None,
    )
    if victim is None:
        raise RuntimeError(f"no agent worker of the bench has the lease holder {pid} in its pool")
    killed_at = time.time()
    kill_group(victim[0])  # the main process and its pool, at once
    workers.agents.remove(victim)
    seen = None
    deadline = time.monotonic() + RECOVERY_MAX_S + 60
    while time.monotonic() < deadline:
        if seen is None and int(fleet.r.hget(key, "attempts") or 0) >= 2:
            seen = time.time()
        if fleet.r.hget(key, "status") in TERMINAL:
            break
        time.sleep(0.02)
    with fleet.client() as http:
        run = http.get(f"/v1/runs/{run_id}", params={"steps": "true"}).json()
    if run["status"] != "succeeded" or run["usage"]["steps"] != 3:
        raise RuntimeError(f"the recovery run ended {run['status']} with {run['usage']}: {run.get('steps')}")
    resumed_step = next(s for s in run["steps"] if s["step"] == 2)  # only the resumed execution logs it
    finished = ts(run["finished_at"])
    return Recovery(
        finished - resumed_step["duration_ms"] / 1000 - killed_at,
        finished - killed_at,
        (seen or finished) - killed_at,
    )


# -- 6. kill-all -----------------------------------------------------------------------------------------


@dataclass
class KillAll:
    stop_s: list[float]
    runs: int
    tool_waiting: int
    processes: int


def measure_kill_all(fleet: Fleet, runs: int, tool_runs: int, processes: int) -> KillAll:
    """`runs` running runs (`tool_runs` of them waiting on a 30 s tool call), then SET fleet:kill:all."""
    tool_plan = {"plan": [{"tool": "test.sleep", "args": {"seconds": 30}}]}
    think_plan = {"plan": [{"sleep": 0.5}], "loop": True}
    bodies = [{"agent": "scripted", "input": tool_plan if i < tool_runs else think_plan} for i in range(runs)]
    ids = submit_all(fleet, bodies)
    tool_ids = ids[:tool_runs]

    def all_running() -> bool:
        if any(rec["status"] != "running" for rec in run_times(fleet.r, ids)):
            return False
        pipe = fleet.r.pipeline(transaction=False)
        for run_id in tool_ids:  # the gateway has sent the call and waits for its reply
            pipe.hexists(f"fleet:call:{run_id}:1:0", "attempt")
        return all(pipe.execute())

    wait_for(all_running, 120, "not every kill-all run got running")
    time.sleep(1.0)  # the tool calls are taken by the tool workers; think steps cycle
    if not all_running():
        raise RuntimeError("a kill-all run ended before the kill")
    killed_at = time.time()
    fleet.r.set("fleet:kill:all", "bench kill-all")
    records = wait_ended(fleet.r, ids, 60)
    fleet.r.delete("fleet:kill:all")
    wrong = [rec for rec in records if (rec["status"], rec["stop_reason"]) != ("stopped", "killed")]
    if wrong:
        raise RuntimeError(f"{len(wrong)} runs did not stop as killed: {wrong[:2]}")
    return KillAll([rec["finished"] - killed_at for rec in records], runs, tool_runs, processes)


def affordable_processes(sample: list[Proc], wanted: int) -> int:
    """How many agent pool processes fit in half the available memory (private memory of the
    largest pool process seen so far, doubled for margin)."""
    children = [c for proc in sample for c in psutil.Process(proc.popen.pid).children()]
    if not children:
        return wanted
    private = max(c.memory_full_info().uss for c in children)
    return max(1, min(wanted, int(psutil.virtual_memory().available * 0.5 / (2 * private))))


# -- main -----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--latency-runs", type=int, default=200, help="measured latency samples per side (200)")
    p.add_argument("--throughput-runs", type=int, default=300, help="runs (tasks) per throughput round (300)")
    p.add_argument("--throughput-rounds", type=int, default=2, help="throughput rounds per side (2)")
    p.add_argument("--concurrency", type=int, default=2, help="processes per agent and bare worker (2)")
    p.add_argument("--step-pairs", type=int, default=15, help="runs of each length for step overhead (15)")
    p.add_argument("--rate-runs", type=int, default=6, help="concurrent runs calling http.get (6)")
    p.add_argument("--recoveries", type=int, default=2, help="worker deaths measured (2)")
    p.add_argument("--kill-runs", type=int, default=100, help="running runs for kill-all (100)")
    p.add_argument("--kill-tool-runs", type=int, default=30, help="of them, waiting on a tool call (30)")
    p.add_argument("--kill-workers", type=int, default=4, help="agent workers for kill-all (4)")
    p.add_argument("--api-seconds", type=float, default=10, help="API throughput seconds per side (10)")
    p.add_argument("--connections", type=int, default=16, help="API throughput client connections (16)")
    p.add_argument(
        "--bare-events",
        action="store_true",
        help="give the bare Celery app task events (default: Celery's default, off; the fleet's runs send "
        "them only with observability.run_task_events)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        server = RedisServer()
        stack.callback(server.close)
        fleet = Fleet(server, CONFIG, {"FLEET_MAX_QUEUED": str(10**9), "FLEET_MAX_QUEUED_PER_TENANT": "0"})
        stack.callback(fleet.close)
        baselines = Baselines(
            f"redis://127.0.0.1:{server.port}/1", concurrency=args.concurrency, events=args.bare_events
        )
        stack.callback(baselines.close)
        workers = Workers(fleet, baselines)
        try:
            say("starting redis-server, the fleet (2 agent workers, 1 tool worker) and 2 bare workers …")
            fleet_api = fleet.start_api()
            bare_api = baselines.spawn_api()
            workers.start_agents(2, args.concurrency)
            workers.start_tools(1)
            workers.start_bare(2, args.concurrency)
            wait_for(lambda: _serves(baselines.api_url), 60, f"bare API did not start:\n{bare_api.text()}")
            from worker.celery_app import make_app as make_fleet_app
            from worker.settings import Settings

            fleet_app = make_fleet_app(Settings(REDIS_URL=server.url))
            bare_app = make_bare_app(baselines.redis_url, events=args.bare_events)

            say(f"1/7 latency: {args.latency_runs} samples per side …")
            lat = measure_latency(fleet, bare_app, args.latency_runs, warmup=20)
            say(f"2/7 throughput: {args.throughput_rounds} x {args.throughput_runs} per side …")
            thr = measure_drain(
                fleet, fleet_app, bare_app, workers, args.throughput_runs, args.throughput_rounds
            )
            workers.stop_bare()
            say(f"3/7 per-step overhead: {args.step_pairs} runs of each length …")
            steps = measure_step_overhead(fleet, args.step_pairs)

            say("4/7 rate limiter: 3 agent workers, 3 tool workers …")
            workers.start_agents(1, args.concurrency)
            workers.start_tools(2)
            rate = measure_rate(fleet, args.rate_runs)

            say(f"5/7 recovery: {args.recoveries} worker deaths …")
            recoveries = []
            for _ in range(args.recoveries):
                recoveries.append(measure_recovery(fleet, workers))
                workers.start_agents(1, args.concurrency)  # back to three workers

            kill_runs = affordable_processes([proc for proc, _ in workers.agents], args.kill_runs)
            kill_concurrency = -(-kill_runs // args.kill_workers)  # ceil: one process per running run
            workers.stop_agents()
            processes = args.kill_workers * kill_concurrency
            say(f"6/7 kill-all: {kill_runs} runs, {args.kill_workers} agent workers x {kill_concurrency} …")
            workers.start_agents(args.kill_workers, kill_concurrency, timeout_s=300)
            tool_runs = min(args.kill_tool_runs, kill_runs)
            kill = measure_kill_all(fleet, kill_runs, tool_runs, processes)
            workers.stop_agents()
            workers.stop_tools()

            say(f"7/7 API throughput: {args.connections} connections, {args.api_seconds:g} s per side …")
            fleet_load, bare_load = measure_throughput(
                (fleet.api_port, fleet_api.popen.pid),
                (baselines.api_port, bare_api.popen.pid),
                args.connections,
                args.api_seconds,
                min(3.0, args.api_seconds / 2),
            )
            versions = versions_line(server)
        except Exception as exc:
            print(f"bench_fleet: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(fleet.logs(), file=sys.stderr)
            for proc in baselines.procs:
                print(f"==== {proc.name} ====\n{proc.text()[-4000:]}", file=sys.stderr)
            return EXIT_ERROR

    p50 = statistics.median
    rate_error = (rate.observed - RATE) / RATE
    worst_recovery = max(rec.resumed_s for rec in recoveries)
    rows = [
        Row("1-step run latency p50 (ms)", p50(lat.fleet_ms), p50(lat.bare_ms)),
        Row("1-step run latency p99 (ms)", p99(lat.fleet_ms), p99(lat.bare_ms)),
        Row(f"throughput, 1-step runs/s (2 workers x {args.concurrency})", thr.fleet_rate, thr.bare_rate,
            f"≥ {THROUGHPUT_RATIO_MIN:g}x", lambda _v, ratio: ratio >= THROUGHPUT_RATIO_MIN),
        Row("per-step overhead, `{\"sleep\": 0}` step (ms)", steps["sleep"], digits=2),
        Row("per-step overhead, `echo` tool step (ms)", steps["echo"], digits=2),
        Row(f"kill-all time-to-stop p50 (s), {kill.runs} runs", p50(kill.stop_s), digits=3),
        Row(f"kill-all time-to-stop p99 (s), {kill.runs} runs", p99(kill.stop_s),
            required=f"≤ {KILL_P99_MAX_S:g} s", check=lambda v, _r: v <= KILL_P99_MAX_S, digits=3),
        Row("rate limiter, observed http.get calls/s (3 workers)", rate.observed, RATE,
            f"within ±{RATE_ERROR_MAX:.0%}", lambda v, _r: abs(v - RATE) / RATE <= RATE_ERROR_MAX,
            target=f"{rate_error:+.1%} vs {RATE:g}/s", digits=2),
        Row(f"recovery after a worker's death (s), worst of {len(recoveries)}", worst_recovery,
            required=f"≤ {RECOVERY_MAX_S:g} s", check=lambda v, _r: v <= RECOVERY_MAX_S, digits=2),
        Row("API throughput, POST /v1/runs (req/s)", fleet_load.rps, bare_load.rps),
    ]  # fmt: skip
    fm, bm = thr.fleet_meter, thr.bare_meter
    cost_rows = [
        Row("worker CPU per run / task (ms)", fm.per("workers", thr.n), bm.per("workers", thr.n), digits=2),
        Row("Redis commands per run / task", fm.per("redis_calls", thr.n, 1),
            bm.per("redis_calls", thr.n, 1)),
        Row("Redis server CPU per run / task (ms)", fm.per("redis_cpu", thr.n), bm.per("redis_cpu", thr.n),
            digits=3),
    ]  # fmt: skip
    command = " ".join(["bench/bench_fleet.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"# agentfleet fleet benchmark — {started:%Y-%m-%d %H:%M} UTC\n")
    print(f"`{command}`\n")
    print(render(rows, header="ratio / target"))
    print()
    print(
        "Where a throughput run's cost goes, over the measured drains (informational): the agent "
        "workers' or bare workers' process trees (main + pool); Redis commands (INFO commandstats) and "
        "CPU server-wide; idle use (polling, heartbeats; measured for 3 s) subtracted:\n"
    )
    print(render(cost_rows))
    print()
    print(machine_line(load_before))
    print(versions)
    print(
        f"- latency: {len(lat.fleet_ms)} sequential samples per side, interleaved "
        f'(bench_core.measure_latency): `POST /v1/runs` + `GET ?wait` of `{{"plan": [{{"final": "ok"}}]}}` '
        f"vs `noop.delay().get()`; 2 agent workers and 2 bare prefork workers, {args.concurrency} processes "
        f"each; agentfleet p50 by part: created→started {p50(lat.queued_ms):.1f} ms, started→finished "
        f"{p50(lat.loop_ms):.1f} ms"
    )
    print(
        f"- throughput: {args.throughput_rounds} rounds per side of {args.throughput_runs} runs (tasks) "
        f"queued while the 2 workers' consumers were paused (`cancel_consumer`), then released "
        f"(`add_consumer`); rate = completions / (last - first completion), server timestamps "
        f"(`finished_at`, `date_done`). From the release to the last completion: agentfleet "
        f"{thr.fleet_runs / thr.fleet_from_resume_s:.1f}/s, bare "
        f"{thr.bare_tasks / thr.bare_from_resume_s:.1f}/s. Both sides: prefork, acks_late, prefetch 1; "
        f"run task events {'on' if ObservabilitySection().run_task_events else 'off'} for agentfleet "
        f"(its default, observability.run_task_events), {'on' if args.bare_events else 'off'} for bare"
    )
    print(
        f"- per-step overhead: {args.step_pairs} runs each of 1 and 11 steps, interleaved, one at a time; "
        f"run time = finished_at - started_at; 1-step run time p50: sleep {steps['sleep_1']:.1f} ms, "
        f"echo {steps['echo_1']:.1f} ms"
    )
    print(
        f"- kill-all: {kill.runs} running runs on {kill.processes} agent processes "
        f"({args.kill_workers} workers), "
        f"{kill.tool_waiting} of them waiting on a 30 s `test.sleep` call, the rest looping 0.5 s think "
        f"steps; time-to-stop = finished_at - the moment before `SET fleet:kill:all` (same host clock); "
        f"max {max(kill.stop_s):.3f} s; all ended `stopped`/`killed`"
        + (
            f" (asked for {args.kill_runs} runs: the available memory allowed {kill.runs} agent processes)"
            if kill.runs < args.kill_runs
            else ""
        )
    )
    print(
        f'- rate limiter: `tools.rate_limits: {{http.get: "{RATE:g}/s"}}`, {rate.runs} runs looping '
        f"`http.get` on 3 agent workers and 3 tool workers; {rate.in_window} requests reached the "
        f"counting server in a {RATE_WINDOW_S:g} s window (from 2 s after the first; {rate.total} in all)"
    )
    print(
        "- recovery: a run in a 3 s think step; SIGKILL of its agent worker's process group (main + pool) "
        "with two other agent workers running; time to the resumed execution's start of the step "
        "(finished_at - the resumed step's duration_ms - the kill): "
        + ", ".join(f"{rec.resumed_s:.2f} s (finished after {rec.finished_s:.2f} s)" for rec in recoveries)
        + ". Bare Celery: the message is redelivered only after `visibility_timeout` "
        "(3600 s in both apps) plus the restore sweep — not measured"
    )
    print(
        f"- API throughput: bench_core.measure_throughput, {args.connections} keep-alive connections, "
        f"{fleet_load.seconds:.1f} s vs {bare_load.seconds:.1f} s in alternating rounds, workers stopped; "
        f"API CPU per accepted POST: agentfleet {fleet_load.cpu_ms_per_request:.2f} ms, bare "
        f"{bare_load.cpu_ms_per_request:.2f} ms"
    )
    failed = [row.metric for row in rows if row.verdict == "FAIL"]
    if failed:
        print(f"\nbench_fleet: requirement failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _serves(url: str) -> bool:
    try:
        httpx.get(f"{url}/docs", timeout=1)
        return True
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
