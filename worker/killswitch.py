"""Kill switches: Redis keys that operators flip with redis-cli; any value turns one on.

`fleet:kill:all`, `fleet:kill:tenant:<t>`, `fleet:kill:agent:<a>` stop runs; `fleet:kill:tool:<t>`
and `fleet:kill:writes` refuse tool calls. The value is the reason shown to users; `DEL` turns a
switch off and `SET … EX n` makes it expire. One MGET answers every check on a hot path.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

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


def run_switch_keys(keys: Keys, tenant: str, agent: str) -> list[str]:
    """The switches that stop a run of `agent` for `tenant`, in the order they are reported."""
    return [keys.kill_all(), keys.kill_tenant(tenant), keys.kill_agent(agent)]


def first_reason(values: Sequence[bytes | str | None]) -> str | None:
    """The reason of the first switch that is on, or None when all are off."""
    for value in values:
        if value is not None:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            return text or "kill switch on"
    return None


def run_kill_reason(r: redis.Redis, keys: Keys, tenant: str, agent: str) -> str | None:
    """Why runs of this tenant and agent may not go on, or None."""
    return first_reason(r.mget(run_switch_keys(keys, tenant, agent)))


def tool_switch_keys(keys: Keys, tool: str, writes: bool) -> list[str]:
    """The switches that refuse a call of `tool`."""
    return [keys.kill_tool(tool), keys.kill_writes()] if writes else [keys.kill_tool(tool)]


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
