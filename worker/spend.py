"""A run's model spend: tokens and cost reserved before each model call, settled after it.

Before a call the worst case (prompt estimate + the call's max_tokens, priced) is reserved in the
run's hash by one Lua script that refuses a reservation the remaining budget cannot cover, so
no model call starts that could overspend, also with parallel calls or a resumed run. After the
call the reservation is replaced by the usage the model reported. Both are once per call id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from worker.keys import Keys

MICRO = 1_000_000

_RESERVE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'reserved' end
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'tokens_reserved') or '0')
local cost = tonumber(redis.call('HGET', KEYS[1], 'cost_micro') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'cost_reserved') or '0')
if tokens + tonumber(ARGV[1]) > tonumber(ARGV[3]) then return 'max_tokens' end
if cost + tonumber(ARGV[2]) > tonumber(ARGV[4]) then return 'max_cost' end
redis.call('HINCRBY', KEYS[1], 'tokens_reserved', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'cost_reserved', ARGV[2])
redis.call('HSET', KEYS[2], 'tokens', ARGV[1], 'cost', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 'reserved'
"""

_SETTLE = """
local tokens = redis.call('HGET', KEYS[2], 'tokens')
if not tokens or redis.call('HGET', KEYS[2], 'settled') then return 0 end
redis.call('HINCRBY', KEYS[1], 'tokens_reserved', -tonumber(tokens))
redis.call('HINCRBY', KEYS[1], 'cost_reserved', -tonumber(redis.call('HGET', KEYS[2], 'cost')))
redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'cost_micro', ARGV[2])
redis.call('HSET', KEYS[2], 'settled', 1)
return 1
"""


@dataclass(frozen=True)
class Prices:
    """USD per million tokens."""

    input: float = 0.0
    output: float = 0.0

    def cost_micro(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Micro-dollars for that many tokens, rounded up."""
        return math.ceil(prompt_tokens * self.input + completion_tokens * self.output)


class SpendBudget:
    """Reserves and settles the model spend of one run."""

    def __init__(self, r: redis.Redis, keys: Keys, run_id: str, ttl_s: int) -> None:
        self.keys = keys
        self.run_key = keys.run(run_id)
        self.ttl_s = ttl_s
        self._reserve = r.register_script(_RESERVE)
        self._settle = r.register_script(_SETTLE)

    def reserve(
        self, call_id: str, tokens: int, cost_micro: int, max_tokens: int, max_cost_usd: float
    ) -> str | None:
        """None when reserved (or already reserved for this call); else "max_tokens" or "max_cost"."""
        verdict = self._reserve(
            keys=[self.run_key, self.keys.call_spend(call_id)],
            args=[tokens, cost_micro, max_tokens, round(max_cost_usd * MICRO), self.ttl_s],
        )
        return None if verdict == "reserved" else str(verdict)

    def settle(self, call_id: str, tokens: int, cost_micro: int) -> bool:
        """Replace the call's reservation by what it really used; True the one time it does."""
        return bool(
            self._settle(keys=[self.run_key, self.keys.call_spend(call_id)], args=[tokens, cost_micro])
        )
