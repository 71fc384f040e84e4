"""The run history's queries on 1,000,000 archived runs in PostgreSQL.

    .venv/bin/python bench/bench_history_query.py [--runs N] [--samples S]

Starts a PostgreSQL of its own (tests/pg.py), creates the tables of worker/history/schema.py and
loads N runs (default 1,000,000) with COPY: 90 % belong to tenant t1, the rest to nine others;
20 agents; 90 % succeeded, 5 % failed, 4 % stopped, 1 % cancelled; metadata `customer` (1,000
values) and `env` (prod or staging); created over 90 days; a third of the runs spent tokens on a
model. Then it times S calls of each query of worker/history/query.py (the functions `GET /v1/runs`
and `GET /v1/usage` call, without HTTP) and prints p50 / p99 as a Markdown table.

Exit 1 when a page of 100 takes 50 ms or more at p99 (the issue's bound), 2 when the bench could
not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, create_engine, text  # noqa: E402

from tests.history_rows import history_rows, make_record  # noqa: E402
from tests.pg import PostgresServer  # noqa: E402
from worker.history import query, schema  # noqa: E402

PAGE_BOUND_S = 0.050
EXIT_FAILED, EXIT_ERROR = 1, 2
T0 = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
SPAN_S = 90 * 86400
STATUSES = [("succeeded", "finish")] * 90 + [("failed", "error")] * 5 + [("stopped", "max_steps")] * 4
STATUSES += [("cancelled", "cancelled")]


def generated(runs: int) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """The rows of `runs` runs, spread evenly over 90 days (deterministic: run i is always the same)."""
    for i in range(runs):
        status, stop_reason = STATUSES[i % len(STATUSES)]
        tenant = "t1" if i % 10 else f"t{2 + (i // 10) % 9}"
        model = i % 3 == 0
        record = make_record(
            tenant,
            f"agent-{i % 20}",
            created_at=T0 + dt.timedelta(seconds=SPAN_S * i / runs),
            status=status,
            stop_reason=stop_reason,
            metadata={"customer": f"c{i % 1000}", "env": "prod" if i % 2 else "staging"},
            steps=1 + i % 5,
            tool_calls=i % 3,
            tokens=900 if model else 0,
            cost_usd=0.00054 if model else 0.0,
            run_id=f"{i:032x}",
        )
        yield history_rows(record, models={"gpt-4o-mini": (900, 540)} if model else {})


def _copy_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict) else value


def load(engine: Engine, runs: int, batch: int = 50_000) -> float:
    """COPY the runs into the tables; returns the seconds it took (indexes built as rows arrive)."""
    started = time.monotonic()
    tables = [schema.runs, schema.run_steps, schema.run_metadata, schema.run_usage]
    rows_iter = generated(runs)
    done = 0
    while done < runs:
        merged: dict[str, list[dict[str, Any]]] = {t.name: [] for t in tables}
        for rows in (next(rows_iter) for _ in range(min(batch, runs - done))):
            for name, items in rows.items():
                merged[name].extend(items)
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cur:  # type: ignore[attr-defined]
                for table in tables:
                    columns = [c.name for c in table.columns]
                    with cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in merged[table.name]:
                            copy.write_row([_copy_value(row.get(c)) for c in columns])
            raw.commit()
        finally:
            raw.close()
        done += min(batch, runs - done)
        print(f"loaded {done:,} runs ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return time.monotonic() - started


def timed(call: Callable[[], Any], samples: int) -> tuple[float, float, Any]:
    """p50 and p99 (seconds) of `samples` calls after 5 warm-up calls, and the last call's result."""
    result = None
    for _ in range(5):
        result = call()
    durations = []
    for _ in range(samples):
        started = time.perf_counter()
        result = call()
        durations.append(time.perf_counter() - started)
    durations.sort()
    p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))]
    return statistics.median(durations), p99, result


def cases(engine: Engine) -> list[tuple[str, bool, Callable[[], Any]]]:
    """(name, is a page of 100, call) of every query the bench times."""
    middle = query.encode_cursor(T0 + dt.timedelta(seconds=SPAN_S / 2), "f" * 32)
    near_end = query.encode_cursor(T0 + dt.timedelta(seconds=SPAN_S / 100), "f" * 32)
    prod = {"env": "prod"}
    month = (T0 + dt.timedelta(days=60)).date(), (T0 + dt.timedelta(days=89)).date()

    def page(**filters: Any) -> Callable[[], Any]:
        return lambda: query.list_runs(engine, "t1", limit=100, **filters)

    def ledger(tenant: str | None, group_by: str) -> Callable[[], Any]:
        return lambda: query.usage(engine, tenant, start=month[0], end=month[1], group_by=group_by)

    return [
        ("first page", True, page()),
        ("deep page (cursor at half the runs)", True, page(cursor=middle)),
        ("deep page (cursor at the oldest 1 %)", True, page(cursor=near_end)),
        ("agent=agent-7 (5 %)", True, page(agent="agent-7")),
        ("status=failed (5 %)", True, page(status="failed")),
        ("stop_reason=cancelled (1 %, no index of its own)", True, page(stop_reason="cancelled")),
        ("metadata.env=prod (50 %)", True, page(metadata={"env": "prod"})),
        ("metadata.customer=c42 (0.1 %)", True, page(metadata={"customer": "c42"})),
        ("metadata.customer=c42, deep page", True, page(metadata={"customer": "c42"}, cursor=middle)),
        ("agent + status + metadata", True, page(agent="agent-3", status="succeeded", metadata=prod)),
        ("usage t1, 30 days, by agent", False, ledger("t1", "agent")),
        ("usage t1, 30 days, by day", False, ledger("t1", "day")),
        ("usage t1, 30 days, by model", False, ledger("t1", "model")),
        ("usage t5 (1 %), 30 days, by agent", False, ledger("t5", "agent")),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    try:
        server = PostgresServer()
    except Exception as exc:  # a bench that cannot start says why
        print(f"bench: cannot start PostgreSQL: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        engine = create_engine(server.url)
        schema.metadata.create_all(engine)
        load_s = load(engine, args.runs)
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
        failed = []
        print(f"\n{args.runs:,} runs in PostgreSQL {version}, loaded in {load_s:.0f} s; "
              f"{dt.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, "
              f"{platform.processor() or platform.platform()}; {args.samples} samples each\n")  # fmt: skip
        print("| query | rows | p50 | p99 |")
        print("| --- | ---: | ---: | ---: |")
        for name, is_page, call in cases(engine):
            p50, p99, result = timed(call, args.samples)
            rows = len(result[0]) if is_page else len(result)
            print(f"| {name} | {rows} | {p50 * 1000:.1f} ms | {p99 * 1000:.1f} ms |", flush=True)
            if is_page and p99 >= PAGE_BOUND_S:
                failed.append(name)
        if failed:
            print(f"\nFAILED: a page took {PAGE_BOUND_S * 1000:.0f} ms or more at p99: {', '.join(failed)}")
            return EXIT_FAILED
        print(f"\nevery page of 100 under {PAGE_BOUND_S * 1000:.0f} ms at p99")
        return 0
    finally:
        server.close()


if __name__ == "__main__":
    raise SystemExit(main())
