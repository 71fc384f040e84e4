"""A Celery task message put on its queue in one LPUSH, on the process's own Redis client.

`Celery.send_task` builds the message (protocol 2: headers, properties, body), then goes through
kombu's producer pool, the connection's retry wrapper, the queue's declaration cache and a Redis
client it makes for every message, before its one LPUSH. On the paths that send one message per
tool call and per run (the gateway, the API's POST, the scheduler's resumes), that machinery was
most of a send's CPU. `Publisher` keeps the message exactly as Celery and kombu write it for the
Redis transport (Celery's own `as_task_v2` builds headers, properties and body; the envelope is
kombu's: body base64, `delivery_info`, `delivery_tag`) and pushes it with the client the process
already holds. What it does not do: publish retries (a failed LPUSH raises, and the caller treats
the broker as down, as it did when kombu gave up), exchanges other than the default one (every
fleet queue is a direct queue of its own name), priorities, and Celery's publish signals (the
fleet connects none; OpenTelemetry context travels in the headers the caller passes). With Sentry's
Celery integration on (SENTRY_DSN), a message gets the trace headers and the `queue.submit.celery`
span that integration gives what send_task sends, so a run's Sentry trace still goes from the API
through the workers. (Imported here, at the top: a prefork child must import nothing of its own.)

Flower and the workers see the same messages as before: a worker cannot tell the two apart.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
import sentry_sdk
from celery import Celery
from celery.utils.nodenames import anon_nodename
from sentry_sdk.consts import OP
from sentry_sdk.integrations.celery import CeleryIntegration, _update_celery_task_headers

_BODY_ENCODING = "base64"  # kombu's Redis transport's


class Publisher:
    """Sends tasks of `app` to queues of the Redis broker `r` points at (the same server and db)."""

    def __init__(self, app: Celery, r: redis.Redis) -> None:
        self.app = app
        self.r = r
        self._origin = anon_nodename()

    def message(
        self,
        name: str,
        args: list[Any],
        queue: str,
        *,
        headers: dict[str, Any] | None = None,
        argsrepr: str | None = None,
        expires_s: float | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        ignore_result: bool = True,
    ) -> str:
        """The JSON text kombu would LPUSH for `app.send_task(name, args, queue=queue, ...)`."""
        task_id = str(uuid.uuid4())
        root_id = parent_id = None
        parent = self.app.current_worker_task  # as send_task: a task sent from a task is its child
        if parent is not None:
            root_id = parent.request.root_id or parent.request.id
            parent_id = parent.request.id
        task_headers, properties, body, _ = self.app.amqp.as_task_v2(
            task_id,
            name,
            tuple(args),
            {},
            expires=expires_s,
            reply_to=self.app.thread_oid,
            time_limit=time_limit,  # type: ignore[arg-type]  # floats work, as in send_task
            soft_time_limit=soft_time_limit,  # type: ignore[arg-type]
            root_id=root_id,
            parent_id=parent_id,
            origin=self._origin,
            ignore_result=ignore_result,
            argsrepr=argsrepr,
            kwargsrepr="{}",
        )
        if headers:
            task_headers.update(headers)
        properties.update(
            delivery_mode=2,  # persistent, Celery's default
            delivery_info={"exchange": "", "routing_key": queue},
            priority=0,
            body_encoding=_BODY_ENCODING,
            delivery_tag=str(uuid.uuid4()),
        )
        if expires_s is not None:
            properties["expiration"] = str(int(max(0.0, expires_s) * 1000))
        encoded = base64.b64encode(json.dumps(body).encode()).decode()
        envelope = {
            "body": encoded,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": task_headers,
            "properties": properties,
        }
        return json.dumps(envelope)

    def send(self, name: str, args: list[Any], queue: str, **options: Any) -> None:
        """Put the task on `queue` (one LPUSH); raises redis.RedisError when Redis refuses it."""
        with _sentry_submit(name, options.get("headers") or {}) as headers:
            options["headers"] = headers
            self.r.lpush(queue, self.message(name, args, queue, **options))

    def outgoing(self, name: str, args: list[Any], queue: str, **options: Any) -> Outgoing:
        """The task as `send` would push it, for a Lua script to LPUSH in its own round trip
        (the gateway's admission sends an admitted tool call this way)."""
        with _sentry_submit(name, options.get("headers") or {}) as headers:
            options["headers"] = headers
            return Outgoing(queue, self.message(name, args, queue, **options))


@dataclass(frozen=True)
class Outgoing:
    """A task message and the queue (the Redis list) it goes on."""

    queue: str
    message: str


@contextlib.contextmanager
def _sentry_submit(name: str, headers: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`headers`, with what Sentry's Celery integration adds to a message it sees sent (trace
    propagation, the enqueue time), inside its `queue.submit.celery` span; unchanged when that
    integration is off, as it is without SENTRY_DSN."""
    integration = sentry_sdk.get_client().get_integration(CeleryIntegration)
    if integration is None or not integration.propagate_traces:
        yield headers
        return
    with sentry_sdk.start_span(op=OP.QUEUE_SUBMIT_CELERY, name=name, origin=CeleryIntegration.origin) as span:
        yield _update_celery_task_headers(headers, span, integration.monitor_beat_tasks)
