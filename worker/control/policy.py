"""Governance per agent: which tools it may call, which need a human's approval, and quotas
reserved before each call.

A policy (`allowed_tools`, `approve_tools`, `max_actions_per_hour`, `max_spend_usd_per_day`) lives
in Redis, set with `fleet policy set` or `PUT /v1/admin/policies/{agent}`. Before a tool call the gateway
reserves one action and the call's cost in one Lua script, so concurrent runs cannot overshoot
together. Actions count over a sliding hour; spend over the UTC day. A reservation is made once
per call id: a resumed or retried call gets the same decision and is not charged again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Annotated, Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from worker import lua
from worker.keys import Keys
from worker.units import MICRO, micro_from_usd

# The largest max_spend_usd_per_day a policy may hold: larger is a typo, and past ~1e302 the
# micro-dollar arithmetic overflows.
MAX_SPEND_USD_PER_DAY = 1_000_000.0
DECISION_TTL_S = 2 * 86400
NO_QUOTA = "no quota"  # the reason of a Decision that reserved nothing (the agent has no quota)

# Lua functions, so the gateway's admission script (worker/gateway/checks.py) runs the same code.
# policy_read(key) -> allowed_tools (a set, or false: the fleet's allowlist alone), max_actions,
# max_spend_micro (-1: no limit), approve_tools (a set, or false: none). A value that is not a
# valid policy denies every tool, as PolicyStore.get does (pydantic's strict mode there; the same
# rules here).
LUA_POLICY = lua.load("worker/control/policy_read.lua")

# quota_reserve(actions_key, spend_key, marker_key, call_id, max_actions, max_spend, cost, ttl_s,
# now_ms) -> 'verdict|actions|spent'; the first answer for a call id is its answer for good.
LUA_RESERVE = lua.load("worker/control/quota_reserve.lua")

# quota_refund(actions_key, spend_key, marker_key, call_id, cost): give back an allowed reservation
# (the admission script, when the run's tool-call budget refuses the call after its quota).
LUA_REFUND = lua.load("worker/control/quota_refund.lua")

# KEYS: the call's quota keys (PolicyStore.quota_keys: actions, the day's spend, the call's
# decision), then the key of the day it was charged to. ARGV[1]: the named arguments, read as `a`:
# call_id, max_actions and max_spend_micro (-1: no limit), cost_micro, ttl_s (the decision's and
# the day's), day (UTC YYYYMMDD, written as it is). Returns quota_reserve's 'verdict|actions|spent'
# (its verdict a QuotaVerdict).
_RESERVE = lua.load("worker/control/policy_reserve.lua")

# KEYS: the call's quota keys, of the day it was charged to. ARGV[1]: the named arguments, read as
# `a`: delta_micro. Corrects an allowed reservation's spend once; returns 1 if it did, else 0.
_ADJUST = lua.load("worker/control/policy_adjust.lua")


class QuotaVerdict(StrEnum):
    """A quota reservation's verdict: the first part of quota_reserve's 'verdict|actions|spent'."""

    ALLOWED = "allowed"
    MAX_ACTIONS_PER_HOUR = "max_actions_per_hour"  # the hour's actions are spent
    MAX_SPEND_USD_PER_DAY = "max_spend_usd_per_day"  # the call's cost would pass the day's spend


class Policy(BaseModel):
    """An agent's policy; None means no limit (tools: the fleet's allowlist applies alone)."""

    model_config = ConfigDict(extra="forbid")

    allowed_tools: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")]] | None = None
    # Tools whose calls by this agent wait for a human's approval, besides tools.approval.required.
    approve_tools: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")]] | None = None
    max_actions_per_hour: int | None = Field(None, ge=0)
    max_spend_usd_per_day: float | None = Field(None, ge=0, le=MAX_SPEND_USD_PER_DAY, allow_inf_nan=False)

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


def decision(agent: str, max_actions: int | None, max_spend_usd: float | None, raw: str) -> Decision:
    """The Decision of a reservation's `verdict|actions|spent` answer, with what is left; an
    unknown verdict raises ValueError. A reservation whose spend was corrected (policy_adjust.lua)
    answers `verdict|actions|spent|adj` to the same call id again."""
    text, actions, spent = raw.split("|")[:3]
    verdict = QuotaVerdict(text)
    remaining: dict[str, Any] = {}
    if max_actions is not None:
        remaining["actions_this_hour"] = max(0, max_actions - int(actions))
    if max_spend_usd is not None:
        remaining["spend_usd_today"] = round(max(0.0, max_spend_usd - int(spent) / MICRO), 6)
    if verdict is QuotaVerdict.ALLOWED:
        return Decision("allowed", "within quota", remaining)
    limit = max_actions if verdict is QuotaVerdict.MAX_ACTIONS_PER_HOUR else max_spend_usd
    return Decision("denied", f"{verdict}={limit} reached for agent {agent!r}", remaining)


class PolicyStore:
    """Policies and quota reservations of every agent."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._reserve = r.register_script(_RESERVE)
        self._adjust = r.register_script(_ADJUST)

    def get(self, agent: str) -> Policy:
        raw = self.r.get(self.keys.policy(agent))
        if not raw:
            return Policy()
        try:
            return Policy.model_validate_json(raw, strict=True)
        except ValueError:
            # A hand-edited key that does not parse must not open the gates: deny every tool.
            return Policy(allowed_tools=[], max_actions_per_hour=0)

    def set(self, agent: str, policy: Policy) -> None:
        if policy.is_empty():
            self.r.delete(self.keys.policy(agent))
        else:
            self.r.set(self.keys.policy(agent), policy.model_dump_json())

    def quota_keys(self, agent: str, call_id: str, day: str | None = None) -> list[str]:
        """The actions, spend (of `day`, UTC YYYYMMDD, default today) and decision keys of a call."""
        day = day or time.strftime("%Y%m%d", time.gmtime())
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
            return Decision("allowed", NO_QUOTA)
        max_actions = -1 if policy.max_actions_per_hour is None else policy.max_actions_per_hour
        max_spend = (
            -1 if policy.max_spend_usd_per_day is None else micro_from_usd(policy.max_spend_usd_per_day)
        )
        day = time.strftime("%Y%m%d", time.gmtime())
        raw = self._reserve(
            keys=[*self.quota_keys(agent, call_id, day), self.keys.quota_call_day(call_id)],
            args=[
                lua.named(
                    call_id=call_id,
                    max_actions=max_actions,
                    max_spend_micro=max_spend,
                    cost_micro=micro_from_usd(cost_usd),
                    ttl_s=DECISION_TTL_S,
                    day=day,
                )
            ],
        )
        return decision(agent, policy.max_actions_per_hour, policy.max_spend_usd_per_day, str(raw))

    def adjust_spend(self, agent: str, call_id: str, delta_usd: float) -> bool:
        """Correct today's spend by `delta_usd` once the call's real cost is known; only for a call
        that was charged (reserved at worst case under a quota), and only once. The correction
        lands on the UTC day the reservation was charged to, also when the call spans midnight."""
        day = self.r.get(self.keys.quota_call_day(call_id))
        day_text = day.decode() if isinstance(day, bytes) else day
        keys = self.quota_keys(agent, call_id, day_text)
        return bool(self._adjust(keys=keys, args=[lua.named(delta_micro=micro_from_usd(delta_usd))]))
