"""Caps each tenant's open `?wait` requests and event streams fleet-wide
(FLEET_MAX_WAITERS_PER_TENANT).

One sorted set per tenant holds a member per open wait or stream, scored by the Redis-clock time
at which the slot lapses on its own: the wait's length plus a grace; an event stream's slot is
renewed while the stream is open, with every other stream's of the process in one round trip. A
request frees its slot when it answers; a slot left by a process that crashed lapses at its
score, so no slot is held for ever, and every API replica counts against the same set.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
import redis.asyncio

from worker import lua
from worker.keys import Keys

GRACE_S = 5.0  # a slot outlives its wait by this much, for a request that is slow to answer
RENEW_EVERY_S = 15.0  # the keeper renews the kept slots (event streams) this often
KEPT_HOLD_S = 2 * RENEW_EVERY_S  # a kept slot lapses this long (+ the grace) after its renewal

_ACQUIRE = lua.load("api/waitslots_acquire.lua")

_RENEW = lua.load("api/waitslots_renew.lua")


class WaitersFull(Exception):
    """The tenant already holds `held` wait slots, its limit."""

    def __init__(self, held: int) -> None:
        super().__init__(held)
        self.held = held


class Slot:
    """One held slot (`member` of `key`); with no limit, no slot is kept (`key` is empty).
    `lapsed` turns true when the keeper found it gone (its holder was away from Redis for
    longer than the slot's length)."""

    def __init__(self, slots: WaitSlots, key: str = "", member: str = "") -> None:
        self.slots = slots
        self.key = key
        self.member = member
        self.lapsed = False

    async def release(self) -> None:
        """Free the slot now (once); if Redis does not answer, it lapses at its score."""
        self.slots.kept.discard(self)
        if self.key:
            with contextlib.suppress(redis.RedisError, OSError):
                await self.slots.r.zrem(self.key, self.member)
            self.key = ""


class WaitSlots:
    """Per-tenant wait slots in Redis; `limit` 0 means no limit (and no Redis round trips)."""

    def __init__(self, r: redis.asyncio.Redis, keys: Keys, limit: int) -> None:
        self.r = r
        self.keys = keys
        self.limit = limit
        self.kept: set[Slot] = set()  # slots the keeper renews (open event streams)
        self._acquire = r.register_script(_ACQUIRE)
        self._renew = r.register_script(_RENEW)
        self._keeper: asyncio.Task[None] | None = None

    async def take(self, tenant: str, hold_s: float) -> Slot:
        """Take one of the tenant's slots for `hold_s`; WaitersFull when none is free. The caller
        releases it."""
        if self.limit <= 0:
            return Slot(self)
        key, member = self.keys.waiters(tenant), uuid.uuid4().hex
        taken, held = await self._acquire(
            keys=[key], args=[lua.named(limit=self.limit, hold_s=hold_s + GRACE_S, member=member)]
        )
        if not taken:
            raise WaitersFull(int(held))
        return Slot(self, key, member)

    async def take_kept(self, tenant: str) -> Slot:
        """Take a slot for as long as its holder wants (an event stream): the process's keeper
        renews it with all the others every RENEW_EVERY_S, in one round trip, until it is
        released. A slot of a process that crashed lapses KEPT_HOLD_S + GRACE_S after its last
        renewal."""
        slot = await self.take(tenant, KEPT_HOLD_S)
        if slot.key:
            self.kept.add(slot)
            if self._keeper is None or self._keeper.done():
                self._keeper = asyncio.create_task(self._keep(), name="wait-slot-keeper")
        return slot

    async def renew_kept(self) -> None:
        """Renew every kept slot (one pipeline); mark those found lapsed."""
        slots = [slot for slot in self.kept if slot.key]
        if not slots:
            return
        pipe = self.r.pipeline(transaction=False)
        for slot in slots:
            renew = lua.named(hold_s=KEPT_HOLD_S + GRACE_S, member=slot.member)
            await self._renew(keys=[slot.key], args=[renew], client=pipe)
        for slot, renewed in zip(slots, await pipe.execute(), strict=True):
            slot.lapsed = slot.lapsed or (not renewed and bool(slot.key))

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            with contextlib.suppress(redis.RedisError, OSError):  # tried again before any lapses
                await self.renew_kept()

    async def close(self) -> None:
        """Stop the keeper (at the app's shutdown)."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper

    @asynccontextmanager
    async def slot(self, tenant: str, wait_s: float) -> AsyncIterator[None]:
        """Hold one of the tenant's slots for a wait of `wait_s`; WaitersFull when none is free."""
        held = await self.take(tenant, wait_s)
        try:
            yield
        finally:
            await held.release()
