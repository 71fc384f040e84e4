"""A run's spend: model tokens and cost reserved before each model attempt, tool costs charged.

Before each model **attempt** (not each call: a retry can be billed again) the worst case (prompt
estimate + the call's max_tokens, priced) is reserved in the run's hash by one Lua script that
refuses a reservation the remaining budget cannot cover, so no attempt starts that could
overspend, also with parallel calls or a resumed run. After the attempt the reservation is settled
(`attempt_charge`): at the usage the model reported when it answered; at zero when the request
never left the fleet or the model service refused it before processing (HTTP 400, 401, 403, 429);
at the worst case otherwise (a timeout, a lost connection, a 5xx, an answer that does not parse:
the provider may have billed it). Each reservation and settlement happens once per attempt.

A tool's declared cost (`tools.costs_usd.<tool>`, else the tool's `cost_usd`) is charged against
the same `max_cost_usd` once per call before the call is made; a call it would overspend is not
made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from worker import lua
from worker.keys import Keys
from worker.units import micro_from_usd

# A model service's answers that refuse a request before processing it: not billed.
REFUSED_STATUSES = frozenset({400, 401, 403, 429})
# Outcomes of an attempt whose request never left the fleet.
_NOT_SENT = frozenset({"killed", "denied", "rate_limited", "circuit_open", "invalid_args"})

# An attempt's worst case, reserved once per attempt unless the run's budgets cannot cover it.
# KEYS: the run, the attempt's reservation. ARGV[1], named: tokens, cost_micro, max_tokens,
# max_cost_micro, ttl_s (the reservation's). Returns a ReserveVerdict.
_RESERVE = lua.load("worker/run/spend_reserve.lua")

# KEYS: the run, the attempt's reservation, the fleet's spend stats. ARGV[1], named: tokens and
# cost_micro (what is charged), cost_by_tenant (true/false), model (the model's label), input_tokens
# and output_tokens (what it reported). Returns 1 the one time it settles, else 0.
_SETTLE = lua.load("worker/run/spend_settle.lua")

# A tool call's declared cost, charged once per call id unless it would pass max_cost_usd.
# KEYS: the run, the call's charge, the fleet's spend stats. ARGV[1], named: cost_micro,
# max_cost_micro, ttl_s (the charge's), check_only (true: only check that it would fit, before the
# call is admitted and counted), cost_by_tenant (as _SETTLE's). Returns a ChargeVerdict.
_CHARGE = lua.load("worker/run/spend_charge.lua")


class ReserveVerdict(StrEnum):
    """What the reserve script answered (an unknown answer raises ValueError); a refusal is the
    budget the run stops on."""

    RESERVED = "reserved"  # now, or already for this attempt
    MAX_TOKENS = "max_tokens"
    MAX_COST = "max_cost"


class ChargeVerdict(StrEnum):
    """What the charge script answered (an unknown answer raises ValueError)."""

    CHARGED = "charged"  # now, or already for this call
    FITS = "fits"  # check_only: it would fit; nothing changed
    MAX_COST = "max_cost"


@dataclass(frozen=True)
class Prices:
    """USD per million tokens."""

    input: float = 0.0
    output: float = 0.0

    def cost_micro(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Micro-dollars for that many tokens, rounded up."""
        return math.ceil(prompt_tokens * self.input + completion_tokens * self.output)


@dataclass(frozen=True)
class ModelCallCost:
    """What one model call may cost per attempt (its worst case), its prices, and the run's caps."""

    worst_tokens: int
    worst_micro: int
    prices: Prices
    max_tokens: int
    max_cost_usd: float


def reported_usage(result: dict[str, Any]) -> tuple[int, int]:
    """The input and output tokens a model attempt's result reports (0, 0 without an answer)."""
    if not result.get("ok"):
        return 0, 0
    usage = (result.get("result") or {}).get("usage") or {}
    return int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))


