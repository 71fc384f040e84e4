"""A tool's calls in flight, fleet-wide: a semaphore in Redis shared by every tool-worker process.

One sorted set per tool (`Keys.tool_slots`) holds the attempts running now, each scored by when
its slot lapses (Redis time, ms): the attempt's timeout plus `REPLY_GRACE_S`, past which the run
has given up on it anyway. Acquire drops lapsed slots first, so a tool worker that died mid-call
holds its slots only until then, never for good. Both scripts name every key in KEYS.
"""

from __future__ import annotations

import math

import redis

from worker.gateway.calls import REPLY_GRACE_S

# KEYS: 1 the tool's slots. ARGV: 1 the member (call id and attempt), 2 the limit, 3 the slot's
# life in ms. Returns 1 (taken) or 0 (the tool is at its limit).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
local expiry = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

# KEYS: 1 the tool's slots. ARGV: 1 the member.
_RELEASE = """
return redis.call('ZREM', KEYS[1], ARGV[1])
"""


class ToolSlots:
    """Acquire and release one attempt's slot of a tool (blocking calls: the caller picks the thread)."""

    def __init__(self, r: redis.Redis) -> None:
        self._acquire = r.register_script(_ACQUIRE)
        self._release = r.register_script(_RELEASE)

    def acquire(self, key: str, member: str, limit: int, timeout_s: float) -> bool:
        """Take a slot unless `limit` attempts of the tool are in flight fleet-wide."""
        life_ms = math.ceil((timeout_s + REPLY_GRACE_S) * 1000)
        return bool(self._acquire(keys=[key], args=[member, limit, life_ms]))

    def release(self, key: str, member: str) -> None:
        self._release(keys=[key], args=[member])


def slot_member(call_id: str, attempt: int) -> str:
    return f"{call_id}#{attempt}"
