"""The `fleet` command: run the stack's processes, flip kill switches, submit runs, show config."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import yaml

from fleetcli.validate import validate_settings
from worker.logs import PROCESS_ENV
from worker.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from agentfleet_client import Fleet, Run

USAGE_ERROR = 2


def _settings() -> Settings:
    try:
        settings = load_settings()
        validate_settings(settings)
        return settings
    except ConfigError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


# -- processes ------------------------------------------------------------------------------------


def _has_option(args: Sequence[str], *names: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in args for name in names)


def tool_queues(settings: Settings) -> list[str]:
    """`tools` and `tools.<name>` of every tool this process knows (built-ins and plugins),
    `webhooks` and `archive`: tool workers make the webhook deliveries and write the run history
    too (no process kind of their own)."""
    from worker import agents, tools
    from worker.keys import ARCHIVE_QUEUE, TOOL_QUEUE, WEBHOOK_QUEUE, tool_queue

    agents.load_plugins(settings.plugins)  # plugin modules register tools as well as agents
    return [TOOL_QUEUE, *(tool_queue(name) for name in tools.tool_names()), WEBHOOK_QUEUE, ARCHIVE_QUEUE]


TOOL_WORKER_THREADS = 4


def celery_worker_argv(
    kind: str, passthrough: Sequence[str], log_level: str, queues: Sequence[str] = ("tools",)
) -> list[str]:
    """The `celery worker` command line of an agent worker or a tool worker, defaults first."""
    # --quiet: no startup banner, so every line on stdout is a JSON log line
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "--quiet", "worker"]
    defaults: list[tuple[tuple[str, ...], list[str]]]
    if kind == "agent":
        defaults = [
            (("-Q", "--queues"), ["-Q", "agents"]),
            (("-n", "--hostname"), ["-n", "agent@%h"]),
            (("-P", "--pool"), ["--pool", "prefork"]),
        ]
    else:
        defaults = [
            (("-Q", "--queues"), ["-Q", ",".join(queues)]),
            (("-n", "--hostname"), ["-n", "tool@%h"]),
            # The task only hands its call to the process's event loop (worker/gateway/pool.py) and
            # returns: a few threads keep the loop fed (and may block on its backpressure without
            # stalling the consumer); more threads only cost CPU (bench/README.md).
            (("-P", "--pool"), ["--pool", "threads"]),
            (("-c", "--concurrency"), ["--concurrency", str(TOOL_WORKER_THREADS)]),
        ]
    defaults.append((("-l", "--loglevel"), ["--loglevel", log_level]))
    for names, value in defaults:
        if not _has_option(passthrough, *names):
            argv += value
    return argv + list(passthrough)


def _check_redis_password(settings: Settings) -> None:
    """Stop a server process at start when Redis refuses its password: that never heals by waiting."""
    from worker.redis_conn import password_problem

    problem = password_problem(settings)
    if problem:
        print(f"fleet: {problem}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def cmd_api(args: argparse.Namespace) -> int:
    settings = _settings()  # before importing the app, which loads settings at import
    _check_redis_password(settings)

    import uvicorn

    from worker import tracing
    from worker.telemetry import setup_logging, setup_sentry, setup_tracing

    setup_logging(settings)
    setup_sentry(settings, "api")
    setup_tracing(settings, "api")
    from api.main import create_app

    host = args.host or settings.api_host
    port = args.port or settings.api_port
    try:
        app = create_app(settings)
    except ConfigError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if not app.state.fleet.tenant_keys:
        print(
            "fleet api: no API keys configured (FLEET_API_KEYS); every /v1 call will get 401", file=sys.stderr
        )
    state = app.state.fleet

    class ApiServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn waits for open requests before it stops; an event stream never ends by
            # itself, so the streams end first (their clients resume with Last-Event-ID)
            state.close_streams()
            await super().shutdown(sockets)

    # log_config=None: uvicorn's loggers go through the fleet's chain (JSON lines, redacted, capped)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False, log_config=None
    )
    try:
        ApiServer(config).run()
    finally:
        tracing.shutdown()  # export the last requests' spans
    return 0


def cmd_worker(args: argparse.Namespace, passthrough: list[str]) -> int:
    settings = _settings()
    _check_redis_password(settings)
    if args.command == "worker":
        argv = celery_worker_argv("agent", passthrough, settings.log_level)
    else:
        argv = celery_worker_argv("tool", passthrough, settings.log_level, tool_queues(settings))
    os.execv(sys.executable, argv)
    return 0  # not reached


def flower_password(settings: Settings) -> str | None:
    if settings.flower_password is not None:
        return settings.flower_password.get_secret_value()
    return settings.secret("FLEET_FLOWER_PASSWORD")


def cmd_flower(args: argparse.Namespace, passthrough: list[str]) -> int:
    settings = _settings()
    _check_redis_password(settings)
    password = flower_password(settings)
    if not password:
        print(
            "fleet flower: set FLEET_FLOWER_PASSWORD (or /run/secrets/fleet_flower_password); "
            "Flower is never served without authentication",
            file=sys.stderr,
        )
        return USAGE_ERROR
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "flower"]
    if not _has_option(passthrough, "--address"):
        argv.append("--address=127.0.0.1")
    if not _has_option(passthrough, "--port"):
        argv.append(f"--port={settings.flower_port}")
    if not _has_option(passthrough, "--purge_offline_workers"):
        argv.append("--purge_offline_workers=60")
    env = dict(os.environ, FLOWER_BASIC_AUTH=f"{settings.flower_user}:{password}")
    os.execve(sys.executable, argv + passthrough, env)
    return 0  # not reached


# -- operating ------------------------------------------------------------------------------------


def cmd_kill(args: argparse.Namespace) -> int:
    from worker import killswitch
    from worker.keys import Keys
    from worker.redis_conn import redis_for

    settings = _settings()
    r = redis_for(settings)
    keys = Keys(settings.key_prefix)
    if args.scope is None:
        switches = killswitch.active(r, keys)
        if not switches:
            print("no kill switch is on")
        for key, (reason, ttl) in sorted(switches.items()):
            expiry = f" (expires in {ttl} s)" if ttl >= 0 else ""
            print(f"{key}: {reason}{expiry}")
        return 0
    try:
        if args.command == "kill":
            key = killswitch.kill(r, keys, args.scope, args.name, args.reason, args.ttl)
            print(f"on: {key} = {args.reason!r}" + (f" for {args.ttl} s" if args.ttl else ""))
        else:
            was_on = killswitch.revive(r, keys, args.scope, args.name)
            print(
                ("off: " if was_on else "was not on: ") + killswitch.switch_key(keys, args.scope, args.name)
            )
    except ValueError as exc:
        print(f"fleet {args.command}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from worker.keys import Keys
    from worker.policy import Policy, PolicyStore
    from worker.redis_conn import redis_for

    settings = _settings()
    store = PolicyStore(redis_for(settings), Keys(settings.key_prefix))
    if args.action == "set":
        changes: dict[str, Any] = {}
        if args.allowed_tools is not None:
            changes["allowed_tools"] = [t.strip() for t in args.allowed_tools.split(",") if t.strip()]
        if args.all_tools:
            changes["allowed_tools"] = None
        if args.approve_tools is not None:
            names = [t.strip() for t in args.approve_tools.split(",") if t.strip()]
            changes["approve_tools"] = names or None
        for name in ("max_actions_per_hour", "max_spend_usd_per_day"):
            value = getattr(args, name)
            if value is not None:
                changes[name] = None if value in ("none", "") else value
        try:
            policy = Policy.model_validate({**store.get(args.agent).model_dump(), **changes})
        except ValidationError as exc:
            err = exc.errors()[0]
            print(f"fleet policy: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
            return USAGE_ERROR
        store.set(args.agent, policy)
    elif args.action == "delete":
        store.set(args.agent, Policy())
    print(json.dumps({"agent": args.agent, **store.get(args.agent).model_dump()}, indent=2))
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from worker.keys import Keys
    from worker.redis_conn import redis_for
    from worker.rollout import CANARY, STABLE, Rollouts, has_versions

    settings = _settings()
    rollouts = Rollouts(redis_for(settings), Keys(settings.key_prefix), settings)
    now = time.time()
    if args.action != "status":
        if not args.agent or not has_versions(rollouts.agent_config(args.agent)):
            print(
                f"fleet rollout: agent {args.agent!r} has no stable and canary versions in config",
                file=sys.stderr,
            )
            return USAGE_ERROR
        if args.action == "set":
            if args.percent is None or not 0 <= args.percent <= 100:
                print("fleet rollout set: --percent between 0 and 100 is required", file=sys.stderr)
                return USAGE_ERROR
            rollouts.set_percent(args.agent, args.percent)
        elif args.action == "promote":
            rollouts.promote(args.agent, now)
        elif args.action == "rollback":
            rollouts.rollback(args.agent, "rolled back by operator", now)
    agents = [args.agent] if args.agent else rollouts.agents_with_versions()
    report = {}
    for agent in agents:
        state = rollouts.state(agent)
        windows = {v: vars(rollouts.window(agent, v, now)) for v in (STABLE, CANARY)}
        report[agent] = {
            "state": state.get("state", "active"),
            "canary_percent": rollouts.percent(agent, state),
            "reason": state.get("reason"),
            "rollbacks": int(state.get("rollbacks", 0)),
            "window": windows,
        }
    print(json.dumps(report, indent=2))
    return 0


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when the worker's heartbeat file is younger than --max-age seconds, else 1."""
    from pathlib import Path

    from worker.heartbeat import STALE_AFTER_S, default_file, file_age_s

    path = Path(args.file) if args.file else default_file(args.kind)
    max_age = args.max_age if args.max_age is not None else STALE_AFTER_S
    age = file_age_s(path)
    if age is None:
        print(f"unhealthy: no heartbeat file {path}", file=sys.stderr)
        return 1
    if age > max_age:
        print(f"unhealthy: last heartbeat {age:.1f} s ago (limit {max_age:g} s)", file=sys.stderr)
        return 1
    print(f"healthy: last heartbeat {age:.1f} s ago")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """`fleet doctor`: the deploy preflight (fleetcli/doctor.py); 0 when every needed check passes."""
    from fleetcli.doctor import main as doctor

    return doctor(args.kind, args.json)


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings()
    data = settings.model_dump(mode="json")
    data["effective_caps"] = {
        "max_steps": settings.max_steps,
        "max_tool_calls": settings.max_tool_calls,
        "max_seconds": settings.max_seconds,
    }
    data["redis_url"] = mask_url(settings.redis_url)
    data["database_url"] = masked_database_url(settings)
    print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def mask_url(url: str) -> str:
    """A URL with any password replaced by ***."""
    from worker.settings import masked_url

    return masked_url(url)


