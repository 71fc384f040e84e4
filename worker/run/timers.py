"""Parked runs and their timers: a waiting run is state in Redis, not a process.

A run that would wait longer than `runtime.park_after_ms` (a tool or model reply, a backoff, a
rate-limit slot, a Sleep) parks (`Timers.park`, one script): the run's hash records what it waits
for (`wait`, `pending`: the step's action, `memory`), its wake-up time goes into the timers zset
(at most its deadline), its lease is released, and its execution ends: the pool child is free.

Every agent worker's main process runs `scheduler_loop`. Each tick it:

1. claims the due timers (`claim_due`, one script): a claimed timer moves `RESEND_S` ahead, so
   another scheduler does not claim it again, and a resume that gets lost is sent again later;
   it sends one resume delivery (`fleet.run_agent(run_id, park)`) per claimed run, or ends a run
   past its deadline at once;
2. reads the kill switches of the parked runs' tenants and agents (`switched_on`) and ends the
   parked runs a switch covers, in one pipeline, so a switch stops 1,000 parked runs within a
   tick; under `kill:all` it ends the runs still queued as well, so none waits for a worker to
   be refused.

A reply (worker/gateway/checks.py, the tool worker's script) makes its parked run due and rings the bell
(`Keys.timers_bell`), which wakes a scheduler at once; a cancel does the same (RunStore.cancel).

The invariants: a park and its wake-up are written in one script; a resume carries its park's
number, and a resume of a park that is over is dropped (RunStore.start), so two schedulers, or a
reply that races the call's timeout, never resume a run twice; the step's begun state and its
call's state survive in Redis, so a resumed run continues its call where the park left it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import redis
import structlog

from worker import lua
from worker.control import killswitch
from worker.keys import Keys
from worker.run.store import STOPPED, RunStore, queued_runs

log = structlog.get_logger("agentfleet.timers")
RESEND_S = 15.0  # a claimed timer fires again after this if its resume has not started the run
CLAIM_BATCH = 500  # timers claimed per script call

# KEYS: the run, its lease, the leases zset, the timers zset, the parked-per-tenant and -agent
# hashes, the run's cancel key, the reply list the run waits for (the run's hash when none).
# ARGV[1], named: token (the lease's), wake_ts (unix s, as text), wait (JSON), run_id, tenant,
# agent, reply_key (the reply list the run waits for, KEYS[8], recorded; '' for none). ARGV[2] and
# ARGV[3]: the pending action and the agent's memory (JSON), stored as they are (they can be large:
# a model call's messages; a named field would escape them twice).
# Returns {ParkVerdict, ...}: {'parked', park number}, or {'ready'} (the reply is there: go on),
# {'cancelled', why}, {'lost'} (another execution holds the run) or {'ended', status}.
_PARK = lua.load("worker/run/park.lua")

# Claims due timers. KEYS: the timers zset, then each candidate's run hash. ARGV[1], named: now
# (unix s), claim_s (the claim's length), run_ids (the candidates', in KEYS order). A candidate that is not
# parked any more (resumed or ended since) loses its timer. A run's deadline excludes the time it
# waited for humans (worker/control/approvals.py).
# Returns {run id, park number, deadline (unix s), ...} of the claimed runs.
_CLAIM = lua.load("worker/run/timers_claim.lua")


class ParkVerdict(StrEnum):
    """What the park script answered (an unknown answer raises ValueError)."""

    PARKED = "parked"  # the run is parked (detail: the park's number)
    READY = "ready"  # the reply it would wait for is there: go on, do not park
    CANCELLED = "cancelled"  # the run's cancel flag is set (detail: why)
    LOST = "lost"  # another execution holds the run's lease
    ENDED = "ended"  # the run has ended (detail: its status)


@dataclass(frozen=True)
class Due:
    """A claimed timer: the run to resume, its park number and its deadline."""

    run_id: str
    park: str
    deadline_ts: float


class Timers:
    """The parked runs of one fleet: park, claim due timers, sweep kill switches."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._park = r.register_script(_PARK)
        self._claim = r.register_script(_CLAIM)

    def park(
        self,
        run_id: str,
        token: str,
        *,
        tenant: str,
        agent: str,
        wake_ts: float,
        wait: str,
        pending: str,
        memory: str,
        reply_key: str = "",
    ) -> tuple[ParkVerdict, str]:
        """Park the run if this execution still holds it; returns (verdict, detail): `PARKED`
        (detail: the park's number), `READY` (the reply came: do not park), `CANCELLED` (detail:
        why), `LOST` or `ENDED`."""
        keys = self.keys
        answer, *rest = self._park(
            keys=[
                keys.run(run_id),
                keys.run_lease(run_id),
                keys.leases(),
                keys.timers(),
                keys.parked_owners("tenant"),
                keys.parked_owners("agent"),
                keys.run_cancel(run_id),
                reply_key or keys.run(run_id),
            ],
            args=[
                lua.named(
                    token=token,
                    wake_ts=repr(wake_ts),
                    wait=wait,
                    run_id=run_id,
                    tenant=tenant,
                    agent=agent,
                    reply_key=reply_key,
                ),
                pending,
                memory,
            ],
        )
        return ParkVerdict(answer), str(rest[0]) if rest else ""

    def claim_due(self, now: float | None = None, limit: int = CLAIM_BATCH) -> list[Due]:
        """Claim the timers due at `now`; a claimed timer is not claimed again for RESEND_S."""
        now = time.time() if now is None else now
        candidates = [str(x) for x in self.r.zrangebyscore(self.keys.timers(), "-inf", repr(now), 0, limit)]
        if not candidates:
            return []
        flat = self._claim(
            keys=[self.keys.timers(), *(self.keys.run(run_id) for run_id in candidates)],
            args=[lua.named(now=now, claim_s=RESEND_S, run_ids=candidates)],
        )
        return [Due(str(flat[i]), str(flat[i + 1]), float(flat[i + 2])) for i in range(0, len(flat), 3)]

    def queued(self) -> list[str]:
        """The runs still queued (RunStore's queued-runs zset, members `tenant|created_ts|id`)."""
        return [run_id for _, run_id in queued_runs(self.r, self.keys)]

    def waiting(self) -> int:
        """How many runs are parked (including those due and not yet resumed)."""
        return int(self.r.zcard(self.keys.timers()))

    def switched_on(self) -> tuple[str | None, dict[str, str], dict[str, str]]:
        """The kill switches that cover parked runs: `kill:all`'s reason (or None), and the
        reasons of the tenants' and agents' switches that are on, by name. Two round trips; one
        when nothing is parked."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hkeys(self.keys.parked_owners("tenant"))
        pipe.hkeys(self.keys.parked_owners("agent"))
        tenants, agents = pipe.execute()
        tenants, agents = [str(t) for t in tenants], [str(a) for a in agents]
        if not tenants and not agents:
            return None, {}, {}
        names = [self.keys.kill_all()]
        names += [self.keys.kill_tenant(t) for t in tenants] + [self.keys.kill_agent(a) for a in agents]
        values = self.r.mget(names)
        all_reason = killswitch.first_reason([values[0]])
        on_tenants = {
            t: reason
            for t, v in zip(tenants, values[1 : 1 + len(tenants)], strict=True)
            if (reason := killswitch.first_reason([v])) is not None
        }
        on_agents = {
            a: reason
            for a, v in zip(agents, values[1 + len(tenants) :], strict=True)
            if (reason := killswitch.first_reason([v])) is not None
        }
        return all_reason, on_tenants, on_agents

    def covered(
        self, all_reason: str | None, tenants: dict[str, str], agents: dict[str, str]
    ) -> list[tuple[str, str]]:
        """The parked runs a switch covers, with the switch's reason (kill:all first, then the
        tenant's, then the agent's: killswitch's order)."""
        run_ids = [str(x) for x in self.r.zrange(self.keys.timers(), 0, -1)]
        if all_reason is not None:
            return [(run_id, all_reason) for run_id in run_ids]
        pipe = self.r.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(self.keys.run(run_id), ["tenant", "agent"])
        found = []
        for run_id, (tenant, agent) in zip(run_ids, pipe.execute(), strict=True):
            reason = tenants.get(str(tenant)) or agents.get(str(agent))
            if reason is not None:
                found.append((run_id, reason))
        return found


