"""Run leases: a run whose worker died resumes within seconds, not after the broker's visibility
timeout (the reaper that requeues it: worker/run/reaper.py).

An executing run holds a lease in Redis (`run:<id>:lease`, value = the holder's token) that its
process's keeper thread (worker/run/keeper.py) renews every `LEASE_TTL_S / 3`; the lease's expiry is
also kept in one sorted set. Every agent worker's main process runs a reaper that ends runs past
their deadline that nobody executes (RunStore.end_overdue), and claims expired leases
(atomically, so several reapers never requeue one run twice) and requeues those runs. A delivery
of a run whose lease is held elsewhere (a late redelivery of the original message) is dropped;
one whose holder is a dead process on this host takes over at once. The lease is taken in the
script that starts the run (RunStore.start) and released in the one that ends it.
"""

from __future__ import annotations

import os
import socket
import uuid

import redis

from worker import lua
from worker.keys import Keys

LEASE_TTL_S = 10.0
REAP_CLAIM_S = 30.0  # a claimed run is not reaped again for this long

# Extends a lease its holder still holds. KEYS: the run's lease, the leases zset. ARGV[1], named:
# token, ttl_ms, run_id. Returns 1 when renewed, 0 when the lease is another's or gone.
_RENEW = lua.load("worker/run/lease_renew.lua")

# Drops the lease if `token` holds it, and the run from the leases zset. KEYS: the run's lease, the
# leases zset. ARGV[1], named: token, run_id.
_RELEASE = lua.load("worker/run/lease_release.lua")

# The runs whose lease expiry (by Redis' clock) has passed. KEYS[1] = the leases zset.
_DUE = lua.load("worker/run/lease_due.lua")

# Claims the runs among _DUE's answer whose lease is gone; returns the run ids this call claimed.
# KEYS: the leases zset, then each candidate's lease. ARGV[1], named: claim_ms (the claim's
# length), run_ids (the candidates', in KEYS order).
_REAP = lua.load("worker/run/lease_reap.lua")


def new_token() -> str:
    """`host:pid:random`: who holds a lease, and whether that process still lives here."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(token: str) -> bool:
    """True when the token's process ran on this host and is gone (or a zombie: a pool child
    whose worker was killed with it waits for an init that may never reap it)."""
    host, _, rest = token.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid_text))


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return False  # not Linux, or gone since: the lease's expiry decides


class Leases:
    """Run leases of one fleet."""

    def __init__(self, r: redis.Redis, keys: Keys, ttl_s: float = LEASE_TTL_S) -> None:
        self.r = r
        self.keys = keys
        self.ttl_ms = int(ttl_s * 1000)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._due = r.register_script(_DUE)
        self._reap = r.register_script(_REAP)

    def renew(self, run_id: str, token: str) -> bool:
        keys = [self.keys.run_lease(run_id), self.keys.leases()]
        return bool(self._renew(keys=keys, args=[lua.named(token=token, ttl_ms=self.ttl_ms, run_id=run_id)]))

    def release(self, run_id: str, token: str) -> None:
        self._release(
            keys=[self.keys.run_lease(run_id), self.keys.leases()],
            args=[lua.named(token=token, run_id=run_id)],
        )

    def reap(self) -> list[str]:
        """Claim the runs whose lease expired; the caller requeues them."""
        due = [str(run_id) for run_id in self._due(keys=[self.keys.leases()])]
        if not due:
            return []
        claimed = self._reap(
            keys=[self.keys.leases(), *(self.keys.run_lease(run_id) for run_id in due)],
            args=[lua.named(claim_ms=int(REAP_CLAIM_S * 1000), run_ids=due)],
        )
        return [str(run_id) for run_id in claimed]

    def forget(self, run_id: str) -> None:
        self.r.zrem(self.keys.leases(), run_id)
