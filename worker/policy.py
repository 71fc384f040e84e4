"""Governance per agent: which tools it may call, and quotas reserved before each call.

A policy (`allowed_tools`, `max_actions_per_hour`, `max_spend_usd_per_day`) lives in Redis, set
with `fleet policy set` or `PUT /v1/admin/policies/{agent}`. Before a tool call the gateway
reserves one action and the call's cost in one Lua script, so concurrent runs cannot overshoot
together. Actions count over a sliding hour; spend over the UTC day. A reservation is made once
per call id: a resumed or retried call gets the same decision and is not charged again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from worker.keys import Keys

MICRO = 1_000_000  # spend is kept in micro-dollars, as integers
DECISION_TTL_S = 2 * 86400

_RESERVE = """
local marker = redis.call('GET', KEYS[3])
if marker then return {1, marker} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_actions, max_spend, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local actions = 0
if max_actions >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600000)
  actions = redis.call('ZCARD', KEYS[1])
end
local spent = tonumber(redis.call('GET', KEYS[2]) or '0')
local verdict = 'allowed'
if max_actions >= 0 and actions >= max_actions then
  verdict = 'max_actions_per_hour'
elseif max_spend >= 0 and spent + cost > max_spend then
  verdict = 'max_spend_usd_per_day'
end
if verdict == 'allowed' then
  if max_actions >= 0 then
    redis.call('ZADD', KEYS[1], now, ARGV[1])
    redis.call('PEXPIRE', KEYS[1], 3600000)
    actions = actions + 1
  end
  spent = redis.call('INCRBY', KEYS[2], cost)
  redis.call('EXPIRE', KEYS[2], 2 * 86400)
end
local decision = verdict .. '|' .. actions .. '|' .. spent
redis.call('SET', KEYS[3], decision, 'EX', ARGV[5])
return {0, decision}
"""

_ADJUST = """
local marker = redis.call('GET', KEYS[3])
if not marker or string.sub(marker, 1, 7) ~= 'allowed' or string.sub(marker, -4) == '|adj' then return 0 end
redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], marker .. '|adj', 'KEEPTTL')
return 1
"""

_REFUND = """
local marker = redis.call('GET', KEYS[3])
if not marker or string.sub(marker, 1, 7) ~= 'allowed' then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DECRBY', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
return 1
"""


class Policy(BaseModel):
    """An agent's policy; None means no limit (tools: the fleet's allowlist applies alone)."""

    model_config = ConfigDict(extra="forbid")

    allowed_tools: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")]] | None = None
    max_actions_per_hour: int | None = Field(None, ge=0)
    max_spend_usd_per_day: float | None = Field(None, ge=0, allow_inf_nan=False)

    def is_empty(self) -> bool:
        return self == Policy()


@dataclass(frozen=True)
class Decision:
    """What the gateway decided about one tool call, as written into the run's step log."""

    decision: str  # "allowed" or "denied"
    reason: str
    remaining: dict[str, Any] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.decision == "allowed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PolicyStore:
    """Policies and quota reservations of every agent."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._reserve = r.register_script(_RESERVE)
        self._refund = r.register_script(_REFUND)
        self._adjust = r.register_script(_ADJUST)

    def get(self, agent: str) -> Policy:
        raw = self.r.get(self.keys.policy(agent))
        if not raw:
            return Policy()
        try:
            return Policy.model_validate_json(raw)
        except ValueError:
            # A hand-edited key that does not parse must not open the gates: deny every tool.
            return Policy(allowed_tools=[], max_actions_per_hour=0)

    def set(self, agent: str, policy: Policy) -> None:
        if policy.is_empty():
            self.r.delete(self.keys.policy(agent))
        else:
            self.r.set(self.keys.policy(agent), policy.model_dump_json())

    def _quota_keys(self, agent: str, call_id: str) -> list[str]:
        day = time.strftime("%Y%m%d", time.gmtime())
        return [
            self.keys.quota_actions(agent),
            self.keys.quota_spend(agent, day),
            self.keys.quota_call(call_id),
        ]

    def reserve(
        self, agent: str, call_id: str, policy: Policy, cost_usd: float, *, count_action: bool = True
    ) -> Decision:
        """Reserve one action (unless `count_action` is False: a model call is no action) and
        `cost_usd` for the call, or deny it; the same answer every time for one call id."""
        if not count_action:
            policy = policy.model_copy(update={"max_actions_per_hour": None})
        if policy.max_actions_per_hour is None and policy.max_spend_usd_per_day is None:
            return Decision("allowed", "no quota")
        max_actions = -1 if policy.max_actions_per_hour is None else policy.max_actions_per_hour
        max_spend = (
            -1 if policy.max_spend_usd_per_day is None else round(policy.max_spend_usd_per_day * MICRO)
        )
        _, raw = self._reserve(
            keys=self._quota_keys(agent, call_id),
            args=[call_id, max_actions, max_spend, round(cost_usd * MICRO), DECISION_TTL_S],
        )
        verdict, actions, spent = str(raw).split("|")
        remaining: dict[str, Any] = {}
        if policy.max_actions_per_hour is not None:
            remaining["actions_this_hour"] = max(0, policy.max_actions_per_hour - int(actions))
        if policy.max_spend_usd_per_day is not None:
            remaining["spend_usd_today"] = round(
                max(0.0, policy.max_spend_usd_per_day - int(spent) / MICRO), 6
            )
        if verdict == "allowed":
            return Decision("allowed", "within quota", remaining)
        limit = (
            policy.max_actions_per_hour if verdict == "max_actions_per_hour" else policy.max_spend_usd_per_day
        )
        return Decision("denied", f"{verdict}={limit} reached for agent {agent!r}", remaining)

    def adjust_spend(self, agent: str, call_id: str, delta_usd: float) -> bool:
        """Correct today's spend by `delta_usd` once the call's real cost is known; only for a call
        that was charged (reserved at worst case under a quota), and only once."""
        return bool(self._adjust(keys=self._quota_keys(agent, call_id), args=[round(delta_usd * MICRO)]))

    def refund(self, agent: str, call_id: str, cost_usd: float) -> None:
        """Give back a reservation whose call was never made."""
        self._refund(keys=self._quota_keys(agent, call_id), args=[call_id, round(cost_usd * MICRO)])
