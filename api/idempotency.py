"""`Idempotency-Key` on POST /v1/runs: a repeat of an accepted request gets its run back.

The first request claims the key for its run (one key per tenant and Idempotency-Key, SET NX,
kept IDEMPOTENCY_TTL_S); a repeat with the same body gets that run (200), even under a kill
switch or a full queue, and a repeat with another body a 409. A request whose run was refused or
not queued gives its claim up, so a retry may submit again.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from pydantic import BaseModel

from api.errors import ApiError
from worker.keys import Keys

IDEMPOTENCY_TTL_S = 86400
REPEAT_WAIT_S = 2.0  # how long a repeat waits for the first request to write its run
REPEAT_POLL_S = 0.02
_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


@dataclass(frozen=True)
class IdempotencyKey:
    """One request's claim on its tenant's `Idempotency-Key`: the Redis key and the body's hash."""

    r: redis.Redis
    key: str
    body_hash: str

    @classmethod
    def of_request(
        cls, r: redis.Redis, keys: Keys, tenant: str, header: str | None, body: BaseModel
    ) -> IdempotencyKey | None:
        """The request's key, or None when it sends no `Idempotency-Key`; a 422 when the header
        is not 1-200 characters of [A-Za-z0-9_.:-]. The body is hashed as canonical JSON."""
        if header is None:
            return None
        if not _KEY_RE.match(header):
            raise ApiError(422, "invalid_request", "Idempotency-Key: 1-200 characters of [A-Za-z0-9_.:-]")
        canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return cls(r, keys.idempotency(tenant, header), hashlib.sha256(canonical.encode()).hexdigest())

    def is_claimed(self) -> bool:
        """True when an earlier request holds the key (one EXISTS)."""
        return bool(self.r.exists(self.key))

    def claim(self, run_id: str) -> bool:
        """Claim the key for `run_id` (one SET NX EX); False when another request holds it."""
        claim = json.dumps({"hash": self.body_hash, "run_id": run_id})
        return bool(self.r.set(self.key, claim, nx=True, ex=IDEMPOTENCY_TTL_S))

    def release(self) -> None:
        """Give the claim up (one DEL): the run was refused or not queued."""
        self.r.delete(self.key)

    def earlier_run(self, run_exists: Callable[[str], bool]) -> str:
        """The id of the run that the earlier request with this key made, once `run_exists` says
        it is written (waiting up to REPEAT_WAIT_S for that); a 409 when that request had another
        body, its claim expired, or its run is still not written."""
        deadline = time.monotonic() + REPEAT_WAIT_S
        while True:
            claim = self.r.get(self.key)
            if claim is None:
                raise ApiError(409, "conflict", "Idempotency-Key was in use and expired; retry")
            data = json.loads(claim)
            if data.get("hash") != self.body_hash:
                raise ApiError(409, "conflict", "Idempotency-Key was used with another body")
            run_id: str = data["run_id"]
            if run_exists(run_id):
                return run_id
            if time.monotonic() > deadline:  # the first request is still writing its run
                raise ApiError(409, "conflict", "a request with this Idempotency-Key is still in progress")
            time.sleep(REPEAT_POLL_S)
