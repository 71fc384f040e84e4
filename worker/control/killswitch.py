"""Kill switches: Redis keys that operators flip with redis-cli; any value turns one on.

`fleet:kill:all`, `fleet:kill:tenant:<t>`, `fleet:kill:agent:<a>` stop runs; `fleet:kill:tool:<t>`
and `fleet:kill:writes` refuse tool calls. The value is the reason shown to users; `DEL` turns a
switch off and `SET … EX n` makes it expire. One MGET answers every check on a hot path.

The check is defined once, here, twice over: `LUA_KILL_REASON` for the scripts (run creation,
run start, every admission stage of a tool call) and `first_reason` / `kill_reason` for Python
(every step, every model attempt, the tool worker right before a tool executes). Both take the
keys from `run_switch_keys` and `tool_switch_keys`, so every path reads the same switches.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from worker import lua
from worker.keys import Keys

SCOPES = ("all", "tenant", "agent", "tool", "writes")


def switch_key(keys: Keys, scope: str, name: str | None = None) -> str:
    """The key of one switch; `name` is required for tenant, agent and tool."""
    if scope not in SCOPES:
        raise ValueError(f"unknown kill-switch scope {scope!r}; use one of {', '.join(SCOPES)}")
    if scope in ("all", "writes"):
        if name:
            raise ValueError(f"the {scope!r} switch takes no name")
        return keys.kill_all() if scope == "all" else keys.kill_writes()
    if not name:
        raise ValueError(f"the {scope!r} switch needs a name")
    return {"tenant": keys.kill_tenant, "agent": keys.kill_agent, "tool": keys.kill_tool}[scope](name)


DEFAULT_REASON = "kill switch on"  # the reason shown for a switch set to an empty value

# The one switch check, in Lua: the reason of the first switch that is on, or false. Scripts pass
# the switch keys they got in KEYS (run_switch_keys / tool_switch_keys order), never build them.
# `first_reason` below is the same rule in Python; tests/worker/control/test_killswitch_units.py
# holds them equal.
LUA_KILL_REASON = lua.load("worker/control/kill_reason.lua")


def first_reason(values: Sequence[bytes | str | None]) -> str | None:
    """The reason of the first switch that is on, or None when all are off (the Python side of
    LUA_KILL_REASON, for values read with one MGET of the same keys)."""
    for value in values:
        if value is not None:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            return text or DEFAULT_REASON
    return None


def run_switch_keys(keys: Keys, tenant: str, agent: str) -> list[str]:
    """The switches that stop a run of `agent` for `tenant` (and refuse its submission), in the
    order they are reported: all, tenant, agent."""
    return [keys.kill_all(), keys.kill_tenant(tenant), keys.kill_agent(agent)]


def tool_switch_keys(keys: Keys, tool: str, *, writes: bool, model: str | None = None) -> list[str]:
    """The switches that refuse a call of `tool`, in the order they are reported: the tool's own,
    then for a model call (`tool` = llm) the model's (`llm:<model>`), then `writes` for a tool
    that writes."""
    found = [keys.kill_tool(tool)]
    if model:
        found.append(keys.kill_tool(f"{tool}:{model}"))
    if writes:
        found.append(keys.kill_writes())
    return found


def kill_reason(r: redis.Redis, switch_keys: Sequence[str]) -> str | None:
    """Why the switches in `switch_keys` refuse: one MGET, then `first_reason`."""
    return first_reason(r.mget(switch_keys)) if switch_keys else None


def kill(r: redis.Redis, keys: Keys, scope: str, name: str | None, reason: str, ttl_s: int | None) -> str:
    """Turn a switch on; returns its key."""
    key = switch_key(keys, scope, name)
    r.set(key, reason or "kill switch on", ex=ttl_s)
    return key


def revive(r: redis.Redis, keys: Keys, scope: str, name: str | None) -> bool:
    """Turn a switch off; True when it was on."""
    return bool(r.delete(switch_key(keys, scope, name)))


def active(r: redis.Redis, keys: Keys) -> dict[str, tuple[str, int]]:
    """Every switch that is on: key -> (reason, seconds to live or -1)."""
    found: dict[str, tuple[str, int]] = {}
    for key in r.scan_iter(match=keys.kill_pattern(), count=500):
        pipe = r.pipeline(transaction=False)
        pipe.get(key)
        pipe.ttl(key)
        value, ttl = pipe.execute()
        if value is not None:
            found[key] = (value, int(ttl))
    return found
