"""Retry budgets per tool, shared by the fleet: retries may be at most `ratio` of the calls
over a sliding window (plus `min_retries`), so a dependency that is down does not see the fleet
multiply its load. Two fixed windows, the previous one weighted by how much of it still slides in.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from worker import lua
from worker.keys import Keys

if TYPE_CHECKING:  # settings validates tools.retry_budget with RetryPolicy: importing this must stay light
    import redis

# retry_budget(key, op, ratio, min_retries, window_ms, now_ms) -> 1 (counted / granted) or 0. A Lua
# function, so the gateway's admission script (worker/gateway/checks.py) runs the same code.
LUA_SPEND = lua.load("worker/gateway/retry_budget.lua")

_SPEND = lua.load("worker/gateway/retrybudget_spend.lua")  # retry_budget at Redis' clock


@dataclass(frozen=True)
class RetryPolicy:
    """How many retries a tool's budget grants; `tools.retry_budget` in the settings, which are
    validated by `check`, as every policy is when it is made."""

    ratio: float = 0.2  # retries per call over the window, 0 to 10
    min_retries: int = 3  # granted on top of the ratio, so a quiet tool can still retry
    window_s: float = 60.0

    def __post_init__(self) -> None:
        for field in fields(self):
            self.check(field.name, getattr(self, field.name))

    @staticmethod
    def check(name: str, value: float) -> None:
        """ValueError unless `value` may be the policy's `name`."""
        if name == "ratio" and not 0 <= value <= 10:
            raise ValueError("ratio must be >= 0 and <= 10")
        if name == "min_retries" and not value >= 0:
            raise ValueError("min_retries must be >= 0")
        if name == "window_s" and not value > 0:
            raise ValueError("window_s must be > 0")


class RetryBudget:
    """Counts first attempts and grants retries within the fleet-wide budget of each tool."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._spend = r.register_script(_SPEND)

    def _run(self, op: str, tool: str, policy: RetryPolicy) -> bool:
        args = lua.named(
            op=op, ratio=policy.ratio, min_retries=policy.min_retries, window_ms=int(policy.window_s * 1000)
        )
        return bool(self._spend(keys=[self.keys.retry_budget(tool)], args=[args]))

    def note_call(self, tool: str, policy: RetryPolicy) -> None:
        """Count a first attempt."""
        self._run("call", tool, policy)

    def try_retry(self, tool: str, policy: RetryPolicy) -> bool:
        """Take one retry from the budget; False when the fleet already retries too much."""
        return self._run("retry", tool, policy)
