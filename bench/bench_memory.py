"""Memory of an agent worker's prefork pool, with the prefork preload off and on (issue 13, item 5).

    .venv/bin/python bench/bench_memory.py [--concurrency 4 32] [--waves N] [--think-s S]

Starts its own redis-server, `fleet api` and `fleet tool-worker`, then one `fleet worker` at a time
for each `--concurrency` C and each mode: `runtime.prefork_preload` false (the baseline: children
import and build what they need themselves, nothing frozen) and true (the default; worker/preload.py).
Each worker runs N waves of C runs of the scripted agent, `echo`, a think step of S seconds and
`final`; the think step keeps each child busy so that a wave's C runs land on C different children.
Then it reads the proportional set size (PSS, `psutil.Process.memory_full_info().pss`) of the
worker's main process and of each pool child. PSS divides a page shared by k processes by k, so the
sum over the processes is what the pool costs the machine.

Prints one Markdown table with the machine and the date. Exits 1 if a run did not succeed, 2 if
the bench itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.bench_gateway import machine_line, versions_line  # noqa: E402
from tests.harness import TERMINAL, Fleet, Proc, RedisServer  # noqa: E402
from worker.keys import Keys  # noqa: E402

MIB = 1024 * 1024
PRELOAD_ENV = "FLEET_RUNTIME__PREFORK_PRELOAD"
EXIT_FAILED, EXIT_ERROR = 1, 2
KEYS = Keys("fleet")
CONFIG: dict[str, Any] = {
    # a wave of 32 runs calls echo 32 times at once: the per-process bulkhead must not refuse it
    "tools": {"max_concurrency": {"default": 8, "echo": 64}},
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Sample:
    """The PSS of one worker's process tree after its runs."""

    concurrency: int
    preload: bool
    parent_bytes: int
    child_bytes: dict[int, int]  # by pid
    ran: set[int]  # the children that held runs

    @property
    def children_that_ran(self) -> int:
        return len(self.ran & self.child_bytes.keys())

    @property
    def total_bytes(self) -> int:
        return self.parent_bytes + sum(self.child_bytes.values())

    @property
    def mean_child_bytes(self) -> float:
        """The mean PSS of the children that ran runs (a child that ran none shares more)."""
        return statistics.fmean(b for pid, b in self.child_bytes.items() if pid in self.ran)


def pss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_full_info().pss)


def run_wave(fleet: Fleet, size: int, think_s: float) -> set[int]:
    """Submit `size` runs at once, wait until all succeed; the pids of the children that held them."""
    plan = [{"tool": "echo", "args": {"n": 1}}, {"sleep": think_s}, {"final": "ok"}]
    ids = [fleet.submit(input={"plan": plan})["id"] for _ in range(size)]
    holders: set[int] = set()
    deadline = time.monotonic() + 60 + think_s * size
    pending = set(ids)
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} runs did not end within the wave's time")
        for run_id in list(pending):
            token = fleet.r.get(KEYS.run_lease(run_id))
            if token:
                holders.add(int(token.split(":")[1]))  # host:pid:random (worker.run.lease.new_token)
            if fleet.r.hget(KEYS.run(run_id), "status") in TERMINAL:
                pending.discard(run_id)
        time.sleep(0.02)
    for run_id in ids:
        status = fleet.r.hget(KEYS.run(run_id), "status")
        if status != "succeeded":
            raise RuntimeError(f"run {run_id} ended {status}:\n{fleet.logs()}")
    return holders


def measure(fleet: Fleet, concurrency: int, preload: bool, waves: int, think_s: float) -> Sample:
    """Start one agent worker, run `waves` waves of `concurrency` runs, read its PSS, stop it."""
    fleet.env[PRELOAD_ENV] = "true" if preload else "false"
    worker: Proc = fleet.start_worker(concurrency)
    try:
        holders: set[int] = set()
        for _ in range(waves):
            holders |= run_wave(fleet, concurrency, think_s)
        time.sleep(1.0)  # the children's last lines and acks settle
        children = fleet.pool_children(worker)
        if len(children) != concurrency:
            raise RuntimeError(f"the worker has {len(children)} children, not {concurrency}")
        return Sample(
            concurrency=concurrency,
            preload=preload,
            parent_bytes=pss_bytes(worker.popen.pid),
            child_bytes={c.pid: pss_bytes(c.pid) for c in children},
            ran=holders,
        )
    finally:
        fleet.stop_proc(worker)
        fleet.procs.remove(worker)


def mib(n: float) -> str:
    return f"{n / MIB:.1f}"


def render(samples: list[Sample]) -> str:
    lines = [
        "| `--concurrency` | prefork preload | parent PSS (MiB) | mean PSS of a child that ran runs "
        "(MiB) | total PSS (MiB) | total, on / off | children that ran runs |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    off = {s.concurrency: s for s in samples if not s.preload}
    for s in samples:
        base = off.get(s.concurrency)
        ratio = f"{s.total_bytes / base.total_bytes:.2f}x" if s.preload and base else "—"
        lines.append(
            f"| {s.concurrency} | {'on' if s.preload else 'off'} | {mib(s.parent_bytes)} | "
            f"{mib(s.mean_child_bytes)} | {mib(s.total_bytes)} | {ratio} | "
            f"{s.children_that_ran}/{s.concurrency} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[4, 32], help="pool sizes (default 4 32)"
    )
    parser.add_argument("--waves", type=int, default=5, help="waves of C runs per worker (default 5)")
    parser.add_argument("--think-s", type=float, default=3.0, help="think step of each run (default 3.0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    samples: list[Sample] = []
    with contextlib.ExitStack() as stack:
        server = RedisServer()
        stack.callback(server.close)
        fleet = Fleet(server, CONFIG)
        stack.callback(fleet.close)
        try:
            say("starting redis-server, fleet api and fleet tool-worker …")
            fleet.start_api()
            fleet.start_tool_worker()
            for concurrency in args.concurrency:
                for preload in (False, True):
                    mode = "on" if preload else "off"
                    say(f"agent worker --concurrency {concurrency}, prefork preload {mode} …")
                    samples.append(measure(fleet, concurrency, preload, args.waves, args.think_s))
            versions = versions_line(server)
        except RuntimeError as exc:
            say(f"FAILED: {exc}")
            return EXIT_FAILED
        except Exception as exc:  # the bench could not run: say why, with the fleet's logs
            say(f"ERROR: {type(exc).__name__}: {exc}\n{fleet.logs()}")
            return EXIT_ERROR
    print(f"Prefork memory, {started:%Y-%m-%d %H:%M} UTC\n")
    print(render(samples))
    print()
    print(machine_line(load_before))
    print(versions)
    print(
        f"- each worker: {args.waves} waves of C runs (`echo`, a {args.think_s:g} s think step, `final`); "
        "one `fleet tool-worker` (defaults); PSS read after the last wave"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
