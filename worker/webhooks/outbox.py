"""The webhook outbox in Redis: pending deliveries, their due times, and the claim of due ones.

A delivery is a hash (`Keys.webhook(id)`: run_id, tenant, url, event, data, first_ts, attempts,
claims, and body once built) with a member in two sorted sets: `Keys.webhooks_due` (when its next
attempt is due) and `Keys.webhooks_born` (when its event happened: the oldest's age is a metric).
The three are written together and removed together, each time in one script or transaction, so
waiting for a retry holds nothing but these entries.

- Enqueue: in the script that records the event (`LUA_ENQUEUE`: the end script and the cancel
  of a queued run in worker/run/store.py, the approval's ask in worker/control/approvals.py). Only a run
  whose record holds a `webhook` subscribed to the event gets a delivery.
- Claim: each agent worker's main process runs `Scheduler` (worker/tasks.py). `Outbox.claim_due`
  moves each due delivery `lead_s` ahead (the attempt's timeout + CLAIM_GRACE_S) and counts the
  claim, so another scheduler does not claim it again and a lost send is claimed again later; the
  scheduler sends `fleet.deliver_webhook(id, claim)` on the `webhooks` queue. A delivery older
  than `webhooks.max_age_s` is dropped (`expired`) instead.
- Settle: after one attempt (worker/webhooks/delivery.py), `Outbox.settle` in one script drops the
  delivery (`delivered` on a 2xx; `gone` on a 410, which also removes the run's webhook so its
  later events send nothing; `refused` when its host or secret is no longer configured;
  `expired` when the next attempt would be past max_age_s), or sets its next due time
  (`failed`). Each outcome is counted in `Keys.stats_webhooks` (`deliveries|<outcome>`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import redis
import structlog

from worker import lua
from worker.keys import Keys

log = structlog.get_logger("agentfleet.webhooks")

CLAIM_BATCH = 500  # deliveries claimed per script call
CLAIM_GRACE_S = 30.0  # a claim lasts the attempt's timeout plus this, then may be claimed again
JITTER_RATIO = 0.25  # a retry waits its backoff plus up to this share of it more


class Outcome(StrEnum):
    """What an attempt of a delivery came to: what `Outbox.settle` is told, and what it answers."""

    DELIVERED = "delivered"  # a 2xx: dropped
    FAILED = "failed"  # retried at its next due time
    GONE = "gone"  # a 410: dropped, and the run's webhook with it
    EXPIRED = "expired"  # past max_age_s, or its run's record is gone: dropped
    REFUSED = "refused"  # its host or its tenant's secret is no longer configured: dropped
    # answers only, counted nowhere: nothing changed
    STALE = "stale"  # the attempt's claim is no longer the delivery's latest
    MISSING = "missing"  # the delivery is settled already


OUTCOMES = (Outcome.DELIVERED, Outcome.FAILED, Outcome.GONE, Outcome.EXPIRED, Outcome.REFUSED)  # counted

# webhook_enqueue(run hash, delivery hash, due zset, born zset, event, delivery id, run id,
# tenant, now (unix s), data (JSON text; '' for `end`: the run, built at the first attempt)):
# one pending delivery when the run's webhook subscribes to `event`. Costs one HGET for a run
# without a webhook.
LUA_ENQUEUE = lua.load("worker/webhooks/webhook_enqueue.lua")


# Claims due deliveries. KEYS: the due zset, the born zset, the stats hash, then each
# candidate's hash. ARGV[1]: the named arguments, read as `a`: now (unix s), lead_s (the claim's
# length), max_age_s, ids (the candidates' ids, in KEYS order). A candidate whose hash is gone
# loses its entries; one older than max_age_s is dropped as `expired`. Returns {id, claim number,
# ...} of the claimed deliveries.
_CLAIM = lua.load("worker/webhooks/claim.lua")

# Settles one attempt. KEYS: the delivery's hash, the due zset, the born zset, the stats hash,
# the run's hash. ARGV[1]: the named arguments, read as `a`: delivery_id, claim (the attempt's
# claim number, as text: compared with the hash's), outcome (delivered, gone, refused, expired or
# failed), next_ts (the next attempt's due time, unix s; for failed), max_age_s.
# An attempt whose claim is no longer the delivery's latest (it ran past its claim, and a newer
# attempt was sent) changes nothing unless it delivered. Returns the Outcome counted, or
# 'stale' / 'missing'.
_SETTLE = lua.load("worker/webhooks/settle.lua")

# Stores the body of a delivery's first attempt, so every retry sends the same bytes. KEYS: the
# delivery's hash. ARGV[1]: no named arguments (an empty table); ARGV[2]: the body, as it is, so
# it is not escaped twice. Returns the body stored (this one or an earlier one), or nil when the
# delivery is gone.
_FREEZE = lua.load("worker/webhooks/freeze.lua")


def retry_delay_s(
    failed_attempts: int, backoff_s: list[float], rng: Callable[[], float] = random.random
) -> float:
    """Seconds before the next attempt after `failed_attempts` (>= 1) failures: the backoff list's
    entry for it (the last repeating) plus up to JITTER_RATIO of it more, so the deliveries that
    failed together do not all come back together."""
    base = backoff_s[min(failed_attempts, len(backoff_s)) - 1]
    return base * (1.0 + JITTER_RATIO * rng())


@dataclass(frozen=True)
class Claimed:
    """A claimed delivery: its id and the claim's number (an attempt carries it)."""

    delivery_id: str
    claim: str


