"""The `fleet` command: its arguments and which module runs each subcommand.

fleetcli/processes.py starts the fleet's server processes, up.py the whole stack on one machine,
operate.py and doctor.py are the operator's, runs.py a tenant's (through the HTTP API).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fleetcli.operate import cmd_config, cmd_doctor, cmd_healthcheck, cmd_kill, cmd_policy, cmd_rollout
from fleetcli.processes import cmd_api, cmd_flower, cmd_worker
from fleetcli.runs import cmd_approvals, cmd_history, cmd_submit
from fleetcli.validate import checked_settings
from worker.obs.logs import PROCESS_ENV


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
# The kind of process each command runs, on every log line it writes (worker.obs.logs.PROCESS_ENV).
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
            checked_settings(),
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
