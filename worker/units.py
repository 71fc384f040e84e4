"""The units the fleet counts in, each defined once.

Money is counted in micro-dollars, as integers: in Redis (a run's `cost_micro`, an agent's daily
spend, the fleet's cost stats) and in the run history's `cost_micro` columns, so sums are exact.
Dollars are what users set and read (`max_cost_usd`, `cost_usd`), to the micro-dollar.
"""

from __future__ import annotations

MICRO = 1_000_000  # micro-dollars in a dollar


def micro_from_usd(usd: float) -> int:
    """Dollars as whole micro-dollars, rounded to the nearest."""
    return round(usd * MICRO)


def usd_from_micro(micro: int) -> float:
    """Micro-dollars as dollars, rounded to 6 places (the micro-dollar)."""
    return round(micro / MICRO, 6)
