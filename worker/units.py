"""The units the fleet counts in, each defined once.

Money is counted in micro-dollars, as integers: in Redis (a run's `cost_micro`, an agent's daily
spend, the fleet's cost stats) and in the run history's `cost_micro` columns, so sums are exact.
Dollars are what users set and read (`max_cost_usd`, `cost_usd`), to the micro-dollar.

A run's share is a number in [0, 1) fixed by its run id: every split of runs by a fraction (the
canary's percent, the log sampling rate) compares it, so a run falls on the same side in every
process.
"""

from __future__ import annotations

import hashlib

MICRO = 1_000_000  # micro-dollars in a dollar


def micro_from_usd(usd: float) -> int:
    """Dollars as whole micro-dollars, rounded to the nearest."""
    return round(usd * MICRO)


def usd_from_micro(micro: int) -> float:
    """Micro-dollars as dollars, rounded to 6 places (the micro-dollar)."""
    return round(micro / MICRO, 6)


def run_share(run_id: str) -> float:
    """The run's place in [0, 1): the first 32 bits of its id's SHA-256, the same in every process."""
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16) / 2**32
