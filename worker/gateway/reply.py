"""The tool worker's reply to the run waiting for an attempt (reply.lua, one round trip): push the
envelope, settle the call when the attempt ran the tool (the breaker, the final result and the
stats, so the run need not), make a run parked on the reply due and ring the schedulers' bell, give
the call's slot back and observe the attempt's duration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from redis.commands.core import AsyncScript

from worker import lua
from worker.gateway.breaker import BreakerPolicy

REPLY_SCRIPT = lua.load("worker/gateway/reply.lua")


@dataclass(frozen=True)
class Reply:
    """One attempt's reply, as the reply script takes it: `slot` (the tool's slots key and the
    attempt's member) is given back in the same trip, and `duration` (a histogram's key, the
    series, seconds; worker/obs/histograms.py) observed."""

    reply_key: str
    call_key: str
    breaker_key: str
    stats_key: str
    run_key: str
    timers_key: str
    bell_key: str
    run_id: str
    envelope: str
    reply_ttl_s: int
    attempt: int
    settle: bool
    ok: bool
    breaker: BreakerPolicy
    final: bool
    call_ttl_s: int
    stats_field: str
    slot: tuple[str, str] | None = None
    duration: tuple[str, str, float] | None = None

    def keys_args(self) -> tuple[list[str], list[Any]]:
        """The script's KEYS and ARGV: the named arguments, then the envelope as it is. Without a
        slot, KEYS[8] is a key the script leaves alone; so is KEYS[9] without a duration."""
        slots_key, member = self.slot if self.slot is not None else (self.stats_key, "")
        hist_key, labels, seconds = self.duration if self.duration is not None else (self.stats_key, "", 0.0)
        keys = [
            self.reply_key,
            self.call_key,
            self.breaker_key,
            self.stats_key,
            self.run_key,
            self.timers_key,
            self.bell_key,
            slots_key,
            hist_key,
        ]
        args = [
            lua.named(
                reply_ttl_s=self.reply_ttl_s,
                attempt=str(self.attempt),
                settle=self.settle,
                ok=self.ok,
                breaker=self.breaker.record_fields(),
                final=self.final,
                call_ttl_s=self.call_ttl_s,
                stats_field=self.stats_field,
                run_id=self.run_id,
                member=member,
                series=labels,
                duration_s=round(seconds, 6),
            ),
            self.envelope,
        ]
        return keys, args


class Replier:
    """The tool worker's side: push an attempt's reply, settling the call when the attempt ran
    the tool (and is still the call's current attempt), so the agent need not. `send` on the
    process's blocking client; `send_async` on the tool loop's asyncio client, so no thread
    stands between a tool's end and its reply."""

    def __init__(self, r: redis.Redis) -> None:
        self._reply = r.register_script(REPLY_SCRIPT)
        self._async: dict[int, AsyncScript] = {}  # by id() of the asyncio client it was made for

    def send(self, reply: Reply) -> tuple[bool, str, str]:
        """Whether the call was settled here, and the breaker's states before and after."""
        keys, args = reply.keys_args()
        settled, before, after = self._reply(keys=keys, args=args)
        return bool(settled), str(before), str(after)

    async def send_async(self, ar: redis.asyncio.Redis, reply: Reply) -> tuple[bool, str, str]:
        """`send` on an asyncio client."""
        script = self._async.get(id(ar))
        if script is None:
            script = self._async[id(ar)] = ar.register_script(REPLY_SCRIPT)
        keys, args = reply.keys_args()
        settled, before, after = await script(keys=keys, args=args)
        return bool(settled), str(before), str(after)
