"""The fleet's Celery tasks, kept thin: the logic lives in plain modules."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from functools import lru_cache
from typing import Any

import redis
import structlog
from billiard.einfo import ExceptionInfo
from celery import Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from worker import agents, tools
from worker.celery_app import ARCHIVE_TASK, RUN_TASK, TOOL_TASK, WEBHOOK_TASK, app, send_run
from worker.gateway.calls import REPLY_GRACE_S, BrokerUnavailable, FleetControls, ToolAttempt
from worker.gateway.executor import ToolExecutor
from worker.gateway.pool import ToolPool, process_pool, sync_pool
from worker.history import queue as archive_queue
from worker.history.archiver import Archiver
from worker.history.db import HistoryDB
from worker.keys import AGENT_QUEUE, ARCHIVE_QUEUE, WEBHOOK_QUEUE, Keys, tool_queue
from worker.obs.tracing import TRACEPARENT, trace_headers
from worker.publish import Outgoing, Publisher
from worker.redis_conn import async_redis_for, get_redis, redis_for
from worker.run.ended import end_recorder
from worker.run.keeper import RunKeeper
from worker.run.lease import Leases
from worker.run.loop import LoopDeps, execute_run, exit_process
from worker.run.reaper import reaper_loop
from worker.run.store import STOPPED, TERMINAL, Budgets, RunStore, overdue
from worker.run.timers import Due, Scheduler, Timers
from worker.settings import get_settings
from worker.webhooks import delivery, outbox

agents.load_plugins(get_settings().plugins)
tools.load_builtins()


EXPIRES_SKEW_S = 5.0
PURGE_LOOK_S = 60.0  # how often an agent worker looks whether the history purge is due
log = structlog.get_logger("agentfleet.worker")


def _trace_id() -> str | None:
    """The run's trace id (bound by the loop), for the tool worker's log line."""
    trace_id = structlog.contextvars.get_contextvars().get("trace_id")
    return trace_id if isinstance(trace_id, str) else None


class CeleryDispatcher:
    """Sends tool-call attempts to their tool's queue, `tools.<tool>`: one LPUSH of the message
    Celery would send (worker/publish.py), on the process's Redis client."""

    def __init__(self, publisher: Publisher | None = None) -> None:
        self._publisher = publisher

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = _publisher()
        return self._publisher

    def send(self, attempt: ToolAttempt) -> None:
        try:
            self.publisher.send(*_tool_task(attempt), **_tool_options(attempt))
        except (redis.RedisError, OSError) as exc:
            # The broker is unreachable: the run is not at fault. Like any Redis error in the
            # loop, this ends the execution; the lease expires and the run resumes elsewhere.
            raise BrokerUnavailable(f"could not send the tool call: {type(exc).__name__}") from exc

    def outgoing(self, attempt: ToolAttempt) -> Outgoing:
        """The message `send` would push, for the admission script to push when it admits the
        attempt: admitted and sent in one round trip."""
        return self.publisher.outgoing(*_tool_task(attempt), **_tool_options(attempt))


def _tool_task(a: ToolAttempt) -> tuple[str, list[Any], str]:
    """A tool-call attempt's task name, arguments and queue."""
    return TOOL_TASK, [a.call_id, a.attempt, a.tool, a.args, a.timeout_s], tool_queue(a.tool)


def _tool_options(a: ToolAttempt) -> dict[str, Any]:
    """The message options of a tool-call attempt (Publisher.message's keywords)."""
    return {
        # Celery's logs, events and Flower show this instead of the arguments (may hold PII).
        "argsrepr": f"({a.call_id!r}, {a.attempt}, {a.tool!r}, <args>, {a.timeout_s})",
        # sent_at: the queue's oldest-message age (/metrics); the run's trace id, for the tool
        # worker's log line; its tenant and agent, to name the run's switches and, with traces
        # on, the step's span context (worker/obs/tracing.py)
        "headers": {
            "sent_at": time.time(),
            "trace_id": _trace_id(),
            "owner": list(a.owner),
            **trace_headers(),
        },
        # A message still queued when its run has given up on it (timeout + REPLY_GRACE_S) is
        # dropped, not executed; EXPIRES_SKEW_S allows for clocks that differ by host. The reply
        # comes through its own list, never the result backend (ignore_result).
        "expires_s": a.timeout_s + REPLY_GRACE_S + EXPIRES_SKEW_S,
    }


@lru_cache(maxsize=1)
def _publisher() -> Publisher:
    """The process's sender of task messages (worker/publish.py), on its Redis client."""
    return Publisher(app, get_redis())