def end_killed(store: RunStore, runs: list[tuple[str, str, str]]) -> list[str]:
    """End the given (run id, reason, only_if) runs as stopped / killed, each only if it is still
    parked (only_if "parked") or still queued ("queued"): an executing run checks its switches
    itself. One pipeline. Each run's end time is Redis's clock as its script runs: what
    `finished_at` says is when the run really stopped, also for the last of a thousand runs in the
    pipeline. Returns the runs this call ended."""
    if not runs:
        return []
    pipe = store.r.pipeline(transaction=False)
    for run_id, reason, only_if in runs:
        error = {"type": "killed", "message": reason}
        store.finish_in(pipe, run_id, STOPPED, "killed", error=error, now="", only_if=only_if)
    ended = []
    for (run_id, _, _), answer in zip(runs, pipe.execute(), strict=True):
        if answer and int(answer[0]) == 1:
            ended.append(run_id)
            store.ended(run_id, STOPPED, "killed", answer[1:])
    return ended


Resume = Callable[[Due], None]


@dataclass
class Scheduler:
    """One agent worker's timer scheduler and kill sweep (see the module's docstring)."""

    timers: Timers
    store: RunStore
    resume: Resume  # sends the resume delivery of a claimed run
    tick_s: float = 0.05

    def tick(self) -> tuple[int, int]:
        """One round: resume due runs (ending those past their deadline), then end parked runs
        that a kill switch covers. Returns (resumed, killed)."""
        return self.resume_due(), self.sweep()

    def resume_due(self) -> int:
        """Resume the runs whose timer is due (ending those past their deadline), batch after
        batch while full batches are due. Returns how many resumes were sent."""
        resumed = 0
        while True:
            now = time.time()
            due = self.timers.claim_due(now)
            for item in due:
                if item.deadline_ts <= now:
                    self.store.finish(item.run_id, STOPPED, "max_seconds", only_if="parked")
                    continue
                self.resume(item)
                resumed += 1
            if len(due) < CLAIM_BATCH:
                return resumed

    def sweep(self) -> int:
        """End the parked runs a kill switch covers (and, under kill:all, the queued ones)."""
        all_reason, tenants, agents = self.timers.switched_on()
        if all_reason is None and not tenants and not agents:
            return 0
        # Under kill:all the runs still queued go first (a worker may be about to start one),
        # then the parked ones, all in one pipeline.
        runs = [(r, all_reason, "queued") for r in self.timers.queued()] if all_reason is not None else []
        runs += [(r, reason, "parked") for r, reason in self.timers.covered(all_reason, tenants, agents)]
        ended = end_killed(self.store, runs)
        if ended:
            log.warning(
                "kill-switch hit", parked_runs=len(ended), reason=all_reason or "tenant or agent switch"
            )
        return len(ended)

    def run(self, stop: threading.Event, bell: redis.Redis | None = None) -> None:
        """Every tick_s: resume due runs and sweep the kill switches, until `stop` is set. With
        `bell` (a client of its own: the BLPOP blocks it), a reply's ring resumes due runs at
        once, between ticks (the sweep keeps its pace: a burst of replies costs no more of it)."""
        next_sweep = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.tick_s
                    self.sweep()
                self.resume_due()
                wait_s = max(0.001, next_sweep - time.monotonic())
                if bell is None:
                    stop.wait(wait_s)
                    continue
                rang = bell.blpop([self.timers.keys.timers_bell()], timeout=wait_s)
                if rang is not None:
                    bell.delete(self.timers.keys.timers_bell())  # one round answers every ring
            except Exception as exc:  # a broken Redis or broker: try again a little later
                log.warning("timer scheduler error", error=f"{type(exc).__name__}: {exc}"[:200])
                stop.wait(1.0)