class Outbox:
    """The pending webhook deliveries of one fleet (see the module's docstring)."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._claim = r.register_script(_CLAIM)
        self._settle = r.register_script(_SETTLE)
        self._freeze = r.register_script(_FREEZE)

    def claim_due(self, lead_s: float, max_age_s: float, now: float | None = None,
                  limit: int = CLAIM_BATCH) -> list[Claimed]:  # fmt: skip
        """Claim the deliveries due at `now` for `lead_s`; drop those older than `max_age_s`."""
        now = time.time() if now is None else now
        due = self.keys.webhooks_due()
        candidates = [str(x) for x in self.r.zrangebyscore(due, "-inf", repr(now), 0, limit)]
        if not candidates:
            return []
        flat = self._claim(
            keys=[due, self.keys.webhooks_born(), self.keys.stats_webhooks(),
                  *(self.keys.webhook(d) for d in candidates)],
            args=[lua.named(now=now, lead_s=lead_s, max_age_s=max_age_s, ids=candidates)],
        )  # fmt: skip
        return [Claimed(str(flat[i]), str(flat[i + 1])) for i in range(0, len(flat), 2)]

    def load(self, delivery_id: str) -> dict[str, str] | None:
        """The delivery's hash, or None once it is settled."""
        raw = self.r.hgetall(self.keys.webhook(delivery_id))
        return {str(k): str(v) for k, v in raw.items()} or None

    def freeze_body(self, delivery_id: str, body: str) -> str | None:
        """Store `body` as the delivery's body unless it has one; the body to send, or None when
        the delivery is gone."""
        stored = self._freeze(keys=[self.keys.webhook(delivery_id)], args=[lua.named(), body])
        return None if stored is None else str(stored)

    def settle(self, delivery_id: str, claim: str, outcome: Outcome, run_id: str, *,
               next_ts: float = 0.0, max_age_s: float = 0.0) -> Outcome:  # fmt: skip
        """Record one attempt's outcome (delivered, gone, refused, expired, or failed with the
        next attempt at `next_ts`); returns the outcome counted (failed becomes expired past
        max_age_s), or `stale` / `missing`. An answer that is no Outcome raises ValueError."""
        keys = self.keys
        counted = self._settle(
            keys=[keys.webhook(delivery_id), keys.webhooks_due(), keys.webhooks_born(),
                  keys.stats_webhooks(), keys.run(run_id)],
            args=[lua.named(delivery_id=delivery_id, claim=claim, outcome=outcome, next_ts=next_ts,
                            max_age_s=max_age_s)],
        )  # fmt: skip
        return Outcome(str(counted))

    def counts(self) -> dict[str, int]:
        """Deliveries by outcome since the fleet's Redis began."""
        raw = self.r.hgetall(self.keys.stats_webhooks())
        found = {str(k).partition("|")[2]: int(v) for k, v in raw.items() if str(k).startswith("deliveries|")}
        return {outcome.value: found.get(outcome, 0) for outcome in OUTCOMES}

    def backlog(self, now: float | None = None) -> tuple[int, float]:
        """(pending deliveries, age in s of the oldest one's event; 0 when none). One round trip."""
        now = time.time() if now is None else now
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(self.keys.webhooks_born())
        pipe.zrange(self.keys.webhooks_born(), 0, 0, withscores=True)
        count, oldest = pipe.execute()
        age = max(0.0, now - float(oldest[0][1])) if oldest else 0.0
        return int(count), age


Send = Callable[[Claimed], None]


@dataclass
class Scheduler:
    """Claims due deliveries and sends each one's attempt, every `tick_s`, in a thread of an agent
    worker's main process (worker/tasks.py): waiting holds no process."""

    outbox: Outbox
    send: Send  # sends the attempt's message (fleet.deliver_webhook on the webhooks queue)
    lead_s: float
    max_age_s: float
    tick_s: float = 0.05

    def tick(self) -> int:
        """Send every due delivery, batch after batch while full batches are due; how many."""
        sent = 0
        while True:
            claimed = self.outbox.claim_due(self.lead_s, self.max_age_s)
            for item in claimed:
                self.send(item)
            sent += len(claimed)
            if len(claimed) < CLAIM_BATCH:
                return sent

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set; after an error (Redis or the broker down) go on a second later."""
        while not stop.is_set():
            try:
                self.tick()
                stop.wait(self.tick_s)
            except Exception as exc:
                log.warning("webhook scheduler error", error=f"{type(exc).__name__}: {exc}"[:200])
                stop.wait(1.0)
