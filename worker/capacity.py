"""Redis capacity: the bytes a run takes in each of its states, and whether Redis' `maxmemory`
holds FLEET_MAX_QUEUED queued runs, the live runs and the hot set (README "Capacity").

The bytes are measured by bench/bench_run_bytes.py (1,000 runs a state on Redis 7, 8 running;
the larger of MEMORY USAGE and used_memory's growth, rounded up; running: MEMORY USAGE, as 8 runs'
growth of used_memory is mostly the pool children's new connections). Two thirds of each is the
run's events stream: a Redis stream allocates a 4 KiB node for its first entry.

The hot set (ended runs whose keys live on for FLEET_HOT_TTL_S) is estimated from the archive's
rate: `ArchiveRate` reads the `archived` counter at most once a RATE_WINDOW_S and keeps the last
window's rate, so hot runs = that rate * FLEET_HOT_TTL_S, plus the ended runs not yet archived
(they keep their full TTL). Until a window has passed, the hot set counts those alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio

from worker.keys import Keys
from worker.settings import Settings

QUEUED_RUN_BYTES = 7_200  # run hash, events stream, agents-queue message, queued-set entry
RUNNING_RUN_BYTES = 7_700  # run hash, events stream, unacked message, lease, deadline
WAITING_RUN_BYTES = 7_600  # run hash, events stream, timer, deadline (and a call record on a tool)
# run hash, events stream, a step log of three steps and two tool calls' records (6,600 with one step)
HOT_RUN_BYTES = 7_700
HEADROOM = 1.25  # allocator fragmentation, connection buffers, the fleet's other keys
RATE_WINDOW_S = 60.0
MIB = 2**20


def needed_bytes(queued: int, live: int, hot: int) -> int:
    """The maxmemory that `queued` queued runs, `live` running or waiting runs and `hot` hot runs
    need, with HEADROOM."""
    runs = queued * QUEUED_RUN_BYTES + live * max(RUNNING_RUN_BYTES, WAITING_RUN_BYTES)
    return math.ceil((runs + hot * HOT_RUN_BYTES) * HEADROOM)


@dataclass(frozen=True)
class Capacity:
    """What Redis holds and may hold now; `maxmemory` 0 is unlimited."""

    maxmemory: int
    max_queued: int
    live_runs: int  # started and not ended: running or waiting
    hot_runs: int  # estimated (see the module's docstring)

    def needed(self) -> int:
        return needed_bytes(self.max_queued, self.live_runs, self.hot_runs)

    def warning(self) -> str | None:
        """A sentence when maxmemory is set and below what FLEET_MAX_QUEUED queued runs, the live
        runs and the hot set need; None otherwise."""
        needed = self.needed()
        if not self.maxmemory or self.maxmemory >= needed:
            return None
        return (
            f"Redis maxmemory is {self.maxmemory / MIB:.1f} MiB; FLEET_MAX_QUEUED={self.max_queued} "
            f"queued runs, {self.live_runs} running or waiting and about {self.hot_runs} hot runs need "
            f"about {needed / MIB:.1f} MiB (README: Capacity): raise maxmemory, or lower "
            "FLEET_MAX_QUEUED or FLEET_HOT_TTL_S"
        )


class ArchiveRate:
    """Runs archived a second, from the `archived` counter read at most once a `window_s`."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._since: tuple[float, int] | None = None  # (monotonic s, counter) at the window's start
        self.per_s: float | None = None  # the last full window's rate; None before one has passed

    def observe(self, archived: int, now: float | None = None) -> float | None:
        """Note the counter's value; the rate of the last full window."""
        now = time.monotonic() if now is None else now
        if self._since is None or archived < self._since[1]:  # first reading, or Redis was emptied
            self._since = (now, archived)
        elif now - self._since[0] >= self.window_s:
            self.per_s = (archived - self._since[1]) / (now - self._since[0])
            self._since = (now, archived)
        return self.per_s


async def read_capacity(
    r: redis.asyncio.Redis, keys: Keys, settings: Settings, rate: ArchiveRate
) -> Capacity:
    """Read maxmemory (INFO memory), the live runs, the archive's backlog and its counter in one
    round trip; FLEET_MAX_QUEUED and FLEET_HOT_TTL_S from `settings`."""
    pipe = r.pipeline(transaction=False)
    pipe.info("memory")
    pipe.zcard(keys.deadlines())
    pipe.zcard(keys.archive_ended())
    pipe.hget(keys.stats_archive(), "archived")
    memory, live, backlog, archived = await pipe.execute()
    per_s = rate.observe(int(archived or 0))
    hot = int(backlog) + (round(per_s * settings.hot_ttl_s) if per_s else 0)
    return Capacity(int(memory.get("maxmemory", 0)), settings.max_queued, int(live), hot)
