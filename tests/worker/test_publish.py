"""worker/publish.py: the message Publisher pushes is the one Celery's send_task pushes for the
same task (against a real redis-server). Every fleet test runs such messages on real workers."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import RedisServer
from worker.celery_app import make_app
from worker.publish import Publisher
from worker.redis_conn import make_redis
from worker.settings import Settings

# What differs between any two messages: fresh ids, and the clock.
VOLATILE_HEADERS = {"id", "root_id", "expires", "origin"}
VOLATILE_PROPERTIES = {"correlation_id", "delivery_tag", "reply_to", "expiration"}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer()
    yield srv
    srv.stop()


def _pushed(server: RedisServer, queue: str) -> dict[str, Any]:
    raw = server.client().rpop(queue)
    assert raw is not None, f"nothing on {queue}"
    message: dict[str, Any] = json.loads(raw)
    return message


def _publish(how: str, server: RedisServer, publisher: Publisher, *args: Any, **options: Any) -> None:
    """`send`, or `outgoing` pushed as a Lua script pushes it (the gateway's admission)."""
    if how == "send":
        publisher.send(*args, **options)
        return
    out = publisher.outgoing(*args, **options)
    assert out.queue == args[2]
    server.client().eval("redis.call('LPUSH', KEYS[1], ARGV[1])", 1, out.queue, out.message)


@pytest.mark.parametrize("how", ["send", "outgoing"])
def test_the_publishers_message_is_the_one_send_task_pushes(server: RedisServer, how: str) -> None:
    app = make_app(Settings(redis_url=server.url))
    args = ["r1:1:0", 0, "echo", {"n": 1, "text": "é"}, 3.0]
    headers = {"sent_at": 1.5, "trace_id": "t", "owner": ["t1", "scripted"]}
    app.send_task(
        "fleet.tool_call",
        args=args,
        argsrepr="(<args>)",
        queue="tools.echo",
        ignore_result=True,
        headers=headers,
        expires=9.0,
    )
    by_celery = _pushed(server, "tools.echo")
    publisher = Publisher(app, make_redis(server.url))
    _publish(
        how,
        server,
        publisher,
        "fleet.tool_call",
        args,
        "tools.echo",
        argsrepr="(<args>)",
        headers=headers,
        expires_s=9.0,
    )
    ours = _pushed(server, "tools.echo")

    assert set(ours) == set(by_celery)
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(by_celery["body"]))
    for field in ("content-type", "content-encoding"):
        assert ours[field] == by_celery[field]
    assert {k: v for k, v in ours["headers"].items() if k not in VOLATILE_HEADERS} == {
        k: v for k, v in by_celery["headers"].items() if k not in VOLATILE_HEADERS
    }
    assert set(ours["headers"]) == set(by_celery["headers"])
    ours_props = {k: v for k, v in ours["properties"].items() if k not in VOLATILE_PROPERTIES}
    celery_props = {k: v for k, v in by_celery["properties"].items() if k not in VOLATILE_PROPERTIES}
    celery_props.pop("argsrepr", None)  # send_task also copies its options into the properties
    assert ours_props == celery_props
    assert abs(int(ours["properties"]["expiration"]) - int(by_celery["properties"]["expiration"])) <= 1
    assert ours["headers"]["root_id"] == ours["headers"]["id"] == ours["properties"]["correlation_id"]
    assert ours["headers"]["expires"] is not None


def test_a_run_message_carries_its_time_limits(server: RedisServer) -> None:
    app = make_app(Settings(redis_url=server.url))
    Publisher(app, make_redis(server.url)).send(
        "fleet.run_agent", ["r9"], "agents", time_limit=12.5, soft_time_limit=11.5, headers={"sent_at": 2.0}
    )
    message = _pushed(server, "agents")
    assert message["headers"]["timelimit"] == [12.5, 11.5]
    assert message["headers"]["task"] == "fleet.run_agent" and message["headers"]["sent_at"] == 2.0
    assert json.loads(base64.b64decode(message["body"]))[0] == ["r9"]
    assert "expiration" not in message["properties"]


@pytest.mark.parametrize("how", ["send", "outgoing"])
def test_with_sentrys_celery_integration_on_a_message_carries_the_trace_headers(
    server: RedisServer, how: str
) -> None:
    """As send_task does under Sentry's Celery integration: the worker continues the sender's
    trace from the message's `sentry-trace` header (a run's trace from the API through the workers)."""
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration

    app = make_app(Settings(redis_url=server.url))
    sentry_sdk.init(
        dsn="http://key@127.0.0.1:9/1",
        integrations=[CeleryIntegration(propagate_traces=True)],
        traces_sample_rate=1.0,
    )
    try:
        with sentry_sdk.start_transaction(name="POST /v1/runs") as transaction:
            _publish(how, server, Publisher(app, make_redis(server.url)), "fleet.run_agent", ["r1"], "agents")
            trace_id = transaction.trace_id
    finally:
        sentry_sdk.get_client().close(timeout=0)
        sentry_sdk.init()  # off again for the other tests in this process
    headers = _pushed(server, "agents")["headers"]
    assert headers["sentry-trace"].startswith(trace_id)
    assert headers["headers"]["sentry-trace"] == headers["sentry-trace"]  # celery#4875's copy
