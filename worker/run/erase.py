"""Erasing an ended run from Redis, for DELETE /v1/runs/{id} (a data subject's request).

Removes every key named after the run (`Keys.run_keys`) and the keys of each of its tool and
model calls (found by SCAN with `Keys.run_call_patterns`, in slices, so Redis never blocks on it),
and drops the run from the fleet's sorted sets of live runs and from the archive queue should it
still be there. The caller checks first that the run has ended: a live run's keys are its state.
An archive batch that read the run just before it was erased writes it to the history again; the
archiver deletes such a run's rows when it finds the run gone from Redis as it settles the batch
(worker/history/archiver.py).
"""

from __future__ import annotations

import redis

from worker.keys import Keys

SCAN_COUNT = 1000


def erase_run(r: redis.Redis, keys: Keys, run_id: str) -> int:
    """Delete the run's keys and its calls' keys; returns how many keys existed."""
    found = list(keys.run_keys(run_id))
    for pattern in keys.run_call_patterns(run_id):
        found.extend(str(key) for key in r.scan_iter(match=pattern, count=SCAN_COUNT))
    pipe = r.pipeline(transaction=False)
    pipe.delete(*found)
    for live in (keys.deadlines(), keys.leases(), keys.timers(), keys.archive_due(), keys.archive_ended()):
        pipe.zrem(live, run_id)
    pipe.hdel(keys.archive_failures(), run_id)
    deleted = pipe.execute()[0]
    return int(deleted)
