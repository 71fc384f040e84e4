"""Fleet-wide rate limits per tool (and optionally per tool and tenant): GCRA in one Lua script.

The script reads the time with `redis.call('TIME')`, so every worker shares one clock and one
schedule. A call either gets a slot now, or reserves the next free slot and is told how long to
wait for it; a slot that would not come within `max_wait_s` is not reserved and the call is
`rate_limited`. Nothing busy-spins and nothing parks ETA messages on the broker.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker import lua
from worker.keys import Keys

if TYPE_CHECKING:  # settings validates rates with parse_rate: importing this must stay light
    import redis

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_PERIOD_S = {"s": 1.0, "m": 60.0, "h": 3600.0}

# gcra(key, interval_ms, burst, max_wait_ms, cost, now_ms) -> allowed (0/1), wait_ms. A Lua
# function, so the gateway's admission script (worker/gateway/checks.py) runs the same code.
LUA_GCRA = lua.load("worker/gateway/gcra.lua")

# now_ms() and now_s(): Redis' clock (worker/now.lua), shared by every script that reads it.
LUA_NOW = lua.load("worker/now.lua")

_GCRA = lua.load("worker/gateway/ratelimit.lua")  # gcra at Redis' clock (milliseconds with a fraction)


@dataclass(frozen=True)
class Rate:
    """`count` calls per `period_s`, with `burst` calls allowed back to back."""

    count: float
    period_s: float
    burst: int = 1

    @property
    def interval_ms(self) -> float:
        return self.period_s * 1000.0 / self.count


def parse_rate(text: str, burst: int = 1) -> Rate:
    """`"20/s"`, `"600/m"` or `"5000/h"` as a Rate; ValueError for anything else."""
    match = _RATE_RE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate like '20/s', '600/m' or '5000/h'")
    return Rate(float(match.group(1)), _PERIOD_S[match.group(2)], burst)


@dataclass(frozen=True)
class Decision:
    """`allowed`: a slot is reserved, to be used after `wait_s`; otherwise the next slot is that far."""

    allowed: bool
    wait_s: float


class RateLimiter:
    """Takes slots from the fleet-wide schedule of a tool (or of a tool and a tenant), one script
    per slot. The gateway runs the same Lua function inside its admission script."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._gcra = r.register_script(_GCRA)

    def acquire(
        self, tool: str, rate: Rate, max_wait_s: float, tenant: str | None = None, cost: int = 1
    ) -> Decision:
        """Reserve the next slot (`cost` units of the rate, e.g. tokens) if it comes within `max_wait_s`."""
        key = self.keys.rate_limit(tool, tenant)
        max_wait_ms = max(0.0, max_wait_s) * 1000.0
        args = lua.named(
            interval_ms=rate.interval_ms, burst=rate.burst, max_wait_ms=max_wait_ms, cost=max(1, cost)
        )
        allowed, wait_ms = self._gcra(keys=[key], args=[args])
        return Decision(bool(allowed), math.ceil(float(wait_ms)) / 1000.0)
