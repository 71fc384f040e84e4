"""One thread per worker process that renews the leases this process holds and fires the runs'
watchdogs: a small scheduler, instead of two threads started for every run.

The thread starts lazily, on the first lease held in a process, and again in a forked child
(threads do not survive fork): a prefork child that inherits a keeper from its parent starts its
own thread and its own table of held leases.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from worker.run.lease import Leases

log = logging.getLogger("agentfleet.keeper")
IDLE_WAIT_S = 60.0  # the thread's longest sleep with nothing to do; any new hold wakes it


@dataclass(eq=False)
class Held:
    """One execution's hold on a run's lease, while the loop runs it."""

    run_id: str
    token: str
    renew_at: float  # time.monotonic() of the next renewal
    lost: threading.Event = field(default_factory=threading.Event)  # another execution took over
    released: bool = False  # the lease went with the run's end (RunStore.finish with the token)
    fire_at_ts: float | None = None  # unix time at which the watchdog fires
    on_deadline: Callable[[], None] | None = None
    active: bool = True


class RunKeeper:
    """Keeps the leases of the runs this process executes, and their watchdogs."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self.renew_every_s = leases.ttl_ms / 3000.0
        self._pid = 0
        self._cond = threading.Condition()
        self._held: dict[str, Held] = {}  # by token

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        # A new process (or the first use): whatever the parent held is not ours.
        self._cond = threading.Condition()
        self._held = {}
        self._pid = os.getpid()
        threading.Thread(target=self._run, args=(self._cond,), name="run-keeper", daemon=True).start()

    @contextmanager
    def hold(self, run_id: str, token: str) -> Iterator[Held]:
        """Renew the run's lease every TTL / 3 while the block runs; `Held.lost` is set when
        the lease is lost. At the end the lease is released, unless the run's end released it."""
        self._ensure_thread()
        held = Held(run_id, token, time.monotonic() + self.renew_every_s)
        with self._cond:
            self._held[token] = held
            self._cond.notify()
        try:
            yield held
        finally:
            with self._cond:
                held.active = False
                self._held.pop(token, None)
            if not held.released:
                self.leases.release(run_id, token)

    def watch(self, held: Held, fire_at_ts: float, on_deadline: Callable[[], None]) -> None:
        """Call `on_deadline` (once, from the keeper's thread) if the hold is still active at
        `fire_at_ts` (unix seconds)."""
        with self._cond:
            held.fire_at_ts = fire_at_ts
            held.on_deadline = on_deadline
            self._cond.notify()

    def _run(self, cond: threading.Condition) -> None:
        while True:
            with cond:
                renew, fire = self._due()
                if not renew and not fire:
                    cond.wait(self._next_wait_s())
                    continue
                for held in fire:
                    held.fire_at_ts = None  # fires once
            for held in fire:
                self._guarded(self._fire, held)
            for held in renew:
                self._guarded(self._renew, held)

    def _guarded(self, job: Callable[[Held], None], held: Held) -> None:
        try:
            job(held)
        except Exception:  # the thread serves every run of the process: it must not die of one
            log.exception("run keeper: %s failed for run %s", job.__name__, held.run_id)

    def _due(self) -> tuple[list[Held], list[Held]]:
        now, now_ts = time.monotonic(), time.time()
        renew = [h for h in self._held.values() if h.renew_at <= now and not h.lost.is_set()]
        fire = [h for h in self._held.values() if h.fire_at_ts is not None and h.fire_at_ts <= now_ts]
        return renew, fire

    def _next_wait_s(self) -> float:
        now, now_ts = time.monotonic(), time.time()
        waits = [IDLE_WAIT_S]
        for held in self._held.values():
            if not held.lost.is_set():
                waits.append(held.renew_at - now)
            if held.fire_at_ts is not None:
                waits.append(held.fire_at_ts - now_ts)
        return max(0.0, min(waits))

    def _fire(self, held: Held) -> None:
        callback = held.on_deadline
        if held.active and callback is not None:
            callback()

    def _renew(self, held: Held) -> None:
        held.renew_at = time.monotonic() + self.renew_every_s
        try:
            if not self.leases.renew(held.run_id, held.token) and held.active:
                held.lost.set()
        except redis.RedisError:
            pass  # try again next period; the lease outlives a short outage
