"""A tenant's commands, through the HTTP API with the Python client: submit a run (and follow
it), list ended runs, usage, approvals."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from fleetcli.validate import USAGE_ERROR, checked_settings
from worker.settings import Settings

if TYPE_CHECKING:
    from agentfleet_client import Fleet, Run


def _json_arg(text: str | None, name: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(_usage(f"--{name} is not valid JSON: {exc.msg} at position {exc.pos}")) from None


def _usage(message: str) -> int:
    print(f"fleet submit: {message}", file=sys.stderr)
    return USAGE_ERROR


# The CLI answers a person at a terminal: 429s and lost connections are retried for a few seconds,
# a 503 of a kill switch (Retry-After 30) ends the command at once with its message.
SUBMIT_RETRIES_TOTAL_S = 15.0


def _api_access() -> tuple[Settings, str] | int:
    """The settings and the tenant's API key (FLEET_API_KEY) of a command that goes through the
    API with the Python client, or the usage error's exit code when the client or the key is
    missing."""
    try:
        import agentfleet_client  # noqa: F401  # installed beside the fleet (pip install -e ./client)
    except ImportError:
        return _usage("the Python client is not installed: pip install -e ./client (beside -e .)")
    settings = checked_settings()
    key = settings.api_key.get_secret_value() if settings.api_key else settings.secret("FLEET_API_KEY")
    if not key:
        return _usage("set FLEET_API_KEY to an API key of your tenant")
    return settings, key


def cmd_submit(args: argparse.Namespace) -> int:
    found = _api_access()
    if isinstance(found, int):
        return found
    settings, key = found
    from agentfleet_client import Fleet, FleetConnectionError, FleetError, Retries

    run_input = _json_arg(args.input, "input")
    budgets = _json_arg(args.budgets, "budgets") if args.budgets else None
    metadata = _json_arg(args.metadata, "metadata") if args.metadata else None
    retries = Retries(max_total_s=SUBMIT_RETRIES_TOTAL_S)
    try:
        with Fleet(settings.api_url, key, timeout=40.0, retries=retries) as fleet:
            run = fleet.submit(args.agent, run_input, budgets, metadata, idempotency_key=args.idempotency_key)
            if not args.wait:
                print(json.dumps(run.raw, indent=2))
                return 0
            return _follow(fleet, run, args.timeout)
    except FleetConnectionError as exc:
        return _usage(exc.message)
    except FleetError as exc:
        return _usage(f"{exc.status} {exc.type}: {exc.message}")


def cmd_approvals(args: argparse.Namespace) -> int:
    """`fleet approvals`: the tenant's tool calls that wait for a decision; `fleet approve RUN
    CALL [--deny] [--comment C]`: decide one (POST /v1/runs/{id}/approvals/{call_id})."""
    found = _api_access()
    if isinstance(found, int):
        return found
    settings, key = found
    from agentfleet_client import Fleet, FleetConnectionError, FleetError

    try:
        with Fleet(settings.api_url, key, timeout=30.0) as fleet:
            if args.command == "approvals":
                print(json.dumps([a.raw for a in fleet.approvals()], indent=2))
                return 0
            decide = fleet.deny if args.deny else fleet.approve
            run = decide(args.run_id, args.call_id, comment=args.comment)
            print(json.dumps(run.raw, indent=2))
            return 0
    except FleetConnectionError as exc:
        return _usage(exc.message)
    except FleetError as exc:
        print(f"fleet {args.command}: {exc.status} {exc.type}: {exc.message}", file=sys.stderr)
        return 1


def cmd_history(args: argparse.Namespace) -> int:
    """`fleet runs`: a page of the tenant's ended runs, newest first (GET /v1/runs), one line each,
    and on stderr the option that shows the next page; `fleet usage`: the tenant's steps, tool
    calls, tokens and cost per agent, day or model (GET /v1/usage). `--json`: the API's answer."""
    found = _api_access()
    if isinstance(found, int):
        return found
    settings, key = found
    from agentfleet_client import Fleet, FleetConnectionError, FleetError

    try:
        with Fleet(settings.api_url, key, timeout=30.0) as fleet:
            if args.command == "runs":
                return _print_runs(fleet, args)
            report = fleet.usage(args.start, args.end, group_by=args.group_by, tenant=args.tenant)
    except FleetConnectionError as exc:
        return _usage(exc.message)
    except FleetError as exc:
        print(f"fleet {args.command}: {exc.status} {exc.type}: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.raw, indent=2))
        return 0
    print(f"{report.group_by:<32} {'steps':>10} {'tool calls':>10} {'tokens':>12} {'cost USD':>12}")
    for row in [*report.rows, report.total]:
        name = row.key if row.key or report.group_by != "model" else "(no model)"
        print(f"{name[:32]:<32} {row.steps:>10} {row.tool_calls:>10} {row.tokens:>12} {row.cost_usd:>12.6f}")
    return 0


def _metadata_filters(pairs: list[str]) -> dict[str, Any]:
    """`--metadata k=v` options as key -> value, read as the API reads `metadata.k=v`: JSON when
    it parses (`priority=2` is the number), else a string (`tier=gold`)."""
    filters: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(_usage(f"--metadata {pair!r}: use KEY=VALUE"))
        try:
            filters[key] = json.loads(value)
        except ValueError:
            filters[key] = value
    return filters


def _print_runs(fleet: Fleet, args: argparse.Namespace) -> int:
    page = fleet.runs(
        agent=args.agent, status=args.status, stop_reason=args.stop_reason, since=args.since,
        until=args.until, metadata=_metadata_filters(args.metadata or []), limit=args.limit,
        cursor=args.cursor,
    )  # fmt: skip
    if args.json:
        print(json.dumps({"runs": [run.raw for run in page.runs], "next_cursor": page.next_cursor}, indent=2))
        return 0
    for run in page.runs:
        created = run.raw.get("created_at") or "-"
        ended = f"{run.status}/{run.stop_reason}" if run.stop_reason else run.status
        usage = run.usage
        print(
            f"{created}  {run.id}  {run.agent:<20} {ended:<24} steps={usage.steps} cost=${usage.cost_usd:g}"
        )
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


def _progress_line(run: Run) -> str:
    usage, budgets = run.usage, run.budgets
    return (
        f"run {run.id} {run.status}: step {usage.steps}/{budgets.get('max_steps')}, "
        f"tool calls {usage.tool_calls}/{budgets.get('max_tool_calls')}, "
        f"{usage.seconds:.1f}/{budgets.get('max_seconds', 0):g} s"
    )


def _follow(fleet: Fleet, run: Run, timeout_s: float | None) -> int:
    """Show progress on stderr until the run ends; print its output on stdout."""
    tty = sys.stderr.isatty()
    last = ""
    give_up = time.monotonic() + timeout_s if timeout_s else None
    while True:
        line = _progress_line(run)
        if line != last:
            print(("\r\033[K" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
            last = line
        if run.status not in ("queued", "running"):
            break
        if give_up is not None and time.monotonic() > give_up:
            print("\nfleet submit: gave up waiting; the run goes on", file=sys.stderr)
            return 1
        run = fleet.wait(run.id, timeout=1.0)  # one long-poll of up to 1 s, then the next progress line
    if tty:
        print(file=sys.stderr)
    print(f"ended: {run.status} ({run.stop_reason})", file=sys.stderr)
    if run.error is not None:
        print(f"error: {run.error.type}: {run.error.message}", file=sys.stderr)
    output = run.output
    print(output if isinstance(output, str) else json.dumps(output))
    return 0 if run.status == "succeeded" else 1
