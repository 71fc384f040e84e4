"""Circuit breakers per tool, shared by the fleet (one Redis hash per tool, changed by Lua).

closed -> open: after `failure_threshold` consecutive failures, or when the failure rate over
the last `window_s` reaches `failure_rate` with at least `min_calls` calls.
open -> half_open: after `cooldown_s`, one probe call at a time is let through.
half_open -> closed on a probe's success; -> open again on its failure.
While open, a call returns `circuit_open` at once and no request leaves the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from worker import lua
from worker.keys import Keys

if TYPE_CHECKING:  # settings validates tools.breaker with BreakerPolicy: importing this must stay light
    import redis

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# Lua functions, so the gateway's admission script (worker/gateway/checks.py) runs the same code.
# breaker_allow(key, cooldown_ms, probe_timeout_ms, now_ms) -> allowed (0/1), state, retry_in_ms
LUA_ALLOW = lua.load("worker/gateway/breaker_allow.lua")

# breaker_record(key, ok, threshold, rate, min_calls, window_ms, now_ms) -> state before, after
LUA_RECORD = lua.load("worker/gateway/breaker_record.lua")

_ALLOW = lua.load("worker/gateway/breaker_ask.lua")  # breaker_allow at Redis' clock
_RECORD = lua.load("worker/gateway/breaker_report.lua")  # breaker_record at Redis' clock


@dataclass(frozen=True)
class BreakerPolicy:
    """When a tool's breaker opens and how long it stays open; `tools.breaker` in the settings, which
    are validated by `check`, as every policy is when it is made."""

    failure_threshold: int = 5
    failure_rate: float = 0.5
    min_calls: int = 10
    window_s: float = 30.0
    cooldown_s: float = 10.0
    probe_timeout_s: float = 30.0  # a probe that never reports back frees the half-open slot after this

    def __post_init__(self) -> None:
        for field in fields(self):
            self.check(field.name, getattr(self, field.name))

    @staticmethod
    def check(name: str, value: float) -> None:
        """ValueError unless `value` may be the policy's `name`: each is > 0, failure_rate also <= 1."""
        if name == "failure_rate":
            if not 0 < value <= 1:
                raise ValueError("failure_rate must be > 0 and <= 1")
        elif not value > 0:
            raise ValueError(f"{name} must be > 0")

    def record_fields(self) -> dict[str, float]:
        """What breaker_record reads, as the named argument `breaker` of the scripts that report an
        outcome (breaker_report.lua, settle.lua, reply.lua): threshold, rate, min_calls, window_ms."""
        return {
            "threshold": self.failure_threshold,
            "rate": self.failure_rate,
            "min_calls": self.min_calls,
            "window_ms": int(self.window_s * 1000),
        }


@dataclass(frozen=True)
class Admission:
    allowed: bool
    state: str
    retry_in_s: float


class CircuitBreaker:
    """The fleet's breakers on their own, one script per question: ask before a call, report its
    outcome after. The gateway runs the same Lua functions inside its admission script."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._allow = r.register_script(_ALLOW)
        self._record = r.register_script(_RECORD)

    def allow(self, tool: str, policy: BreakerPolicy) -> Admission:
        allowed, state, retry_ms = self._allow(
            keys=[self.keys.breaker(tool)],
            args=[
                lua.named(
                    cooldown_ms=int(policy.cooldown_s * 1000), probe_ms=int(policy.probe_timeout_s * 1000)
                )
            ],
        )
        return Admission(bool(allowed), str(state), int(retry_ms) / 1000.0)

    def record(self, tool: str, ok: bool, policy: BreakerPolicy) -> str:
        """Report a call's outcome; returns the state after it."""
        return self.record_change(tool, ok, policy)[1]

    def record_change(self, tool: str, ok: bool, policy: BreakerPolicy) -> tuple[str, str]:
        """Report a call's outcome; returns the states before and after it."""
        before, after = self._record(
            keys=[self.keys.breaker(tool)], args=[lua.named(ok=ok, breaker=policy.record_fields())]
        )
        return str(before), str(after)