def masked_database_url(settings: Settings) -> str:
    """The run history's URL (FLEET_DATABASE_URL, its file, or the SQLite default), password masked."""
    from worker.history.db import masked

    return masked(settings.history_database_url())


# -- submitting -----------------------------------------------------------------------------------


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
    settings = _settings()
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


# -- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet", description="agentfleet: AI agents as a production service"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="the whole stack on this machine, in the foreground")
    up.add_argument("--no-flower", action="store_true", help="do not start Flower")
    up.add_argument("--concurrency", type=int, default=4, help="agent worker processes (default 4)")
    up.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds the stack gets to come up (default 60)"
    )

    api = sub.add_parser("api", help="the HTTP API (uvicorn)")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)

    sub.add_parser("worker", help="a Celery worker for agent runs (queue agents); Celery options pass on")
    sub.add_parser("tool-worker", help="a Celery worker for tool calls (queue tools); Celery options pass on")
    sub.add_parser("flower", help="Flower for the fleet's Celery app, with basic auth")

    for name, verb in (("kill", "set"), ("revive", "clear")):
        p = sub.add_parser(name, help=f"{verb} a kill switch (no scope: list the switches that are on)")
        p.add_argument("scope", nargs="?", choices=["all", "tenant", "agent", "tool", "writes"])
        p.add_argument("name", nargs="?", help="tenant, agent or tool name")
        if name == "kill":
            p.add_argument("--reason", default="killed by operator", help="shown to users and in runs")
            p.add_argument("--ttl", type=int, default=None, help="seconds until the switch turns itself off")

    submit = sub.add_parser("submit", help="submit a run through the API")
    submit.add_argument("agent")
    submit.add_argument("--input", required=True, help="the run's input, as JSON")
    submit.add_argument("--budgets", help='e.g. {"max_steps": 5}')
    submit.add_argument("--metadata", help="JSON object stored with the run")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--wait", action="store_true", help="show progress until the run ends")
    submit.add_argument("--timeout", type=float, default=None, help="give up waiting after S seconds")

    policy = sub.add_parser("policy", help="show or change an agent's governance policy")
    policy.add_argument("action", choices=["get", "set", "delete"])
    policy.add_argument("agent")
    policy.add_argument("--allowed-tools", help="comma-separated tools the agent may call")
    policy.add_argument("--all-tools", action="store_true", help="drop allowed_tools (the allowlist applies)")
    policy.add_argument("--approve-tools", help="comma-separated tools whose calls need a human's approval")
    policy.add_argument("--max-actions-per-hour", help="an integer, or 'none'")
    policy.add_argument("--max-spend-usd-per-day", help="dollars, or 'none'")

    sub.add_parser("approvals", help="list the tool calls waiting for approval (FLEET_API_KEY's tenant)")
    approve = sub.add_parser("approve", help="approve (or --deny) a tool call that waits for approval")
    approve.add_argument("run_id")
    approve.add_argument("call_id")
    approve.add_argument("--deny", action="store_true", help="deny the call instead")
    approve.add_argument("--comment", help="why; kept in the run's step log")

    runs = sub.add_parser("runs", help="list the tenant's ended runs, newest first (FLEET_API_KEY's tenant)")
    runs.add_argument("--agent")
    runs.add_argument("--status", help="succeeded, stopped, failed or cancelled")
    runs.add_argument("--stop-reason", help="finish, max_steps, killed, error, ...")
    runs.add_argument("--since", help="created at or after: ISO 8601 with a zone, or unix seconds")
    runs.add_argument("--until", help="created before: ISO 8601 with a zone, or unix seconds")
    runs.add_argument(
        "--metadata", action="append", metavar="KEY=VALUE", help="repeatable; VALUE as JSON or text"
    )
    runs.add_argument("--limit", type=int, help="runs per page, 1-1000 (default 100)")
    runs.add_argument("--cursor", help="the next page's cursor, as printed after a page")
    runs.add_argument("--json", action="store_true", help="print the API's answer")
    usage = sub.add_parser("usage", help="steps, tool calls, tokens and cost per agent, day or model")
    usage.add_argument("--from", dest="start", help="first UTC day, YYYY-MM-DD (default: 30 days to --to)")
    usage.add_argument("--to", dest="end", help="last UTC day, included (default: today)")
    usage.add_argument("--group-by", choices=["agent", "day", "model"], default="agent")
    usage.add_argument("--tenant", help="whose usage (admin keys only; default: every tenant's)")
    usage.add_argument("--json", action="store_true", help="print the API's answer")

    rollout = sub.add_parser("rollout", help="canary rollouts: status, set --percent, promote, rollback")
    rollout.add_argument("action", choices=["status", "set", "promote", "rollback"])
    rollout.add_argument("agent", nargs="?")
    rollout.add_argument("--percent", type=float, help="the canary's share of new runs (with set)")

    health = sub.add_parser(
        "healthcheck", help="exit 0 when a worker's heartbeat is fresh (container probes)"
    )
    health.add_argument("target", choices=["worker"])
    health.add_argument(
        "--kind", choices=["agent", "tool"], default="agent", help="which worker's file (default agent)"
    )
    health.add_argument("--file", help="the heartbeat file (default: FLEET_HEARTBEAT_FILE or the kind's)")
    health.add_argument("--max-age", type=float, default=None, help="seconds (default 15)")

    sub.add_parser("config", help="print the effective configuration, secrets masked")

    doctor = sub.add_parser(
        "doctor", help="deploy preflight: Redis, config, secrets, upstreams and clock, from where it runs"
    )
    doctor.add_argument(
        "--kind",
        choices=["api", "worker", "tool-worker", "all"],
        default="all",
        help="the checks the process of this kind needs (default all)",
    )
    doctor.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


