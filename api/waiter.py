"""Long-polls (`GET /v1/runs/{id}?wait=S`) share one Redis pattern subscription per API process.

A waiting request registers an event for its run's channel; one thread reads every published
run end and sets the events. A request still re-reads the run's status at least every second,
so a message lost while the subscription reconnects delays an answer by a second, no more.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

import redis

RECHECK_S = 1.0


class EndWaiter:
    """Wakes requests waiting for runs to end."""

    def __init__(self, r: redis.Redis, pattern: str) -> None:
        self.r = r
        self.pattern = pattern
        self._lock = threading.Lock()
        self._events: dict[str, list[threading.Event]] = defaultdict(list)
        self._thread: threading.Thread | None = None

    def _listen(self) -> None:
        while True:
            pubsub = self.r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.psubscribe(self.pattern)
                while True:
                    message = pubsub.get_message(timeout=RECHECK_S)
                    if message and message.get("type") == "pmessage":
                        with self._lock:
                            waiting = list(self._events.get(str(message["channel"]), ()))
                        for event in waiting:
                            event.set()
            except redis.RedisError:
                time.sleep(RECHECK_S)  # Redis is away: waiters fall back on their re-checks
            finally:
                pubsub.close()

    def wait(self, channel: str, ended: Callable[[], bool], timeout_s: float) -> None:
        """Return when `ended()` is true, a message arrives on `channel`, or `timeout_s` passes."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="run-end-waiter", daemon=True)
                self._thread.start()
            event = threading.Event()
            self._events[channel].append(event)
        try:
            deadline = time.monotonic() + timeout_s
            while not ended():
                left = deadline - time.monotonic()
                if left <= 0 or event.wait(min(left, RECHECK_S)):
                    return
        finally:
            with self._lock:
                self._events[channel].remove(event)
                if not self._events[channel]:
                    del self._events[channel]
