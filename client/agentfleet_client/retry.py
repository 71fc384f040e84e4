"""When the client tries a request again, and how long it waits first.

Retried: answers 429 and 503, and requests that got no answer (the connection could not be made,
broke, or the server closed it mid-answer). Nothing else: another 4xx would fail the same way
again. A POST is retried with the same Idempotency-Key, so a retry never makes a second run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

RETRY_STATUSES = frozenset({429, 503})
# No answer, or part of one: safe to send again (a POST carries its Idempotency-Key).
RETRY_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class Retries:
    """The retry policy: at most `max_attempts` tries (1: no retry) within `max_total_s` seconds.

    Before retry n the client waits `base_delay_s * 2**(n-1)`, capped at `max_delay_s`, scaled by a
    random factor in [0.5, 1) (jitter, so clients that failed together do not come back together),
    and never less than the answer's `Retry-After` (seconds), which is itself capped at
    `max_delay_s`. A retry whose wait would end past `max_total_s` after the first try is not made:
    the last error is raised instead.
    """

    max_attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_total_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.base_delay_s, self.max_delay_s, self.max_total_s) < 0:
            raise ValueError("delays must not be negative")

    def delay_s(self, retry: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        backoff = min(self.max_delay_s, self.base_delay_s * 2.0 ** min(retry - 1, 32))
        delay = backoff * random.uniform(0.5, 1.0)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_delay_s))
        return delay

    def next_delay_s(self, attempts_made: int, elapsed_s: float, retry_after_s: float | None) -> float | None:
        """The wait before the next try, or None when the attempts or the time are used up."""
        if attempts_made >= self.max_attempts:
            return None
        delay = self.delay_s(attempts_made, retry_after_s)
        if elapsed_s + delay > self.max_total_s:
            return None
        return delay


NO_RETRIES = Retries(max_attempts=1)
