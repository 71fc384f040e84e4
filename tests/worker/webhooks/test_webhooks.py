"""Signed webhooks (CONTRACT.md, "Webhooks") against a real redis-server, `fleet api`, an agent
worker and a tool worker, delivering to a receiver on loopback.

The module's fleet retries after 0.2 s, then every 0.5 s (plus jitter), and drops a delivery
6 s after its event; only tenant t1 has a webhook secret.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.api_client import assert_error
from tests.harness import KEY_T1, KEY_T2, Fleet, RedisServer, wait_for
from worker.keys import Keys
from worker.webhooks import signing

KEYS = Keys("fleet")
SECRET = "whsec-test-tenant-one-0123456789"
MAX_AGE_S = 6
BACKOFF_S = [0.2, 0.5]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    t: float
    status: int


class Receiver:
    """A webhook receiver on loopback. `/flaky/<n>/<tag>` answers 500 to its first n requests
    and 200 after; `/gone/<tag>` 410; `/fail/<tag>` always 500; `/ok/<tag>` 200."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.strip("/").split("/")
                with outer.lock:
                    seen = sum(1 for r in outer.received if r.path == self.path)
                    status = {"gone": 410, "fail": 500, "ok": 200}.get(parts[0], 200)
                    if parts[0] == "flaky":
                        status = 500 if seen < int(parts[1]) else 200
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    outer.received.append(Received(self.path, headers, body, time.time(), status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def hook_fleet() -> Iterator[Fleet]:
    server = RedisServer()
    config = {
        "webhooks": {"allow_hosts": ["127.0.0.1"], "retry_backoff_s": BACKOFF_S, "max_age_s": MAX_AGE_S},
        "tools": {"approval": {"required": ["test.write"]}},
    }
    fleet = Fleet(server, config, {"FLEET_WEBHOOK_SECRETS": f"t1:{SECRET}"})
    try:
        fleet.start(workers=1, concurrency=2)
        yield fleet
    finally:
        fleet.close()
        server.close()


def tag() -> str:
    return uuid.uuid4().hex[:8]


def submit_with(fleet: Fleet, url: str, events: list[str], plan: list[dict[str, Any]] | None = None) -> str:
    run = fleet.submit(
        "scripted", {"plan": plan or [{"final": "done"}]}, webhook={"url": url, "events": events}
    )
    assert run["webhook"] == {"url": url, "events": events}
    return str(run["id"])


def wait_received(
    fleet: Fleet, receiver: Receiver, path: str, count: int, timeout: float = 20
) -> list[Received]:
    wait_for(lambda: len(receiver.at(path)) >= count, timeout, f"{path}: {receiver.at(path)}\n{fleet.logs()}")
    return receiver.at(path)


def metrics(fleet: Fleet) -> dict[str, float]:
    """`/metrics`'s webhook samples, by name with labels."""
    text = httpx.get(f"{fleet.url}/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        if line.startswith("fleet_webhook_"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def pending(fleet: Fleet) -> int:
    return int(fleet.r.zcard(KEYS.webhooks_due()))


def test_end_is_retried_until_accepted_with_one_event_id_and_a_valid_signature(
    hook_fleet: Fleet, receiver: Receiver
) -> None:
    path = f"/flaky/2/{tag()}"
    run_id = submit_with(hook_fleet, receiver.url(path), ["end"])
    run = hook_fleet.wait(run_id)
    got = wait_received(hook_fleet, receiver, path, 3)
    assert [r.status for r in got] == [500, 500, 200]
    assert len({r.headers["x-fleet-event-id"] for r in got}) == 1
    assert len({r.body for r in got}) == 1  # the same bytes each time
    for r in got:
        assert signing.verify(SECRET, r.headers["x-fleet-signature"], r.body)
        assert not signing.verify("another-secret-0123456789", r.headers["x-fleet-signature"], r.body)
    gaps = [b.t - a.t for a, b in itertools.pairwise(got)]
    assert gaps[0] >= BACKOFF_S[0] and gaps[1] >= BACKOFF_S[1], gaps
    body = json.loads(got[0].body)
    assert body["id"] == got[0].headers["x-fleet-event-id"] and body["event"] == "end"
    assert body["run_id"] == run_id and body["created_at"].endswith("Z")
    shown = {k: v for k, v in run.items() if k != "steps"}
    assert body["data"] == shown
    time.sleep(1.0)
    assert len(receiver.at(path)) == 3  # delivered: nothing more
    assert not hook_fleet.r.keys(KEYS.webhook(body["id"]))


def test_a_410_stops_the_deliveries_at_once(hook_fleet: Fleet, receiver: Receiver) -> None:
    path = f"/gone/{tag()}"
    run_id = submit_with(hook_fleet, receiver.url(path), ["end"])
    hook_fleet.wait(run_id)
    wait_received(hook_fleet, receiver, path, 1)
    time.sleep(1.5)  # three backoffs' worth
    assert len(receiver.at(path)) == 1
    assert "webhook" not in hook_fleet.get(run_id)  # the run's later events send nothing either
    assert metrics(hook_fleet)['fleet_webhook_deliveries_total{outcome="gone"}'] >= 1


def test_a_delivery_never_accepted_expires_after_max_age(hook_fleet: Fleet, receiver: Receiver) -> None:
    path = f"/fail/{tag()}"
    run_id = submit_with(hook_fleet, receiver.url(path), ["end"])
    hook_fleet.wait(run_id)
    wait_received(hook_fleet, receiver, path, 2)
    seen = metrics(hook_fleet)
    assert seen["fleet_webhook_undelivered"] >= 1
    assert seen["fleet_webhook_oldest_undelivered_seconds"] > 0
    assert seen['fleet_webhook_deliveries_total{outcome="failed"}'] >= 1
    wait_for(lambda: pending(hook_fleet) == 0, MAX_AGE_S + 10, f"still pending\n{hook_fleet.logs()}")
    got = receiver.at(path)
    assert got[-1].t - got[0].t < MAX_AGE_S and len(got) >= 4
    time.sleep(1.0)
    assert len(receiver.at(path)) == len(got)  # expired: no more attempts
    seen = metrics(hook_fleet)
    assert seen['fleet_webhook_deliveries_total{outcome="expired"}'] >= 1
    assert seen["fleet_webhook_oldest_undelivered_seconds"] == 0 and seen["fleet_webhook_undelivered"] == 0


def test_metrics_count_delivered_and_failed_attempts(hook_fleet: Fleet, receiver: Receiver) -> None:
    before = metrics(hook_fleet)
    path = f"/flaky/1/{tag()}"
    hook_fleet.wait(submit_with(hook_fleet, receiver.url(path), ["end"]))
    wait_received(hook_fleet, receiver, path, 2)
    wait_for(lambda: pending(hook_fleet) == 0, 10, "the delivery was not settled")
    after = metrics(hook_fleet)
    for outcome in ("delivered", "failed"):
        name = f'fleet_webhook_deliveries_total{{outcome="{outcome}"}}'
        assert after[name] == before.get(name, 0) + 1, (outcome, before, after)


def test_a_call_waiting_for_approval_sends_approval_requested_then_end(
    hook_fleet: Fleet, receiver: Receiver
) -> None:
    path = f"/ok/{tag()}"
    plan = [
        {"tool": "test.write", "args": {"key": "k", "value": "mail a.user@example.com"}},
        {"final": "done"},
    ]
    run_id = submit_with(hook_fleet, receiver.url(path), ["approval_requested", "end"], plan=plan)
    (got,) = wait_received(hook_fleet, receiver, path, 1)
    body = json.loads(got.body)
    waiting = hook_fleet.get(run_id)["waiting"]
    assert got.headers["x-fleet-event-id"] == body["id"]
    assert (body["event"], body["run_id"]) == ("approval_requested", run_id)
    assert body["data"]["call_id"] == waiting["call_id"] and body["data"]["tool"] == "test.write"
    assert "a.user@example.com" not in got.body.decode(), "the approval's args are not redacted"
    assert signing.verify(SECRET, got.headers["x-fleet-signature"], got.body)
    with hook_fleet.client() as c:
        resp = c.post(f"/v1/runs/{run_id}/approvals/{waiting['call_id']}", json={"decision": "approve"})
    assert resp.status_code == 200, resp.text
    _, end = wait_received(hook_fleet, receiver, path, 2)
    ended = json.loads(end.body)
    assert ended["event"] == "end" and ended["data"]["status"] == "succeeded"
    assert ended["id"] != body["id"]


@pytest.mark.parametrize(
    ("webhook", "key", "message"),
    [
        (
            {"url": "http://evil.example.com/x", "events": ["end"]},
            KEY_T1,
            "host 'evil.example.com' is not allowed",
        ),
        ({"url": "ftp://127.0.0.1/x", "events": ["end"]}, KEY_T1, "is not http or https"),
        ({"url": "::not a url::", "events": ["end"]}, KEY_T1, "webhook.url"),
        ({"url": "http://127.0.0.1/x", "events": ["step"]}, KEY_T1, "webhook.events"),
        ({"url": "http://127.0.0.1/x", "events": []}, KEY_T1, "webhook.events"),
        ({"url": "http://127.0.0.1/x", "events": ["end"], "secret": "x"}, KEY_T1, "webhook.secret"),
        ({"url": "http://127.0.0.1/x"}, KEY_T1, "webhook.events"),
        ("http://127.0.0.1/x", KEY_T1, "webhook"),
        ({"url": "http://127.0.0.1/x", "events": ["end"]}, KEY_T2, "no webhook secret for this tenant"),
    ],
)
def test_a_bad_webhook_is_a_422_naming_it_and_nothing_is_enqueued(
    hook_fleet: Fleet, webhook: Any, key: str, message: str
) -> None:
    runs_before = len(hook_fleet.r.keys(KEYS.run("*")))
    with hook_fleet.client(key) as c:
        resp = c.post("/v1/runs", json={"agent": "scripted", "input": {"plan": []}, "webhook": webhook})
    assert message in assert_error(resp, 422)
    assert len(hook_fleet.r.keys(KEYS.run("*"))) == runs_before
    assert hook_fleet.r.llen("agents") == 0
