"""The operator's commands against a fleet's Redis: kill switches, policies, rollouts; and the
local ones: the heartbeat check, `fleet doctor`, the effective configuration."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import yaml

from fleetcli.validate import USAGE_ERROR, checked_settings
from worker.settings import Settings


def cmd_kill(args: argparse.Namespace) -> int:
    from worker.control import killswitch
    from worker.keys import Keys
    from worker.redis_conn import redis_for

    settings = checked_settings()
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

    from worker.control.policy import Policy, PolicyStore
    from worker.keys import Keys
    from worker.redis_conn import redis_for

    settings = checked_settings()
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
    from worker.control.rollout import CANARY, STABLE, Rollouts, has_versions
    from worker.keys import Keys
    from worker.redis_conn import redis_for

    settings = checked_settings()
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

    from worker.obs.heartbeat import STALE_AFTER_S, default_file, file_age_s

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
    settings = checked_settings()
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