@lru_cache(maxsize=1)
def _deps() -> LoopDeps:
    settings = get_settings()
    r = get_redis()
    keys = Keys(settings.key_prefix)
    leases = Leases(r, keys)
    return LoopDeps(
        r=r,
        keys=keys,
        settings=settings,
        store=RunStore(
            r,
            keys,
            settings.run_ttl_s,
            on_end=end_recorder(r, keys, settings),
            histograms=settings.metrics.histograms,
        ),
        dispatcher=CeleryDispatcher(),
        controls=FleetControls.build(r, keys, settings.run_ttl_s),
        leases=leases,
        keeper=RunKeeper(leases),  # its thread starts in each pool child, on its first run
        hard_stop=exit_process,
        timers=Timers(r, keys) if settings.runtime.park_waits else None,
    )


def _new_tool_pool() -> ToolPool:
    deps = _deps()
    tools_settings = deps.settings.tools
    executor = ToolExecutor(
        deps.r,
        deps.keys,
        deps.settings,
        sync_pool(tools_settings.sync_threads),
        async_redis=lambda: async_redis_for(deps.settings),
    )
    return ToolPool(executor, tools_settings.worker_max_inflight)


class RunTask(Task):  # type: ignore[type-arg]
    def on_failure(
        self,
        exc: Exception,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        # Celery's hard time limit killed the child (runs in the worker's main process): the run
        # ran out of time. A lost worker (WorkerLostError) is requeued instead, and resumes.
        if isinstance(exc, TimeLimitExceeded) and args:
            _deps().store.finish(str(args[0]), STOPPED, "max_seconds")


@app.task(name=RUN_TASK, base=RunTask, bind=True, send_events=get_settings().observability.run_task_events)
def run_agent(self: RunTask, run_id: str, wake: str = "") -> str | None:
    """Execute (or resume) one run under its budgets; `wake`: the park a resume is for."""
    return execute_run(run_id, _deps(), wake)


@app.task(name=TOOL_TASK, bind=True)
def tool_call(
    self: Task,  # type: ignore[type-arg]
    call_id: str,
    attempt: int,
    tool: str,
    args: dict[str, Any],
    timeout_s: float,
) -> None:
    """Hand one attempt of a tool call to the process's event loop (worker/gateway/pool.py), which
    executes it and pushes its envelope for the waiting run. Returns at once, so the message is
    acked; waits first while the process holds `tools.worker_max_inflight` calls."""
    trace_id = getattr(self.request, "trace_id", None)  # the dispatcher's headers
    trace_id = trace_id if isinstance(trace_id, str) else None
    sent_owner = getattr(self.request, "owner", None)  # checked against the run: see ToolExecutor.admit
    owner = None
    if isinstance(sent_owner, list) and len(sent_owner) == 2 and all(isinstance(x, str) for x in sent_owner):
        owner = (sent_owner[0], sent_owner[1])
    traceparent = getattr(self.request, TRACEPARENT, None)
    traceparent = traceparent if isinstance(traceparent, str) else None
    process_pool(_new_tool_pool).submit(call_id, attempt, tool, args, timeout_s, trace_id, owner, traceparent)


@lru_cache(maxsize=1)
def _outbox() -> outbox.Outbox:
    deps = _deps()
    return outbox.Outbox(deps.r, deps.keys)


@lru_cache(maxsize=1)
def _webhook_secrets() -> dict[str, str]:
    """Tenant -> webhook secret, read once per process like the API keys (a rotation restarts)."""
    return get_settings().tenant_webhook_secrets()


@app.task(name=WEBHOOK_TASK)
def deliver_webhook(delivery_id: str, claim: str) -> None:
    """Make one attempt of a webhook delivery (worker/webhooks/delivery.py): checked and prepared
    here, POSTed on the process's event loop, so the message is acked at once and a slow receiver
    holds no thread. An attempt lost with its process is claimed again (outbox.CLAIM_GRACE_S)."""
    deps = _deps()
    attempt = delivery.prepare(
        _outbox(), deps.store.load, deps.settings, _webhook_secrets(), delivery_id, claim
    )
    if attempt is not None:
        work = delivery.deliver(_outbox(), deps.settings, attempt)
        process_pool(_new_tool_pool).spawn(work, "webhook delivery")


def send_webhook(claimed: outbox.Claimed) -> None:
    """Send one attempt of a claimed delivery to the webhooks queue (outbox.Scheduler). A message
    still queued when its claim lapses expires: the next claim sends a fresh one."""
    lead_s = _webhook_lead_s()
    _publisher().send(
        WEBHOOK_TASK,
        [claimed.delivery_id, claimed.claim],
        WEBHOOK_QUEUE,
        headers={"sent_at": time.time()},  # the queue's oldest-message age, for /metrics
        expires_s=lead_s,
    )


def _webhook_lead_s() -> float:
    return get_settings().webhooks.timeout_s + outbox.CLAIM_GRACE_S


def _webhook_scheduler(deps: LoopDeps) -> outbox.Scheduler:
    section = deps.settings.webhooks
    tick_s = deps.settings.runtime.timer_tick_ms / 1000.0
    return outbox.Scheduler(_outbox(), send_webhook, _webhook_lead_s(), section.max_age_s, tick_s)


@lru_cache(maxsize=1)
def _archiver() -> Archiver:
    deps = _deps()
    db = HistoryDB(deps.settings.history_database_url())
    return Archiver(deps.r, deps.keys, archive_queue.ArchiveQueue(deps.r, deps.keys), db, deps.settings)


@app.task(name=ARCHIVE_TASK)
def archive_runs(run_ids: list[str]) -> int:
    """Write a claimed batch of ended runs to the run history (worker/history/archiver.py); a
    batch the database refused is retried with backoff, a lost one claimed again."""
    return _archiver().archive_runs([str(run_id) for run_id in run_ids])


def send_archive(run_ids: list[str]) -> None:
    """Send a claimed batch to the archive queue (queue.Scheduler). A message still queued when
    its claim lapses expires: the next claim sends a fresh one."""
    _publisher().send(
        ARCHIVE_TASK,
        [run_ids],
        ARCHIVE_QUEUE,
        argsrepr=f"(<{len(run_ids)} runs>)",
        headers={"sent_at": time.time()},  # the queue's oldest-message age, for /metrics
        expires_s=archive_queue.CLAIM_S,
    )


def _purge_loop(stop: threading.Event) -> None:
    """Purge expired run history once per `archive.purge_every_s`, fleet-wide (a lock in Redis);
    every agent worker looks once a minute whether the period's purge is still to be done."""
    holder = f"{socket.gethostname()}:{os.getpid()}"
    while not stop.is_set():
        try:
            _archiver().purge_due(holder)
        except Exception as exc:  # Redis away: try again at the next look
            log.warning("history purge error", error=f"{type(exc).__name__}: {exc}"[:200])
        stop.wait(PURGE_LOOK_S)


def requeue(run_id: str) -> None:
    """Send a run whose lease expired (its worker died) back to the agents queue; a run already
    past its deadline ends as stopped / max_seconds instead of waiting in the queue for nothing."""
    deps = _deps()
    raw = deps.store.load(run_id)
    if raw is None or raw["status"] in TERMINAL:
        deps.leases.forget(run_id)
        return
    max_seconds = Budgets.from_dict(json.loads(raw["budgets"])).max_seconds
    if overdue(raw, max_seconds, time.time()):
        deps.store.finish(run_id, STOPPED, "max_seconds")
        deps.leases.forget(run_id)
        return
    send_run(_publisher(), run_id, max_seconds)


_reaper_stop = threading.Event()


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    """Agent workers (those consuming the agents queue) reap runs whose worker died."""
    if AGENT_QUEUE not in app.amqp.queues.consume_from:
        return
    deps = _deps()
    threading.Thread(
        target=reaper_loop,
        args=(deps.leases, requeue, _reaper_stop, deps.store.end_overdue),
        name="run-reaper",
        daemon=True,
    ).start()
    threading.Thread(
        target=_webhook_scheduler(deps).run, args=(_reaper_stop,), name="webhooks", daemon=True
    ).start()
    archiving = archive_queue.Scheduler(
        archive_queue.ArchiveQueue(deps.r, deps.keys), send_archive, deps.settings.archive.batch
    )
    threading.Thread(target=archiving.run, args=(_reaper_stop,), name="archive", daemon=True).start()
    threading.Thread(target=_purge_loop, args=(_reaper_stop,), name="history-purge", daemon=True).start()
    if deps.timers is not None:
        scheduler = Scheduler(
            deps.timers, deps.store, resume, tick_s=deps.settings.runtime.timer_tick_ms / 1000.0
        )
        bell = redis_for(deps.settings)  # its own connection: the BLPOP blocks it
        threading.Thread(
            target=scheduler.run, args=(_reaper_stop, bell), name="run-timers", daemon=True
        ).start()


def resume(due: Due) -> None:
    """Send the resume delivery of a parked run whose timer is due (timers.Scheduler)."""
    send_run(_publisher(), due.run_id, max(0.1, due.deadline_ts - time.time()), wake=due.park)


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    _reaper_stop.set()


@worker_process_init.connect
def _quiet_run_successes(**_: Any) -> None:
    """Agent pool processes do not log Celery's `Task fleet.run_agent[…] succeeded` INFO line:
    the loop's `run finished` line says the same with the run's id, outcome, stop reason and
    duration (a line through the redaction chain costs about 0.17 ms of CPU per run). Failures
    still log at ERROR. The main process drops `Task … received` as well, unless
    `observability.run_task_events` is on (celery_app._worker_init)."""
    if AGENT_QUEUE in app.amqp.queues.consume_from:
        trace_log = logging.getLogger("celery.app.trace")
        trace_log.setLevel(max(logging.WARNING, trace_log.getEffectiveLevel()))
