"""Caps each tenant's open `?wait` requests fleet-wide (FLEET_MAX_WAITERS_PER_TENANT).

One sorted set per tenant holds a member per open wait, scored by the Redis-clock time at which
the slot lapses on its own (the wait's length plus a grace). A request frees its slot when it
answers; a slot left by a process that crashed lapses at its score, so no slot is held for ever,
and every API replica counts against the same set.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
import redis.asyncio

from worker.keys import Keys

GRACE_S = 5.0  # a slot outlives its wait by this much, for a request that is slow to answer

# KEYS[1] = the tenant's waiters zset. ARGV: the limit, the slot's length (s), its member.
# Returns 1 when the slot was taken, else the number of slots held.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then return {0, held} end
redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[2])), ARGV[3])
-- the set lives as long as its longest slot, so an idle tenant leaves no key behind
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(last[2]) - now) + 1)
return {1, held + 1}
"""


class WaitersFull(Exception):
    """The tenant already holds `held` wait slots, its limit."""

    def __init__(self, held: int) -> None:
        super().__init__(held)
        self.held = held


class WaitSlots:
    """Per-tenant wait slots in Redis; `limit` 0 means no limit (and no Redis round trips)."""

    def __init__(self, r: redis.asyncio.Redis, keys: Keys, limit: int) -> None:
        self.r = r
        self.keys = keys
        self.limit = limit
        self._acquire = r.register_script(_ACQUIRE)

    @asynccontextmanager
    async def slot(self, tenant: str, wait_s: float) -> AsyncIterator[None]:
        """Hold one of the tenant's slots for a wait of `wait_s`; WaitersFull when none is free."""
        if self.limit <= 0:
            yield
            return
        key, member = self.keys.waiters(tenant), uuid.uuid4().hex
        taken, held = await self._acquire(keys=[key], args=[self.limit, wait_s + GRACE_S, member])
        if not taken:
            raise WaitersFull(int(held))
        try:
            yield
        finally:
            with contextlib.suppress(redis.RedisError, OSError):  # else the slot lapses at its score
                await self.r.zrem(key, member)
