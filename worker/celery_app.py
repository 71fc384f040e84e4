"""The Celery app, `worker.celery_app:app`, with the reliability settings of the fleet.

Importing it loads settings and configures Celery but imports no task code, so the API can
send runs by name. Workers load `worker.tasks` through `include`.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any
from urllib.parse import quote

import celery as celery_pkg
from celery import Celery, signals
from celery.exceptions import SecurityWarning
from kombu import Exchange, Queue

from worker.keys import AGENT_QUEUE, ARCHIVE_QUEUE, TOOL_QUEUE, WEBHOOK_QUEUE
from worker.publish import Publisher
from worker.settings import DEV_STACK_ENV, Settings, get_settings

if os.environ.get(DEV_STACK_ENV) == "1":
    # `fleet up` runs as whoever started it, root on a dev VM included; the warning that a worker
    # runs as the superuser is nothing a user of a one-machine dev stack can act on. Containers
    # run the workers as uid 10001 and never see it.
    warnings.filterwarnings("ignore", category=SecurityWarning)

RUN_TASK = "fleet.run_agent"
TOOL_TASK = "fleet.tool_call"
WEBHOOK_TASK = "fleet.deliver_webhook"
ARCHIVE_TASK = "fleet.archive_runs"
SOFT_LIMIT_GRACE_S = 0.5  # Celery's soft limit, past the run's own deadline
HARD_LIMIT_GRACE_S = 2.0  # Celery's hard limit, past the run's own deadline


def visibility_timeout_s(settings: Settings) -> int:
    """Above the longest run, so Redis never redelivers a message whose run is still going."""
    return max(3600, int(settings.max_seconds * 2) + 600)


def consumer_class(version: tuple[int, int] = (celery_pkg.VERSION.major, celery_pkg.VERSION.minor)) -> str:
    """The worker's consumer: Celery's own, or on Celery 5.7 one that reconnects after a broker
    restart instead of exiting (worker/compat.py says why). A string, so the API imports none."""
    if version == (5, 7):
        return "worker.compat:Consumer"
    return "celery.worker.consumer:Consumer"


def celery_redis_url(settings: Settings) -> str:
    """REDIS_URL as kombu and Celery's result backend spell it: itself, or for a Sentinel URL one
    `sentinel://[:password@]host:port/db` per Sentinel joined by `;` (the master's name and the
    Sentinels' password go in the transport options, `sentinel_options`)."""
    target = settings.sentinel
    if target is None:
        return settings.redis_url
    userinfo = ""
    if target.password is not None:
        userinfo = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
    hosts = [f"[{host}]" if ":" in host else host for host, _ in target.sentinels]
    return ";".join(
        f"sentinel://{userinfo}{host}:{port}/{target.db}"
        for host, (_, port) in zip(hosts, target.sentinels, strict=True)
    )


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """The transport options a Sentinel broker and result backend need (none for a plain Redis):
    the master's name, and how to reach the Sentinels (their password, short timeouts)."""
    if settings.sentinel is None:
        return {}
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    password = settings.sentinel_password()
    if password:
        sentinel_kwargs["password"] = password
    return {"master_name": settings.sentinel.master, "sentinel_kwargs": sentinel_kwargs}


def make_app(settings: Settings) -> Celery:
    url = celery_redis_url(settings)
    celery = Celery("agentfleet", broker=url, backend=url, include=["worker.tasks"])
    vt = visibility_timeout_s(settings)
    transport: dict[str, Any] = {
        "visibility_timeout": vt,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 25,
        # Every message goes out at priority 0 (worker/publish.py), so a consumer's BRPOP lists one
        # key a queue, not kombu's default four (priorities 0, 3, 6, 9): a tool worker consumes a
        # dozen queues, and building and serving a 48-key BRPOP after every message cost it more
        # CPU than the tool call's own checks.
        "priority_steps": [0],
        **sentinel_options(settings),
    }
    celery.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": vt, **sentinel_options(settings)},
        broker_connection_retry_on_startup=True,
        result_expires=86400,
        task_ignore_result=True,
        task_default_queue=AGENT_QUEUE,
        # each queue on its own exchange: a message for one can never land on the other
        task_queues=[
            Queue(AGENT_QUEUE, Exchange(AGENT_QUEUE), routing_key=AGENT_QUEUE),
            Queue(TOOL_QUEUE, Exchange(TOOL_QUEUE), routing_key=TOOL_QUEUE),
            Queue(WEBHOOK_QUEUE, Exchange(WEBHOOK_QUEUE), routing_key=WEBHOOK_QUEUE),
            Queue(ARCHIVE_QUEUE, Exchange(ARCHIVE_QUEUE), routing_key=ARCHIVE_QUEUE),
        ],
        task_routes={
            RUN_TASK: {"queue": AGENT_QUEUE},
            TOOL_TASK: {"queue": TOOL_QUEUE},
            WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE},
            ARCHIVE_TASK: {"queue": ARCHIVE_QUEUE},
        },
        worker_max_memory_per_child=512_000,  # KiB; checked after each task (prefork)
        worker_max_tasks_per_child=1000,
        worker_soft_shutdown_timeout=15.0,
        # An idle worker has nothing to requeue (the fleet sends no ETA messages): it stops at once.
        worker_enable_soft_shutdown_on_idle=False,
        worker_send_task_events=True,  # tool workers: observability.tool_task_events (below)
        # No task-sent events: runs come from the API (which never sent them) and tool calls are
        # many and short; a sent event is a Redis PUBLISH on the path of every tool call.
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_consumer=consumer_class(),  # Celery 5.7: reconnect after a Redis restart, see there
    )
    from worker.gateway.pool import DrainToolCalls
    from worker.obs.heartbeat import Heartbeat

    celery.steps["worker"].add(Heartbeat)
    celery.steps["worker"].add(DrainToolCalls)  # a no-op but on a tool worker with calls in flight
    return celery


