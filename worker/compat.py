"""A targeted fix for a Celery 5.7 bug that makes a worker exit when its Redis broker restarts.

Celery 5.7.0's `Consumer.on_connection_error_after_connected` collects the lost broker connection
and then also closes it (celery/worker/consumer/consumer.py, `connection.close()` after
`connection.collect()`). With the Redis transport that second step can kill the worker:

1. `Connection.collect()` closes the default channel (the task consumer's) first. If a BRPOP was
   in flight on it, that close fails at once on the dead socket and is swallowed, so the channel
   stays open. Closing the other channels then stops at the first one whose close raises (the
   remote-control channel's UNSUBSCRIBE, Redis being down), so the default channel is not closed
   there either. Last, `collect()` detaches the transport (`transport.client = None`), but keeps
   `Connection._default_channel`.
2. `connection.close()` closes that default channel again. This time the close gets as far as
   restoring the unacked messages (`task_acks_late`): it builds a new Redis pool from
   `transport.client`, which is None, and raises `AttributeError: 'NoneType' object has no
   attribute 'hostname'` (kombu/transport/redis.py, `Channel._connparams`). `ignore_errors` lets
   only connection and channel errors through, so the AttributeError leaves `Consumer.start` and
   the worker exits with "Unrecoverable error" instead of reconnecting.

The fix, a Consumer subclass installed with the `worker_consumer` setting on Celery 5.7 only
(`worker.celery_app.consumer_class`): after `collect()`, forget the collected connection's
default channel, so the close that follows has nothing to do (for Redis its other steps are
no-ops once collected), as on Celery 5.6, which collected and never closed. That channel keeps
its own Redis pool: runs still executing ack through it once Redis is back. A message it holds
that is never acked stays in Redis's unacked set, restored as any unacked message is (at the
visibility timeout); the restore the second close attempted could not reach a stopped Redis.

Not a pin to Celery 5.6.3 instead: kombu 5.6's redis extra holds redis-py below 6.5, whose type
hints fail the fleet's strict mypy (tests/worker/test_reconnect.py shows the bug and this fix).
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer


def forget_default_channel_after_collect(connection: Any) -> None:
    """Make `connection.collect()` drop the default channel it leaves behind (this connection only)."""
    collect = connection.collect

    def collect_then_forget_default_channel(*args: Any, **kwargs: Any) -> Any:
        try:
            return collect(*args, **kwargs)
        finally:
            # The transport is gone: this channel can never be closed cleanly through it.
            connection._default_channel = None

    connection.collect = collect_then_forget_default_channel


class Consumer(CeleryConsumer):
    """Celery's consumer, with the connection-error handler fixed for Celery 5.7 (see above)."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        if self.connection is not None:
            forget_default_channel_after_collect(self.connection)
        super().on_connection_error_after_connected(exc)
