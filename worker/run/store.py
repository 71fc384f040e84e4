"""The run record: one Redis hash per run, written by the API and the agent worker.

Status changes that race (a worker finishing while a client cancels, two attempts of one run)
go through small Lua scripts, so a terminal run never changes again. JSON fields hold JSON text;
usage counters are integers in the same hash, so one HGETALL reads the whole run.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis

from worker import lua
from worker.control.killswitch import run_switch_keys
from worker.keys import AGENT_QUEUE, Keys
from worker.obs import histograms
from worker.run import events
from worker.run.events import EVENTS_MAX, status_data
from worker.run.lease import LEASE_TTL_S, holder_is_dead
from worker.units import usd_from_micro

QUEUED, RUNNING = "queued", "running"
SUCCEEDED, STOPPED, FAILED, CANCELLED = "succeeded", "stopped", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, STOPPED, FAILED, CANCELLED})
STEP_LOG_MAX = 200  # steps kept in a run's step log; older ones are trimmed
_JSON_FIELDS = ("input", "output", "error", "budgets", "metadata", "memory", "last_result")


@dataclass(frozen=True)
class Budgets:
    """A run's limits; each at most the fleet's cap."""

    max_steps: int
    max_tool_calls: int
    max_seconds: float
    max_tokens: int = 0  # model tokens (prompt + completion), reserved before each model call
    max_cost_usd: float = 0.0  # model spend and declared tool costs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Budgets:
        return cls(
            int(data["max_steps"]),
            int(data["max_tool_calls"]),
            float(data["max_seconds"]),
            int(data.get("max_tokens", 0)),
            float(data.get("max_cost_usd", 0.0)),
        )


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with microseconds and a Z, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _finite(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


# KEYS: the run, the agents queue, the queued-runs zset, the run's events, then the kill switches
# that cover the submission. ARGV[1], named: ttl_s, max_queued (-1: no limit),
# max_queued_per_tenant (-1: no limit), tenant, member (the run's in the queued-runs zset),
# expired_before (the created_ts, as text, before which a member's run has expired), status_data
# (the `queued` status event's), events_max (the events' cap). ARGV[2..]: the run's fields as
# name, value, ..., stored as they are (the input's JSON is not escaped twice).
# Returns {CreateVerdict, detail}.
_CREATE = lua.load("worker/run/create.lua")

# KEYS: the run, its lease, the leases zset, the deadlines zset, the run's cancel key, the
# queued-runs zset, the timers zset, the parked-per-tenant and parked-per-agent hashes, the run's
# events and their channel, the queue-wait histogram (worker/obs/histograms.py), then the run's kill
# switches (killswitch.run_switch_keys of its tenant and agent, which never change).
# ARGV[1], named: now (unix s, as text: it is stored), token (the lease's), lease_ttl_ms, run_id,
# takeover (the dead holder this attempt takes over, '' for none), tenant and agent (whom the
# switch keys are for), wake (the park this delivery resumes, '' for none: a first delivery or a
# requeue), status_data (the `running` status event's), events_max (the events' cap), ttl_s (the
# run's), queue_wait (the queue whose wait, created to first started, is observed; '' for none).
# Returns {StartVerdict, ...}: {'started', the run's hash, {kill reason, cancel flag}},
# {'terminal', status}, {'leased', holder}, {'missing'} or {'stale'}.
# A resume whose park is over (another resume took it, or the run parked again since) is 'stale'.
# Taking a parked run unparks it and is no new attempt: `attempts` counts the executions that
# began without a park to resume, so a worker that died is counted once.
_START = lua.load("worker/run/start.lua")

# KEYS: the run, its ended channel, its step log, the run stats, its lease, the leases zset,
# the deadlines zset, the queued-runs zset, the timers zset, the parked-per-tenant and -agent
# hashes, the run's events, then the webhook outbox's delivery hash, due and born zsets, then the
# archive's due and ended zsets (worker/history/queue.py), then the run-duration histogram.
# ARGV[1], named: status, stop_reason, error (JSON), now (unix s as text; '' for the server's
# clock), ttl_s, lease_token (to release; '' for none), run_id, steps (the step count to write
# first; '' for none), only_if ('parked' or 'queued' to end the run only if it is parked or still
# queued: the kill sweep, as an executing run checks its switches itself; '' always), status_data
# (the terminal status event's), events_max (the events' cap), delivery_id (the `end` webhook
# delivery's, used when the run has a webhook subscribed to `end`), observe (true: the run's
# duration, first start to end, goes in the histogram). ARGV[2]: the output (JSON), stored as it
# is.
# The status and `end` events are announced by the PUBLISH on the ended channel.
# Returns {1 when this call ended the run else 0, agent, version, started_ts, finished_ts}.
_FINISH = lua.load("worker/run/finish.lua")

# Claims runs past their deadline that no live execution holds, for this reaper to end them.
# KEYS: the deadlines zset, then the lease of each candidate run (RunStore.end_overdue read the
# candidates from the zset just before). ARGV[1], named: now (unix s), claim_s (the claim's
# length), takeover (the dead holder of a lease that this call may take over, '' for none),
# run_ids (the candidates', in KEYS order).
# Returns {claimed run ids, {run id, holder, ...} of overdue runs whose lease is held}.
_OVERDUE = lua.load("worker/run/overdue.lua")

# KEYS: the run, its cancel key, its ended channel, the run stats, the queued-runs zset, the
# timers zset, the schedulers' bell, the run's events, then the webhook outbox's delivery hash,
# due and born zsets, then the archive's due and ended zsets. ARGV[1], named: now (unix s, as
# text: it is stored), cancel_ttl_s (the cancel key's), run_id, status_data (the `cancelled` status
# event's), events_max (the events' cap), ttl_s (the run's), delivery_id (the `end` webhook's).
# Returns the run's status before, or nil for no run.
# A parked run is made due at once, so a scheduler resumes it and it ends cancelled.
_CANCEL = lua.load("worker/run/cancel.lua")


class CreateVerdict(StrEnum):
    """What the create script answered (an unknown answer raises ValueError)."""

    OK = "ok"  # the run is written
    KILLED = "killed"  # a kill switch covers the submission (detail: its reason)
    QUEUE_FULL = "queue_full"  # the agents queue is full (detail: its depth)
    TENANT_QUEUE_FULL = "tenant_queue_full"  # the tenant's share is (detail: its queued runs)


class StartVerdict(StrEnum):
    """What the start script answered (an unknown answer raises ValueError)."""

    MISSING = "missing"  # no run, or not the tenant's and agent's the switch keys were read for
    TERMINAL = "terminal"  # the run has ended (its status)
    STALE = "stale"  # a resume of a park that is over
    LEASED = "leased"  # another execution holds the run (the holder)
    STARTED = "started"  # this attempt holds it (the run's hash, its switches and cancel flag)


class AdmissionRefused(Exception):
    """A submission refused: `reason` is `CreateVerdict.KILLED` (detail: the switch's reason),
    `QUEUE_FULL` (detail: the queue's depth) or `TENANT_QUEUE_FULL` (detail: the tenant's queued
    runs)."""

    def __init__(self, reason: CreateVerdict, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Started:
    """What `RunStore.start` found: `raw` is the run's hash once this attempt started it; a run
    that is missing, has ended (`status`) or is leased by another execution (`holder`) is not
    started. `checks` are the reason of the run's kill switches (killswitch.LUA_KILL_REASON) and
    its cancel flag, read in the same script, for the loop's first check."""

    raw: dict[str, str] | None = None
    status: str | None = None
    holder: str | None = None
    checks: tuple[str | None, str | None] = (None, None)


# (run_id, status, stop_reason, the ended run's agent, version, started_ts and finished_ts when
# the call that ended it knows them, else None); once per run, after it ended.
EndHook = Callable[[str, str, str, dict[str, str] | None], None]
OVERDUE_CLAIM_S = 30.0  # a reaper's claim on ending an overdue run; another retries after it


class RunStore:
    """Reads and writes run records for one key prefix."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        ttl_s: int = 7 * 86400,
        on_end: EndHook | None = None,
        lease_ttl_s: float = LEASE_TTL_S,
        histograms: bool = True,
    ) -> None:
        self.r = r
        self.histograms = (
            histograms  # settings.metrics.histograms: record latencies (worker/obs/histograms.py)
        )
        self.keys = keys
        self.ttl_s = ttl_s
        self.on_end = on_end
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self._create = r.register_script(_CREATE)
        self._start = r.register_script(_START)
        self._finish = r.register_script(_FINISH)
        self._cancel = r.register_script(_CANCEL)
        self._overdue = r.register_script(_OVERDUE)

    def create(
        self,
        run_id: str,
        *,
        tenant: str,
        agent: str,
        input: Any,
        budgets: Budgets,
        metadata: dict[str, Any],
        version: str | None = None,
        trace_id: str | None = None,
        traceparent: str | None = None,
        admission: tuple[str, list[str], int] | None = None,
        max_queued_per_tenant: int = -1,
        webhook: str | None = None,
    ) -> dict[str, str]:
        """Write a new queued run and return its record (as stored).

        `admission` (queue, kill-switch keys, max queued): in the same script, refuse the run with
        AdmissionRefused when a switch is on or the queue holds max queued messages.
        `max_queued_per_tenant` (-1: no limit): refuse it too when the tenant already has that many
        runs in status `queued` (counted in the queued-runs zset, see Keys.queued_runs).
        `webhook`: the run's checked webhook as JSON text (worker/webhooks/target.py), stored only
        when given. `traceparent`: the request's span context, the parent of the run's spans
        (worker/obs/tracing.py), stored only when given.
        """
        created_ts = repr(time.time())
        fields = {
            "trace_id": trace_id or uuid.uuid4().hex,
            **({"traceparent": traceparent} if traceparent else {}),
            **({"version": version} if version else {}),
            "id": run_id,
            "tenant": tenant,
            "agent": agent,
            "status": QUEUED,
            "input": json.dumps(input),
            "budgets": json.dumps(budgets.to_dict()),
            "metadata": json.dumps(metadata),
            "created_ts": created_ts,
            "steps": 0,
            "tool_calls": 0,
            "cursor": 0,
            "attempts": 0,
            **({"webhook": webhook} if webhook else {}),
        }
        queue, switches, max_queued = admission or ("", [], -1)
        flat = [str(x) for item in fields.items() for x in item]
        member = f"{tenant}|{created_ts}|{run_id}"
        expired_before = repr(float(created_ts) - self.ttl_s)
        answer, detail = self._create(
            keys=[
                self.keys.run(run_id),
                queue or self.keys.run(run_id),
                self.keys.queued_runs(),
                self.keys.run_events(run_id),
                *switches,
            ],
            args=[
                lua.named(
                    ttl_s=self.ttl_s,
                    max_queued=max_queued,
                    max_queued_per_tenant=max_queued_per_tenant,
                    tenant=tenant,
                    member=member,
                    expired_before=expired_before,
                    status_data=status_data(QUEUED),
                    events_max=EVENTS_MAX,
                ),
                *flat,
            ],
        )
        verdict = CreateVerdict(answer)
        if verdict is not CreateVerdict.OK:
            raise AdmissionRefused(verdict, str(detail))
        return {k: str(v) for k, v in fields.items()}

    def load(self, run_id: str) -> dict[str, str] | None:
        """The raw hash of a run, or None."""
        raw = self.r.hgetall(self.keys.run(run_id))
        return {str(k): str(v) for k, v in raw.items()} or None

    def start(self, run_id: str, token: str, takeover: str = "", wake: str = "") -> Started:
        """Start an attempt of a run in one round trip: take its lease for `token` (or from
        `takeover`, a holder known dead), mark a queued run running (keeping the first start
        time), count the attempt, add the run's deadline to the deadlines zset, and read its
        kill switches and cancel flag. A missing or ended run, or one leased by another holder,
        is left as it is. `wake`: the park this delivery resumes (a scheduler's resume); a resume
        of a park that is over is dropped, like a duplicate delivery.

        One more round trip comes first: the run's tenant and agent, which name its switches
        (a script gets every key it touches in KEYS; the script checks they are still the run's)."""
        keys = self.keys
        tenant, agent = self.r.hmget(keys.run(run_id), ["tenant", "agent"])
        if tenant is None or agent is None:
            return Started()
        answer, *rest = self._start(
            keys=[
                keys.run(run_id),
                keys.run_lease(run_id),
                keys.leases(),
                keys.deadlines(),
                keys.run_cancel(run_id),
                keys.queued_runs(),
                keys.timers(),
                keys.parked_owners("tenant"),
                keys.parked_owners("agent"),
                keys.run_events(run_id),
                keys.run_events_channel(run_id),
                keys.histogram(histograms.QUEUE_WAIT),
                *run_switch_keys(keys, str(tenant), str(agent)),
            ],
            args=[
                lua.named(
                    now=repr(time.time()),
                    token=token,
                    lease_ttl_ms=self.lease_ttl_ms,
                    run_id=run_id,
                    takeover=takeover,
                    tenant=tenant,
                    agent=agent,
                    wake=wake,
                    status_data=status_data(RUNNING),
                    events_max=EVENTS_MAX,
                    ttl_s=self.ttl_s,
                    queue_wait=AGENT_QUEUE if self.histograms else "",
                )
            ],
        )
        verdict = StartVerdict(answer)
        if verdict is StartVerdict.TERMINAL:
            return Started(status=str(rest[0]))
        if verdict is StartVerdict.LEASED:
            return Started(holder=str(rest[0]))
        if verdict is not StartVerdict.STARTED:  # missing, or a stale resume
            return Started()
        flat, (reason, cancel) = rest
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        return Started(raw=raw, status=raw["status"], checks=(reason, cancel))

    def begin_step(self, run_id: str, step: int) -> None:
        """Record that step `step` (1-based) has begun; idempotent, so a resumed step counts once."""
        self.r.hset(self.keys.run(run_id), "steps", step)

    def checkpoint(
        self,
        run_id: str,
        *,
        cursor: int,
        memory: dict[str, Any],
        last_result: Any,
        step_entry: dict[str, Any],
        agent: str = "",
        read: list[str] | None = None,
    ) -> list[Any] | None:
        """Persist the loop's position after a step, with the step's entry in the step log and as
        the run's `step` event (the same JSON text); the step's park record
        (worker/run/timers.py), if it parked, is done with. One transaction, one round trip.
        Given the run's `agent`, the step's `duration_ms` is observed in the step histogram.
        Given `read` (keys), returns their values as the transaction leaves them: the next
        step's switch check takes no round trip of its own."""
        key, log = self.keys.run(run_id), self.keys.run_steps(run_id)
        entry = json.dumps(step_entry)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={"cursor": cursor, "memory": json.dumps(memory), "last_result": json.dumps(last_result)},
        )
        pipe.hdel(key, "pending", "wait", "wait_reply")
        pipe.rpush(log, entry)
        pipe.ltrim(log, -STEP_LOG_MAX, -1)
        pipe.expire(log, self.ttl_s)
        events.emit_in(pipe, self.keys, run_id, events.STEP, entry, self.ttl_s)
        if self.histograms and agent and "duration_ms" in step_entry:
            labels = histograms.series(agent, str(step_entry.get("action", "")))
            histograms.observe_in(
                pipe, self.keys.histogram(histograms.STEP), labels, float(step_entry["duration_ms"]) / 1000
            )
        if read:
            pipe.mget(read)
        answers = pipe.execute()
        return list(answers[-1]) if read else None

    def finish(
        self,
        run_id: str,
        status: str,
        stop_reason: str,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        lease_token: str = "",
        steps: int | None = None,
        only_if: str = "",
    ) -> bool:
        """End a run unless it has already ended; True when this call ended it.

        In the same script: drop the run from the deadlines zset; given the token of the
        execution's lease, release that lease (also when the run had already ended); given
        `steps`, write the run's step count first (the step that ended it, see begin_step); with
        `only_if` "parked" or "queued", end it only if it is parked or still queued (the kill
        sweep, worker/run/timers.py)."""
        # The script straight on the client: a pipeline would ask SCRIPT EXISTS first, every time.
        ended, *fields = self.finish_in(
            self.r,
            run_id,
            status,
            stop_reason,
            output=output,
            error=error,
            lease_token=lease_token,
            steps=steps,
            only_if=only_if,
        )
        if ended:
            self.ended(run_id, status, stop_reason, fields)
        return bool(ended)

    def finish_in(
        self,
        client: redis.Redis | redis.client.Pipeline,
        run_id: str,
        status: str,
        stop_reason: str,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        lease_token: str = "",
        steps: int | None = None,
        only_if: str = "",
        now: str | None = None,
    ) -> Any:
        """Run `finish`'s script on `client`, or queue it on a pipeline (the kill sweep ends many
        runs in one round trip); its answer is {1 if it ended the run, agent, version,
        started_ts, finished_ts}, to be passed to `ended`. `now`: the end's time (unix s), this
        process's clock when None, or "" for Redis's clock as the script runs."""
        keys = self.keys
        delivery_id = uuid.uuid4().hex  # the `end` webhook's, if the run has one subscribed to it
        return self._finish(
            keys=[
                keys.run(run_id),
                keys.run_ended_channel(run_id),
                keys.run_steps(run_id),
                keys.stats_runs(),
                keys.run_lease(run_id),
                keys.leases(),
                keys.deadlines(),
                keys.queued_runs(),
                keys.timers(),
                keys.parked_owners("tenant"),
                keys.parked_owners("agent"),
                keys.run_events(run_id),
                *self._webhook_keys(delivery_id),
                *self._archive_keys(),
                keys.histogram(histograms.RUN),
            ],
            args=[
                lua.named(
                    status=status,
                    stop_reason=stop_reason,
                    error=json.dumps(error),
                    now=repr(time.time()) if now is None else now,
                    ttl_s=self.ttl_s,
                    lease_token=lease_token,
                    run_id=run_id,
                    steps="" if steps is None else steps,
                    only_if=only_if,
                    status_data=status_data(status, stop_reason),
                    events_max=EVENTS_MAX,
                    delivery_id=delivery_id,
                    observe=self.histograms,
                ),
                json.dumps(output),
            ],
            client=client,
        )

    def _webhook_keys(self, delivery_id: str) -> list[str]:
        """The keys an `end` webhook delivery is written to (worker/webhooks/outbox.py)."""
        return [self.keys.webhook(delivery_id), self.keys.webhooks_due(), self.keys.webhooks_born()]

    def _archive_keys(self) -> list[str]:
        """The archive queue's keys an ended run is added to (worker/history/queue.py)."""
        return [self.keys.archive_due(), self.keys.archive_ended()]

    def ended(self, run_id: str, status: str, stop_reason: str, fields: list[Any]) -> None:
        """Tell the end hook that a run ended (once, by the call that ended it)."""
        if self.on_end is not None:
            names = ("agent", "version", "started_ts", "finished_ts")
            known = {n: str(v) for n, v in zip(names, fields, strict=True) if v is not None}
            self.on_end(run_id, status, stop_reason, known)

    def end_overdue(self, now: float | None = None) -> list[str]:
        """End, as stopped / max_seconds, every run past its deadline that no live execution
        holds: its lease has expired or its holder is a dead process on this host (a live
        holder's own watchdog ends it). Safe with several reapers at once: each run is claimed by
        one of them, and ending a run is idempotent. One ZRANGEBYSCORE when nothing is due."""
        now = time.time() if now is None else now
        due_ids = [str(x) for x in self.r.zrangebyscore(self.keys.deadlines(), "-inf", repr(now), 0, 100)]
        if not due_ids:
            return []
        claimed, held = self._claim_overdue(due_ids, now, "")
        due = [str(run_id) for run_id in claimed]
        for run_id, holder in zip(held[::2], held[1::2], strict=True):
            if holder_is_dead(str(holder)):
                taken, _ = self._claim_overdue([str(run_id)], now, str(holder))
                due.extend(str(run_id) for run_id in taken)
        return [run_id for run_id in due if self.finish(run_id, STOPPED, "max_seconds")]

    def _claim_overdue(self, run_ids: list[str], now: float, dead_holder: str) -> tuple[list[Any], list[Any]]:
        claimed, held = self._overdue(
            keys=[self.keys.deadlines(), *(self.keys.run_lease(run_id) for run_id in run_ids)],
            args=[lua.named(now=now, claim_s=OVERDUE_CLAIM_S, takeover=dead_holder, run_ids=run_ids)],
        )
        return list(claimed), list(held)

    def cancel(self, run_id: str) -> str | None:
        """Cancel a run: a queued one ends now, a running one at its next check. Returns the old status."""
        delivery_id = uuid.uuid4().hex  # the `end` webhook's, if the run has one subscribed to it
        status: str | None = self._cancel(
            keys=[
                self.keys.run(run_id),
                self.keys.run_cancel(run_id),
                self.keys.run_ended_channel(run_id),
                self.keys.stats_runs(),
                self.keys.queued_runs(),
                self.keys.timers(),
                self.keys.timers_bell(),
                self.keys.run_events(run_id),
                *self._webhook_keys(delivery_id),
                *self._archive_keys(),
            ],
            args=[
                lua.named(
                    now=repr(time.time()),
                    cancel_ttl_s=3600,
                    run_id=run_id,
                    status_data=status_data(CANCELLED, "cancelled"),
                    events_max=EVENTS_MAX,
                    ttl_s=self.ttl_s,
                    delivery_id=delivery_id,
                )
            ],
        )
        if status == QUEUED and self.on_end is not None:
            self.on_end(run_id, CANCELLED, "cancelled", None)
        return status

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        """The run's step log, oldest first (at most STEP_LOG_MAX entries)."""
        return [json.loads(item) for item in self.r.lrange(self.keys.run_steps(run_id), 0, -1)]


def overdue(raw: dict[str, str], max_seconds: float, now: float) -> bool:
    """True when a started run's deadline (first start + max_seconds + the time it waited for
    humans, worker/control/approvals.py) has passed."""
    started = _finite(raw.get("started_ts"))
    paused = _finite(raw.get("paused_s")) or 0.0
    return started is not None and started + max_seconds + paused <= now


def waiting_view(raw_approval: str | None) -> dict[str, Any] | None:
    """A running run's `waiting` in the API: `{"type": "approval", "call_id", "tool", "args",
    "since", "expires_at"}`, or None when it waits for no approval."""
    if not raw_approval:
        return None
    try:
        data = json.loads(raw_approval)
        return {
            "type": "approval",
            "call_id": data["call_id"],
            "tool": data["tool"],
            "args": data.get("args"),
            "since": data.get("since"),
            "expires_at": data.get("expires_at"),
        }
    except (ValueError, KeyError, TypeError):
        return None


def public_view(raw: dict[str, str], *, now: float | None = None) -> dict[str, Any]:
    """The run as the API shows it (CONTRACT.md: the run)."""
    data: dict[str, Any] = {}
    for name in _JSON_FIELDS:
        value = raw.get(name)
        data[name] = json.loads(value) if value else None
    started, finished = _finite(raw.get("started_ts")), _finite(raw.get("finished_ts"))
    if started is None:
        seconds = 0.0
    else:
        seconds = max(0.0, (finished if finished is not None else (now or time.time())) - started)
    return {
        "id": raw["id"],
        "agent": raw["agent"],
        "tenant": raw["tenant"],
        "version": raw.get("version") or None,
        "status": raw["status"],
        "stop_reason": raw.get("stop_reason") or None,
        "output": data["output"],
        "error": data["error"],
        "usage": {
            "steps": int(raw.get("steps", 0)),
            "tool_calls": int(raw.get("tool_calls", 0)),
            "seconds": round(seconds, 3),
            "tokens": int(raw.get("tokens", 0)),
            "cost_usd": usd_from_micro(int(raw.get("cost_micro", 0))),
        },
        "budgets": data["budgets"],
        "metadata": data["metadata"] or {},
        "waiting": waiting_view(raw.get("approval")) if raw["status"] == RUNNING else None,
        "created_at": iso(_finite(raw.get("created_ts"))),
        "started_at": iso(started),
        "finished_at": iso(finished),
        **({"webhook": json.loads(raw["webhook"])} if raw.get("webhook") else {}),
    }


def queued_runs(r: redis.Redis, keys: Keys) -> list[tuple[float, str]]:
    """The runs still queued, as (created_ts, run id), from the queued-runs zset (its members
    are `tenant|created_ts|run id`, written by worker/run/store.py's create script)."""
    found = []
    for member in r.zrange(keys.queued_runs(), 0, -1):
        parts = str(member).rsplit("|", 2)
        if len(parts) == 3:
            try:
                found.append((float(parts[1]), parts[2]))
            except ValueError:
                continue
    return found