def send_run(publisher: Publisher, run_id: str, max_seconds: float, wake: str = "") -> None:
    """Enqueue a run on the agents queue with time limits derived from its own budget (for a
    resume, `max_seconds` is what is left of it; `wake` names the park it resumes). One LPUSH
    (worker/publish.py); ignore_result, else the result backend would subscribe to the task's
    result channel."""
    publisher.send(
        RUN_TASK,
        [run_id, wake] if wake else [run_id],
        AGENT_QUEUE,
        headers={"sent_at": time.time()},  # the queue's oldest-message age, for /metrics
        soft_time_limit=max_seconds + SOFT_LIMIT_GRACE_S,
        time_limit=max_seconds + HARD_LIMIT_GRACE_S,
    )


# Set at worker init: Celery's loggers of per-task lines this worker keeps at WARNING
# (`Task … received`: celery.worker.strategy; `… succeeded`: celery.app.trace; failures still log).
_quiet_loggers: tuple[str, ...] = ()
_component = "worker"  # set at worker init: `tool-worker` for a worker that serves only tools


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    """Workers log through the fleet's chain (connecting this keeps Celery's own setup out)."""
    import logging

    from worker.obs.telemetry import setup_logging

    setup_logging(get_settings())
    if os.environ.get(DEV_STACK_ENV) == "1":
        # "Events of group {task} enabled by remote": Flower turning task events on, once per worker
        logging.getLogger("celery.worker.control").setLevel(logging.WARNING)
    for name in _quiet_loggers:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))


def serves_only_tools(queues: Any) -> bool:
    """True for a worker whose `-Q` names only tool queues (`tools`, `tools.<name>`, and
    `webhooks` and `archive`, whose deliveries and history batches tool workers make)."""
    names = queues.split(",") if isinstance(queues, str) else list(queues or [])
    names = [str(name).strip() for name in names if str(name).strip()]
    return bool(names) and all(
        name in (TOOL_QUEUE, WEBHOOK_QUEUE, ARCHIVE_QUEUE) or name.startswith(TOOL_QUEUE + ".")
        for name in names
    )


@signals.celeryd_init.connect
def _worker_init(conf: Any = None, options: Any = None, **_: Any) -> None:
    from worker.obs.telemetry import setup_sentry

    settings = get_settings()
    setup_sentry(settings, "worker")
    global _quiet_loggers, _component
    if conf is None:
        return
    if serves_only_tools((options or {}).get("queues")):
        _component = "tool-worker"
        if not settings.observability.tool_task_events:  # two lines per tool call
            _quiet_loggers = ("celery.worker.strategy", "celery.app.trace")
        # read by the worker after this signal; heartbeats (worker-online, Flower's worker list) stay
        conf.worker_send_task_events = settings.observability.tool_task_events
        conf.broker_transport_options = tool_worker_transport(conf.broker_transport_options)
    else:
        # An agent worker logs no line per delivery of a run (a run is delivered again on every
        # resume): `run started` and `run finished` say what a run did, and at two deliveries per
        # run, Celery's line through the redaction chain took a tenth of the main process's CPU
        # (bench_waits, 1,000 runs: 872-974 waiting at once with it, 977-996 without). The runs'
        # task events (`observability.run_task_events`) bring it back, as tool_task_events does
        # for tool calls. Its pool processes drop `… succeeded` (worker/tasks.py).
        if not settings.observability.run_task_events:
            _quiet_loggers = ("celery.worker.strategy",)


def tool_worker_transport(options: dict[str, Any]) -> dict[str, Any]:
    """A tool worker's broker options: the agent workers' without kombu's ack emulation.

    With it (Redis's default), kombu records every message it hands a consumer in Redis (a ZADD
    and an HSET in one pipeline, on the consumer's thread, before the task starts) and deletes
    the record at the ack, so that a message a dead worker held comes back after the visibility
    timeout (an hour or more). Nothing a tool worker consumes needs that: a tool call that a dead
    tool worker held, queued in its memory or running, is retried by its run's timer after the
    call's timeout + grace (worker/run/timers.py), under the gateway's rules; a webhook delivery
    and a history batch are claimed again when their claim lapses. So a tool worker keeps the
    messages it holds in memory only (kombu's virtual QoS). bench_gateway: the tool worker's CPU
    per tool call fell by about a fifth, and the round trip p50 by about 0.3 ms (README, Benchmarks)."""
    return {**options, "ack_emulation": False}


@signals.celeryd_after_setup.connect
def _before_pool_forks(instance: Any = None, **_: Any) -> None:
    """Prefork workers ready their main process for the fork (worker/preload.py).

    `celeryd_after_setup` is the last signal in the main process before the pool starts: the
    worker's blueprint sends it from `on_start`, ahead of starting its steps, the pool among them.
    """
    from worker.obs.telemetry import setup_tracing
    from worker.preload import is_prefork, prepare_fork

    prefork = instance is not None and is_prefork(instance.pool_cls)
    if prefork and get_settings().runtime.prefork_preload:
        prepare_fork()
    if not prefork:  # this process runs the tasks; a prefork pool's children start their own
        setup_tracing(get_settings(), _component)


@signals.worker_process_init.connect
def _child_tracing(**_: Any) -> None:
    """A prefork child starts its own span exporter (its thread would not survive a fork)."""
    from worker.obs.telemetry import setup_tracing

    setup_tracing(get_settings(), _component)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _flush_tracing(**_: Any) -> None:
    """Export the spans still buffered before the process ends."""
    from worker.obs import tracing

    tracing.shutdown()


app = make_app(get_settings())
