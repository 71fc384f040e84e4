"""A Sentinel failover's times, and what waiting for a replica costs a POST (issue 15).

    .venv/bin/python bench/bench_failover.py [--failovers N] [--posts M] [--rounds R]
                                             [--round-s S] [--connections C]

Needs `redis-server` on PATH, as the tests do. About 3 minutes on 2 cores (default arguments).

1. Failover (N times, each on a fresh setup): a primary, two replicas and three Sentinels
   (`down-after-milliseconds` 1000) on loopback, the fleet (API, agent worker, tool worker) on
   the redis+sentinel:// URL, the load of tests/failover_load.py (parked runs, write runs, a
   burst right before the kill), then SIGKILL of the primary. Prints the times from the kill
   to: the Sentinels naming a new primary, a new run answered 202, that run ended; and the
   accepted runs lost, failed, and the writes sent twice (all must be 0). Goal: a new run
   accepted and finished within 15 s.
2. WAIT's cost, in the same run: two `fleet api` processes on one Sentinel setup (a primary
   and two replicas), one with `redis.wait_replicas` 1 (the Sentinel default: a run's creation
   waits for one replica before its 202) and one with 0; no worker, every run stays queued.
   Rounds alternate the sides (the order flips each round). A side's round: M POSTs back to
   back on one keep-alive connection (latency p50 / p99), then C connections POSTing back to
   back for S seconds (throughput). Prints both sides and their ratio.

Exits 1 when a failover lost, failed or wrote twice, or missed the 15 s goal; 2 when the bench
could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.bench_core import percentile  # noqa: E402
from bench.bench_gateway import machine_line, versions_line  # noqa: E402
from tests.failover_load import CONFIG, Failover, failover_under_load  # noqa: E402
from tests.harness import KEY_T1, CountingServer, Fleet, SentinelGroup  # noqa: E402

EXIT_FAILED = 1
EXIT_ERROR = 2
GOAL_S = 15.0
RUN_BODY = {"agent": "scripted", "input": {"plan": [{"final": "ok"}]}}


def one_failover() -> Failover:
    group = SentinelGroup(replicas=2, sentinels=3, down_after_ms=1000)
    server = CountingServer()
    fleet = Fleet(group.primary, CONFIG, redis_url=group.url)
    try:
        fleet.start(workers=1, concurrency=3)
        return failover_under_load(fleet, group, server)
    finally:
        fleet.close()
        server.close()
        group.close()


def failover_problems(outcome: Failover) -> list[str]:
    lost = [rid for rid in outcome.accepted if rid not in outcome.runs]
    failed = [rid for rid, run in outcome.runs.items() if run["status"] != "succeeded"]
    twice = [key for key, n in outcome.writes_by_key.items() if n > 1]
    problems = []
    if lost:
        problems.append(f"{len(lost)} accepted runs lost")
    if failed:
        problems.append(f"{len(failed)} runs did not succeed")
    if twice:
        problems.append(f"{len(twice)} writes sent twice")
    if outcome.new_status != "succeeded" or outcome.finished_s > GOAL_S:
        problems.append(
            f"new run {outcome.new_status} after {outcome.finished_s:.1f} s (goal {GOAL_S:.0f} s)"
        )
    return problems


def latency_ms(url: str, posts: int) -> list[float]:
    samples = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_T1}"}, timeout=30) as client:
        for _ in range(posts):
            started = time.perf_counter()
            resp = client.post("/v1/runs", json=RUN_BODY)
            samples.append((time.perf_counter() - started) * 1000)
            if resp.status_code != 202:
                raise RuntimeError(f"POST answered {resp.status_code}: {resp.text[:300]}")
    return samples


async def throughput(url: str, connections: int, seconds: float) -> float:
    """POSTs answered 202 per second, `connections` clients back to back for `seconds`."""
    done = 0
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {KEY_T1}"}

    async def client_loop() -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            while time.monotonic() < deadline:
                resp = await client.post("/v1/runs", json=RUN_BODY)
                if resp.status_code != 202:
                    raise RuntimeError(f"POST answered {resp.status_code}: {resp.text[:300]}")
                done += 1

    started = time.monotonic()
    await asyncio.gather(*(client_loop() for _ in range(connections)))
    return done / (time.monotonic() - started)


def wait_cost(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]], str]:
    """POST latency samples and throughputs per side ("wait 1", "wait 0") on one Sentinel setup."""
    group = SentinelGroup(replicas=2, sentinels=3, down_after_ms=5000)
    env = {"FLEET_MAX_QUEUED": str(10**9), "FLEET_MAX_QUEUED_PER_TENANT": "0"}
    sides = {
        "wait 1": Fleet(
            group.primary, CONFIG, {**env, "FLEET_REDIS__WAIT_REPLICAS": "1"}, redis_url=group.url
        ),
        "wait 0": Fleet(
            group.primary, CONFIG, {**env, "FLEET_REDIS__WAIT_REPLICAS": "0"}, redis_url=group.url
        ),
    }
    latencies: dict[str, list[float]] = {name: [] for name in sides}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    try:
        versions = versions_line(group.primary)
        for fleet in sides.values():
            fleet.start_api()
        for fleet in sides.values():  # warm-up
            latency_ms(fleet.url, 50)
        order = list(sides)
        for _ in range(args.rounds):
            for name in order:
                latencies[name] += latency_ms(sides[name].url, args.posts)
                rates[name].append(asyncio.run(throughput(sides[name].url, args.connections, args.round_s)))
            order.reverse()
    finally:
        for fleet in sides.values():
            fleet.close()
        group.close()
    return latencies, rates, versions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--failovers", type=int, default=1)
    parser.add_argument("--posts", type=int, default=200, help="latency POSTs per side and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--round-s", type=float, default=5.0, help="throughput seconds per side and round")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        outcomes = [one_failover() for _ in range(args.failovers)]
        latencies, rates, versions = wait_cost(args)
    except Exception as exc:  # the bench could not run: say why
        print(f"bench_failover: could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR

    print(f"## Sentinel failover ({started})\n")
    print(machine_line(load_before))
    print(versions)
    print(
        "\n| failover | new primary | new run accepted | new run ended | accepted runs | lost "
        "| not succeeded | writes twice |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    problems = []
    for n, outcome in enumerate(outcomes, 1):
        lost = sum(rid not in outcome.runs for rid in outcome.accepted)
        failed = sum(run["status"] != "succeeded" for run in outcome.runs.values())
        twice = sum(count > 1 for count in outcome.writes_by_key.values())
        print(
            f"| {n} | {outcome.elected_s:.1f} s | {outcome.accepted_s:.1f} s | {outcome.finished_s:.1f} s "
            f"| {len(outcome.accepted)} | {lost} | {failed} | {twice} |"
        )
        problems += failover_problems(outcome)
    print(
        f"\nGoal: a new run accepted and ended within {GOAL_S:.0f} s of the kill, nothing lost, failed "
        "or written twice: "
        f"{'PASS' if not problems else 'FAIL: ' + '; '.join(problems)}"
    )

    print(
        f"\n## What WAIT 1 costs a POST ({args.rounds} rounds, {args.posts} POSTs and {args.round_s:.0f} s x "
        f"{args.connections} connections per side and round)\n"
    )
    print("| side | p50 | p99 | mean | throughput |")
    print("| --- | --- | --- | --- | --- |")
    summary = {}
    for name in latencies:
        p50, p99 = percentile(latencies[name], 50), percentile(latencies[name], 99)
        rate = statistics.median(rates[name])
        summary[name] = (p50, p99, rate)
        print(
            f"| {name} | {p50:.2f} ms | {p99:.2f} ms | {statistics.mean(latencies[name]):.2f} ms "
            f"| {rate:.0f} POST/s |"
        )
    (w50, w99, wrate), (n50, n99, nrate) = summary["wait 1"], summary["wait 0"]
    print(
        f"\nwait 1 / wait 0: latency p50 {w50 / n50:.2f}x, p99 {w99 / n99:.2f}x, "
        f"throughput {wrate / nrate:.2f}x"
    )
    print(json.dumps({"failovers": [o.finished_s for o in outcomes], "wait_cost": summary}))
    return EXIT_FAILED if problems else 0


if __name__ == "__main__":
    sys.exit(main())
