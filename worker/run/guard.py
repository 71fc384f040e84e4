"""What stops a run between steps: kill switches, a cancel request and the run's deadline;
and what ends an execution that would only wait: a park.

`RunGuard.check()` is one MGET; the loop calls it before every step and tool call, and every
`SLICE_S` while it waits in its process (on a tool, or in think time), so a switch flipped with
redis-cli stops a waiting run within a fraction of a second. A wait longer than the run's
`park_after_s` does not happen in the process: `pause` raises `Park`, the loop records the wait
in the run and ends the execution, and a timer or the reply resumes the run (worker/run/timers.py),
where the scheduler's sweep applies the same switches to it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from worker.control import killswitch
from worker.keys import Keys
from worker.run.store import CANCELLED, STOPPED

SLICE_S = 0.2  # longest wait between two checks


class RunStopped(Exception):
    """The run must end now with `status` and `stop_reason`; `message` says why."""

    def __init__(self, status: str, stop_reason: str, message: str | None = None) -> None:
        super().__init__(message or stop_reason)
        self.status = status
        self.stop_reason = stop_reason
        self.message = message


class BudgetExceeded(RunStopped):
    """A budget ran out: stop_reason is max_steps, max_tool_calls or max_seconds."""

    def __init__(self, stop_reason: str, message: str | None = None) -> None:
        super().__init__(STOPPED, stop_reason, message)


class LeaseLost(Exception):
    """Another execution took this run over (this one was presumed dead): stop without a word."""


class Park(BaseException):
    """The run waits longer than it should hold a process: record `wait` in the run, wake it at
    `wake_ts` (unix s, at most its deadline), or when `reply_key` gets its reply, and end this
    execution. A BaseException, so no `except Exception` on the way up treats it as a failure.

    `wait` says where the waiting code resumes (the gateway's call state, or a Sleep's end)."""

    def __init__(self, wake_ts: float, wait: dict[str, Any], reply_key: str = "") -> None:
        super().__init__(f"park until {wake_ts:.3f}")
        self.wake_ts = wake_ts
        self.wait = wait
        self.reply_key = reply_key


class DeadlineExceeded(BaseException):
    """Raised into agent code at the run's deadline; a BaseException so `except Exception` can't eat it."""


class RunGuard:
    """Checks one run's kill switches, cancel flag and deadline."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        *,
        run_id: str,
        tenant: str,
        agent: str,
        deadline_ts: float,
        lease_lost: threading.Event | None = None,
        park_after_s: float | None = None,
    ):
        self.r = r
        self.deadline_ts = deadline_ts
        self.lease_lost = lease_lost
        # None: waits happen in this process (runtime.park_waits off, or a caller without a store)
        self.park_after_s = park_after_s
        self._keys = [*killswitch.run_switch_keys(keys, tenant, agent), keys.run_cancel(run_id)]

    def remaining_s(self) -> float:
        return self.deadline_ts - time.time()

    @property
    def switch_keys(self) -> list[str]:
        """The run's switches (all, tenant, agent), then its cancel flag."""
        return list(self._keys)

    def check(self, prefetched: tuple[str | None, str | None] | None = None) -> None:
        """Raise RunStopped when a switch, a cancel or the deadline says the run must end.

        `prefetched`: the switches' reason (killswitch.LUA_KILL_REASON) and the cancel flag,
        already read by the script that started the run; None reads them now (one MGET)."""
        if self.lease_lost is not None and self.lease_lost.is_set():
            raise LeaseLost()
        reason, cancel = self.read(self.r.mget(self._keys)) if prefetched is None else prefetched
        if reason is not None:
            raise RunStopped(STOPPED, "killed", reason)
        if cancel is not None:
            raise RunStopped(CANCELLED, "cancelled", str(cancel))
        if self.remaining_s() <= 0:
            raise BudgetExceeded("max_seconds")

    def read(self, values: list[Any]) -> tuple[str | None, str | None]:
        """The switches' reason and the cancel flag from the values of `switch_keys`, read by a
        caller's own round trip (the step's checkpoint reads them for the next step's check)."""
        *switches, cancel = values
        return killswitch.first_reason(switches), None if cancel is None else str(cancel)

    def check_local(self) -> None:
        """The checks that need no Redis: the lease and the deadline (for callers that read the
        switches themselves, in a script of their own, and report them with `stop`)."""
        if self.lease_lost is not None and self.lease_lost.is_set():
            raise LeaseLost()
        if self.remaining_s() <= 0:
            raise BudgetExceeded("max_seconds")

    @staticmethod
    def stop(kind: str, value: str) -> RunStopped:
        """The RunStopped for a switch (`killed`, its value) or a cancel (`cancelled`) found on."""
        if kind == "killed":
            return RunStopped(STOPPED, "killed", value or killswitch.DEFAULT_REASON)
        return RunStopped(CANCELLED, "cancelled", value)

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`, checking every SLICE_S; raises RunStopped like check()."""
        end = time.monotonic() + seconds
        while True:
            self.check()
            left = min(end - time.monotonic(), self.remaining_s())
            if left <= 0:
                if self.remaining_s() <= 0:
                    raise BudgetExceeded("max_seconds")
                return
            time.sleep(min(SLICE_S, left))

    def parks(self, seconds: float) -> bool:
        """Whether a wait of `seconds` parks the run rather than hold the process."""
        return self.park_after_s is not None and seconds > self.park_after_s

    def pause(self, seconds: float, wait: dict[str, Any]) -> None:
        """Wait `seconds`: here when the wait is short (or parking is off), else raise Park with
        `wait` and its end (`until_ts`), woken at that end or the run's deadline if sooner."""
        if not self.parks(seconds):
            self.sleep(seconds)
            return
        self.check()
        until_ts = time.time() + seconds
        raise Park(min(until_ts, self.deadline_ts), {**wait, "until_ts": until_ts})

    def resume_pause(self, wait: dict[str, Any]) -> None:
        """Finish a parked pause: wait what is left of it (a run may be woken early, by a cancel
        or a redelivery), parking again if that is long."""
        left = float(wait.get("until_ts", 0.0)) - time.time()
        if left > 0:
            self.pause(left, wait)
