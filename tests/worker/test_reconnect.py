"""A worker's consumer survives losing its Redis broker, checked without a worker in a second.

tests/fleet/test_chaos.py restarts a real Redis under a real fleet, where the failure it guards
against shows only when the timing is right. This builds that timing by hand, against a real
Redis: the task consumer's channel holds an unacked message (`task_acks_late`) with a BRPOP in
flight, a second channel subscribes to a fanout exchange (as the remote-control mailbox does),
and Redis stops. Then it runs Celery's connection-error handler on a consumer with just that
connection.

Why it matters: on this state `Connection.collect()` cannot close the default channel (its close
fails on the in-flight BRPOP, the mailbox channel's close fails next and stops the loop over the
channels) and detaches the transport. Closing the collected connection afterwards, as Celery 5.7.0
does in `Consumer.on_connection_error_after_connected`, closes that channel again; now the close
restores the unacked messages through a new Redis pool built from the detached transport's
client, None, and raises `AttributeError: 'NoneType' object has no attribute 'hostname'`, which
`ignore_errors` does not catch: the worker exits with "Unrecoverable error" instead of
reconnecting. On Celery 5.7 the fleet runs the consumer of worker/compat.py, which is fixed.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import celery
import kombu
import pytest
from celery import Celery
from celery.worker.consumer import Consumer
from kombu import Connection, Exchange, Queue

from tests.harness import RedisServer
from worker import compat
from worker.celery_app import consumer_class, make_app
from worker.settings import get_settings

ON_5_7 = (celery.VERSION.major, celery.VERSION.minor) == (5, 7)
KOMBU_5_7 = tuple(int(part) for part in kombu.__version__.split(".")[:2]) == (5, 7)


def test_the_fixed_consumer_is_installed_on_celery_5_7_only() -> None:
    assert consumer_class((5, 7)) == "worker.compat:Consumer"
    for version in ((5, 5), (5, 6), (5, 8), (6, 0)):
        assert consumer_class(version) == "celery.worker.consumer:Consumer"
    expected = "worker.compat:Consumer" if ON_5_7 else "celery.worker.consumer:Consumer"
    assert make_app(get_settings()).conf.worker_consumer == expected


@pytest.fixture
def lost_connection(redis_server: RedisServer) -> Iterator[Connection]:
    """A consumer connection in the state a Redis restart can leave it in (see the module doc)."""
    tasks = Queue("agents", Exchange("agents"), routing_key="agents")
    with Connection(redis_server.url) as producer:
        producer.Producer().publish(
            {"run": 1}, exchange=tasks.exchange, routing_key="agents", declare=[tasks]
        )
    conn = Connection(redis_server.url, transport_options={"socket_timeout": 5})
    received: list[Any] = []
    conn.Consumer([tasks], callbacks=[lambda _body, msg: received.append(msg)], accept=["json"]).consume()
    conn.drain_events(timeout=5)
    assert len(received) == 1 and received[0].channel is conn.default_channel  # held, unacked
    mailbox = Queue("mailbox", Exchange("mailbox", type="fanout"), auto_delete=True)
    conn.Consumer(mailbox, channel=conn.channel(), callbacks=[lambda *_: None], accept=["json"]).consume()
    channel = conn.default_channel
    channel._brpop_start()  # the event loop's BRPOP, waiting for the next message
    redis_server.stop()
    yield conn
    channel.qos.restore_at_shutdown = False  # no restore at exit, into a Redis that is gone


def consumer_with(cls: type[Consumer], connection: Connection) -> Any:
    """A consumer of class `cls` with only what its connection-error handler reads."""
    consumer: Any = cls.__new__(cls)
    app = Celery("reconnect-test", set_as_current=False)
    app.conf.worker_cancel_long_running_tasks_on_connection_loss = True  # no active requests here
    app.conf.worker_enable_prefetch_count_reduction = False
    consumer.app, consumer.connection, consumer.pool = app, connection, SimpleNamespace(num_processes=1)
    return consumer


def test_closing_a_collected_connection_in_that_state_raises_attribute_error(
    lost_connection: Connection,
) -> None:
    # The trap exists, so the tests below are not vacuous.
    lost_connection.collect(socket_timeout=1)
    assert lost_connection._transport is None and not lost_connection._default_channel.closed
    with pytest.raises(AttributeError, match="hostname"):
        lost_connection.close()


@pytest.mark.skipif(not (ON_5_7 and KOMBU_5_7), reason="the bug is Celery 5.7's, with kombu 5.7")
def test_celery_5_7_own_handler_raises_on_that_state(lost_connection: Connection) -> None:
    # What made workers exit with "Unrecoverable error". Once an upgrade stops raising here, the
    # bug is fixed upstream and worker/compat.py can go (with consumer_class).
    with pytest.raises(AttributeError, match="hostname"):
        consumer_with(Consumer, lost_connection).on_connection_error_after_connected(ConnectionError("lost"))


def test_the_fleet_consumer_handler_leaves_the_worker_able_to_reconnect(lost_connection: Connection) -> None:
    consumer = consumer_with(compat.Consumer, lost_connection)
    consumer.on_connection_error_after_connected(ConnectionError("lost"))  # no AttributeError
    # Collected, so Consumer.start goes on to blueprint.restart: a new connection, a reconnect.
    assert lost_connection._default_channel is None and lost_connection._transport is None
    lost_connection.close()  # and closing it once more is harmless


def test_forgetting_the_default_channel_touches_only_that_connection(redis_server: RedisServer) -> None:
    first, second = Connection(redis_server.url), Connection(redis_server.url)
    try:
        first.default_channel, second.default_channel  # noqa: B018  # open both
        compat.forget_default_channel_after_collect(first)
        first.collect()
        assert first._default_channel is None
        assert second._default_channel is not None and "collect" not in vars(second)
    finally:
        first.close()
        second.close()
