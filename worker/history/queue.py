"""The archive queue in Redis: ended runs waiting to be written to the run history.

An ended run is a member of two sorted sets (`Keys.archive_due`: when a batch may next take it;
`Keys.archive_ended`: when it ended, for the lag metric), added by the script that ends it
(`LUA_ENQUEUE` in worker/run/store.py's end and cancel scripts), so no run can end unqueued.

- Claim: a thread in each agent worker's main process (`Scheduler`, worker/tasks.py) claims due
  runs in batches; a claim moves their due time CLAIM_S ahead, so a batch lost with its process
  is claimed again then. Each batch is sent as `fleet.archive_runs(run_ids)` on the `archive`
  queue, which tool workers consume (worker/history/archiver.py does the work).
- Settle: once the batch's transaction has committed, one script per run (pipelined) removes it
  from both sets and gives its Redis keys the short FLEET_HOT_TTL_S. A run whose record expired
  before it was archived is dropped as `lost`.
- Retry: a batch the database refused makes each run due again after a backoff that doubles per
  failure of that run (`retry_delay_s`), so the runs keep their full TTL until archived.

Counters (`Keys.stats_archive`): `archived`, `lost`, `failed` (failed batches).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
import structlog

from worker import lua
from worker.keys import Keys

log = structlog.get_logger("agentfleet.history")

CLAIM_S = 120.0  # a claimed batch not settled by then is claimed again
COUNTERS = ("archived", "lost", "failed")

# archive_enqueue(due zset, ended zset, run id, now (unix s)): the run waits to be archived.
LUA_ENQUEUE = lua.load("worker/history/archive_enqueue.lua")

# KEYS: the due zset. ARGV[1]: the named arguments, read as `a`: now (unix s), claim_s (the
# claim's length), limit (the batch's size). Returns the run ids claimed (due by now), each now
# due again `now + claim_s` later.
_CLAIM = lua.load("worker/history/claim.lua")

# KEYS: the due zset, the ended zset, the failures hash, the stats hash, then the run's keys whose
# TTL becomes the hot TTL. ARGV[1]: the named arguments, read as `a`: run_id, outcome ('archived'
# or 'lost'), hot_ttl_s.
# A run already settled (by an earlier batch that held it too) is not counted again; its keys'
# TTLs are still shortened, which changes nothing. Returns 1 when this call settled it.
_SETTLE = lua.load("worker/history/settle.lua")

# KEYS: the due zset, the failures hash, the stats hash. ARGV[1]: the named arguments, read as
# `a`: now (unix s), first_s (the first retry's delay), longest_s (the longest delay), run_ids
# (the failed batch's). Each run still waiting is due again after
# min(longest_s, first_s * 2^(its failures - 1)).
_RETRY = lua.load("worker/history/retry.lua")


def hot_keys(keys: Keys, run_id: str, steps: int) -> list[str]:
    """The keys of an ended run that would otherwise live FLEET_RUN_TTL_S: its hash, step log and
    events, and the records of the calls its steps made (`<run id>:<step>:0`, and the spend
    reservation of a model call's first attempt)."""
    found = [keys.run(run_id), keys.run_steps(run_id), keys.run_events(run_id), keys.run_cancel(run_id)]
    for step in range(1, steps + 1):
        call_id = f"{run_id}:{step}:0"
        found += [keys.call(call_id), keys.call_spend(call_id), keys.call_exec(call_id)]
    return found


class ArchiveQueue:
    """The runs waiting to be archived, for one key prefix (see the module's docstring)."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._claim = r.register_script(_CLAIM)
        self._settle = r.register_script(_SETTLE)
        self._retry = r.register_script(_RETRY)

    def claim_due(self, limit: int, now: float | None = None, claim_s: float = CLAIM_S) -> list[str]:
        """Claim up to `limit` runs due at `now` for `claim_s`."""
        now = time.time() if now is None else now
        ids = self._claim(
            keys=[self.keys.archive_due()], args=[lua.named(now=now, claim_s=claim_s, limit=limit)]
        )
        return [str(run_id) for run_id in ids]

    def settle(self, outcomes: Sequence[tuple[str, str, list[str]]], hot_ttl_s: int) -> list[str]:
        """Settle runs after their batch: (run id, 'archived' or 'lost', the run's keys to give
        `hot_ttl_s`), one script each in one round trip. Returns the runs that were no longer in
        the queue (settled by another batch, or erased by DELETE /v1/runs/{id} meanwhile)."""
        if not outcomes:
            return []
        keys = self.keys
        head = [keys.archive_due(), keys.archive_ended(), keys.archive_failures(), keys.stats_archive()]
        pipe = self.r.pipeline(transaction=False)
        for run_id, outcome, run_keys in outcomes:
            args = lua.named(run_id=run_id, outcome=outcome, hot_ttl_s=hot_ttl_s)
            self._settle(keys=[*head, *run_keys], args=[args], client=pipe)
        return [
            run_id
            for (run_id, _, _), settled in zip(outcomes, pipe.execute(), strict=True)
            if not int(settled)
        ]

    def retry(
        self, run_ids: Sequence[str], first_s: float, longest_s: float, now: float | None = None
    ) -> None:
        """A batch failed: each of its runs is due again after its backoff."""
        now = time.time() if now is None else now
        self._retry(
            keys=[self.keys.archive_due(), self.keys.archive_failures(), self.keys.stats_archive()],
            args=[lua.named(now=now, first_s=first_s, longest_s=longest_s, run_ids=list(run_ids))],
        )

    def counts(self) -> dict[str, int]:
        """`archived`, `lost` and `failed` (batches) since the fleet's Redis began."""
        raw = self.r.hgetall(self.keys.stats_archive())
        found = {str(k): int(v) for k, v in raw.items()}
        return {name: found.get(name, 0) for name in COUNTERS}

    def backlog(self, now: float | None = None) -> tuple[int, float]:
        """(runs ended and not yet archived, age in s of the oldest one's end; 0 when none)."""
        now = time.time() if now is None else now
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(self.keys.archive_ended())
        pipe.zrange(self.keys.archive_ended(), 0, 0, withscores=True)
        count, oldest = pipe.execute()
        age = max(0.0, now - float(oldest[0][1])) if oldest else 0.0
        return int(count), age


Send = Callable[[list[str]], None]


@dataclass
class Scheduler:
    """Claims due runs and sends each batch to the archive queue, every `tick_s`, in a thread of
    an agent worker's main process (worker/tasks.py)."""

    queue: ArchiveQueue
    send: Send  # sends fleet.archive_runs(run_ids) on the archive queue
    batch: int
    tick_s: float = 0.2

    def tick(self) -> int:
        """Send every due run, batch after batch while full batches are due; how many."""
        sent = 0
        while True:
            claimed = self.queue.claim_due(self.batch)
            if claimed:
                self.send(claimed)
            sent += len(claimed)
            if len(claimed) < self.batch:
                return sent

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set; after an error (Redis or the broker down) go on a second later."""
        while not stop.is_set():
            try:
                self.tick()
                stop.wait(self.tick_s)
            except Exception as exc:
                log.warning("archive scheduler error", error=f"{type(exc).__name__}: {exc}"[:200])
                stop.wait(1.0)
