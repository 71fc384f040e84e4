"""A tool's calls in flight, fleet-wide: a semaphore in Redis shared by every tool-worker process.

One sorted set per tool (`Keys.tool_slots`) holds the attempts running now, each scored by when
its slot lapses (Redis time, ms): the attempt's timeout plus `REPLY_GRACE_S`, past which the run
has given up on it anyway. Acquire drops lapsed slots first, so a tool worker that died mid-call
holds its slots only until then, never for good. Both scripts name every key in KEYS.
"""

from __future__ import annotations

import math

import redis

from worker import lua
from worker.gateway.calls import REPLY_GRACE_S

# One slot of a tool's slots zset `key` for `member` (the call id and attempt), unless `limit`
# attempts hold one; it lapses `life_ms` from now. Returns true when taken (or held already).
# Shared by the script below and the tool worker's checks (worker/gateway/checks.py).
LUA_ACQUIRE_SLOT = lua.load("worker/gateway/acquire_slot.lua")

# KEYS: 1 the tool's slots. ARGV[1]: a JSON table `a`: member, limit, life_ms (the slot's).
# Returns 1 (taken) or 0 (the tool is at its limit).
_ACQUIRE = lua.load("worker/gateway/toolslots_acquire.lua")

# KEYS: 1 the tool's slots. ARGV[1]: a JSON table `a`: member.
_RELEASE = lua.load("worker/gateway/toolslots_release.lua")


class ToolSlots:
    """Acquire and release one attempt's slot of a tool (blocking calls: the caller picks the thread)."""

    def __init__(self, r: redis.Redis) -> None:
        self._acquire = r.register_script(_ACQUIRE)
        self._release = r.register_script(_RELEASE)

    def acquire(self, key: str, member: str, limit: int, timeout_s: float) -> bool:
        """Take a slot unless `limit` attempts of the tool are in flight fleet-wide."""
        return bool(
            self._acquire(
                keys=[key], args=[lua.named(member=member, limit=limit, life_ms=slot_life_ms(timeout_s))]
            )
        )

    def release(self, key: str, member: str) -> None:
        self._release(keys=[key], args=[lua.named(member=member)])


def slot_member(call_id: str, attempt: int) -> str:
    return f"{call_id}#{attempt}"


def slot_life_ms(timeout_s: float) -> int:
    """How long an attempt's slot is held at most: its timeout and the grace the run allows it."""
    return math.ceil((timeout_s + REPLY_GRACE_S) * 1000)