def attempt_charge(result: dict[str, Any], cost: ModelCallCost) -> tuple[int, int]:
    """(tokens, micro-dollars) one model attempt is settled at, from its result envelope.

    The reported usage when the model answered; zero when the request never left the fleet or the
    service refused it before processing (HTTP 400, 401, 403, 429); else the worst case.
    """
    if result.get("ok"):
        usage = (result.get("result") or {}).get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        return prompt + completion, cost.prices.cost_micro(prompt, completion)
    error = result.get("error") or {}
    if error.get("type") in _NOT_SENT or error.get("status") in REFUSED_STATUSES:
        return 0, 0
    return cost.worst_tokens, cost.worst_micro


class SpendBudget:
    """Reserves and settles the model spend of one run, and charges its tool costs."""

    def __init__(
        self, r: redis.Redis, keys: Keys, run_id: str, ttl_s: int, cost_by_tenant: bool = False
    ) -> None:
        self.keys = keys
        self.run_key = keys.run(run_id)
        self.ttl_s = ttl_s
        self.cost_by_tenant = cost_by_tenant  # settings.metrics.cost_by_tenant
        self._reserve = r.register_script(_RESERVE)
        self._settle = r.register_script(_SETTLE)
        self._charge = r.register_script(_CHARGE)

    def reserve(
        self, call_id: str, attempt: int, tokens: int, cost_micro: int, max_tokens: int, max_cost_usd: float
    ) -> ReserveVerdict | None:
        """None when reserved (or already reserved for this attempt); else `MAX_TOKENS` or `MAX_COST`."""
        verdict = ReserveVerdict(
            self._reserve(
                keys=[self.run_key, self.keys.attempt_spend(call_id, attempt)],
                args=[
                    lua.named(
                        tokens=tokens,
                        cost_micro=cost_micro,
                        max_tokens=max_tokens,
                        max_cost_micro=micro_from_usd(max_cost_usd),
                        ttl_s=self.ttl_s,
                    )
                ],
            )
        )
        return None if verdict is ReserveVerdict.RESERVED else verdict

    def settle(
        self,
        call_id: str,
        attempt: int,
        tokens: int,
        cost_micro: int,
        usage: tuple[str, int, int] = ("", 0, 0),
    ) -> bool:
        """Replace the attempt's reservation by what it is charged; True the one time it does.
        The same time, the charge counts in the fleet's cost by agent and `usage` (the model's
        label, the input and output tokens it reported) in its tokens (fleet_cost_usd_total,
        fleet_model_tokens_total)."""
        model, input_tokens, output_tokens = usage
        return bool(
            self._settle(
                keys=[self.run_key, self.keys.attempt_spend(call_id, attempt), self.keys.stats_spend()],
                args=[
                    lua.named(
                        tokens=tokens,
                        cost_micro=cost_micro,
                        cost_by_tenant=self.cost_by_tenant,
                        model=model,
                        input_tokens=input_tokens,
                        output_tokens=output_tokens,
                    )
                ],
            )
        )

    def charge_tool(
        self, call_id: str, cost_micro: int, max_cost_usd: float, *, check_only: bool = False
    ) -> ChargeVerdict | None:
        """Charge a tool call's declared cost once: None when charged (now or before), else
        `MAX_COST`. With `check_only`, None when it would fit (or was charged), and nothing changes.
        """
        verdict = ChargeVerdict(
            self._charge(
                keys=[self.run_key, self.keys.call_spend(call_id), self.keys.stats_spend()],
                args=[
                    lua.named(
                        cost_micro=cost_micro,
                        max_cost_micro=micro_from_usd(max_cost_usd),
                        ttl_s=self.ttl_s,
                        check_only=check_only,
                        cost_by_tenant=self.cost_by_tenant,
                    )
                ],
            )
        )
        return None if verdict in (ChargeVerdict.CHARGED, ChargeVerdict.FITS) else verdict
