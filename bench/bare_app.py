"""The bare Celery baseline of bench/bench_core.py: one no-op task, none of the fleet's code.

It mirrors the fleet's Celery settings where they matter for delivery (JSON, `acks_late`,
`reject_on_worker_lost`, prefetch 1, the same transport options) but, unlike the fleet's app,
keeps results (the round trip is `delay().get()`) and, by default, Celery's default of no task
events; `BENCH_BARE_EVENTS=1` turns on the fleet's event settings too. The worker serves it with
`celery -A bench.bare_app worker -Q bare`; broker and results are `BENCH_REDIS_URL`.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from kombu import Queue

NOOP_TASK = "bare.noop"
QUEUE = "bare"  # served by the bare worker (latency)
API_QUEUE = "bare_api"  # what the bare API sends to; nothing consumes it (throughput)


def make_app(redis_url: str, events: bool = False) -> Celery:
    """The bare Celery app on `redis_url`, with one task `bare.noop` that returns "ok"."""
    celery = Celery("bare", broker=redis_url, backend=redis_url)
    transport: dict[str, Any] = {
        "visibility_timeout": 3600,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 25,
        "priority_steps": [0],  # as the fleet: one key a queue in each BRPOP
    }
    celery.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": 3600},
        broker_connection_retry_on_startup=True,
        result_expires=3600,
        task_default_queue=QUEUE,
        task_queues=[Queue(QUEUE), Queue(API_QUEUE)],
        task_routes={NOOP_TASK: {"queue": QUEUE}},
        worker_max_tasks_per_child=1000,
        worker_send_task_events=events,
        task_send_sent_event=events,
        worker_hijack_root_logger=False,
    )

    @celery.task(name=NOOP_TASK, shared=False)
    def noop() -> str:
        return "ok"

    return celery


app = make_app(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/1"),
    events=os.environ.get("BENCH_BARE_EVENTS", "") == "1",
)