PASSTHROUGH = {"worker", "tool-worker", "flower"}
# The kind of process each command runs, on every log line it writes (worker.logs.PROCESS_ENV).
PROCESS_KINDS = {"api": "api", "worker": "agent", "tool-worker": "tool", "flower": "flower", "up": "up"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in PROCESS_KINDS:
        os.environ[PROCESS_ENV] = PROCESS_KINDS[argv[0]]
    if argv and argv[0] in PASSTHROUGH:
        args = parser.parse_args(argv[:1])
        rest = argv[1:]
        if args.command == "flower":
            return cmd_flower(args, rest)
        return cmd_worker(args, rest)
    args = parser.parse_args(argv)
    if args.command == "up":
        from fleetcli.up import run_up

        return run_up(
            _settings(),
            concurrency=args.concurrency,
            flower=not args.no_flower,
            ready_timeout_s=args.ready_timeout,
        )
    handlers = {
        "api": cmd_api,
        "kill": cmd_kill,
        "revive": cmd_kill,
        "config": cmd_config,
        "submit": cmd_submit,
        "policy": cmd_policy,
        "approvals": cmd_approvals,
        "approve": cmd_approvals,
        "runs": cmd_history,
        "usage": cmd_history,
        "healthcheck": cmd_healthcheck,
        "rollout": cmd_rollout,
        "doctor": cmd_doctor,
    }
    return handlers[args.command](args)
