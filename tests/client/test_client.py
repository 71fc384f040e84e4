"""The Python client (`client/`, import `agentfleet_client`) against a real fleet.

`fleet` is a real `fleet api`, agent worker and tool worker on a Redis of their own. Two tests put
something of the test's own between the client and the API: a loopback TCP proxy that loses the
API's answer to the first POST (the API itself is real), and a loopback stub server for the
429 + Retry-After cases (those test the client's own retry logic, not the API). The client's
parser and the calls whose endpoints are not in the API yet (events, approvals) have unit tests
in tests/client/test_client_units.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from agentfleet_client import (
    AsyncFleet,
    AuthenticationError,
    ConflictError,
    Fleet,
    FleetConnectionError,
    FleetError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    Retries,
    ServiceUnavailableError,
)

from tests.harness import KEY_T1, KEY_T2, free_port
from tests.harness import Fleet as FleetProcesses
from worker.keys import Keys

KEYS = Keys("fleet")
FAST = Retries(max_attempts=3, base_delay_s=0.05, max_delay_s=0.2, max_total_s=20)
SLOW_PLAN = {"plan": [{"sleep": 0.5}] * 20 + [{"final": "late"}]}  # about 10 s of think time


@pytest.fixture
def client(fleet: FleetProcesses) -> Iterator[Fleet]:
    with Fleet(fleet.url, KEY_T1, timeout=10, retries=FAST) as c:
        yield c


def runs_with_marker(fleet: FleetProcesses, marker: str) -> list[str]:
    """The ids of every run in the fleet's Redis whose metadata holds `marker`."""
    found = []
    for key in fleet.r.scan_iter(match=KEYS.run("*")):
        parts = key.split(":")
        if len(parts) == 3 and fleet.r.type(key) == "hash":
            metadata = json.loads(fleet.r.hget(key, "metadata") or "{}")
            if metadata.get("marker") == marker:
                found.append(parts[2])
    return found


# -- runs -------------------------------------------------------------------------------------------


def test_submit_then_wait_returns_the_succeeded_run_with_typed_fields(client: Fleet) -> None:
    run = client.submit(
        "scripted",
        {"plan": [{"tool": "echo", "args": {"n": 1}}, {"final": "hi"}]},
        budgets={"max_steps": 5},
        metadata={"ticket": "T-1"},
    )
    assert re.fullmatch(r"[0-9a-f]{32}", run.id), run.id
    assert (run.agent, run.tenant, run.status, run.stop_reason) == ("scripted", "t1", "queued", None)
    assert run.budgets["max_steps"] == 5 and run.metadata == {"ticket": "T-1"}
    assert isinstance(run.created_at, datetime) and run.finished_at is None and not run.done

    done = client.wait(run.id, timeout=30)
    assert done.status == "succeeded", done
    assert (done.stop_reason, done.output, done.error) == ("finish", "hi", None)
    assert done.done and done.succeeded
    assert done.usage.steps == 2 and done.usage.tool_calls == 1
    assert done.finished_at is not None and done.started_at is not None
    assert done.finished_at >= done.started_at >= done.created_at  # type: ignore[operator]
    assert done.raw["id"] == run.id and done.steps is None


def test_get_with_steps_returns_the_step_log(client: Fleet) -> None:
    run = client.submit("scripted", {"plan": [{"tool": "echo", "args": {"n": 7}}, {"final": "ok"}]})
    client.wait(run.id, timeout=30)
    plain, with_steps = client.get(run.id), client.get(run.id, steps=True)
    assert plain.steps is None
    assert with_steps.steps is not None, with_steps
    assert [(s["tool"], s["ok"]) for s in with_steps.steps] == [("echo", True)], with_steps.steps


def test_wait_past_its_timeout_returns_the_run_still_going(client: Fleet) -> None:
    run = client.submit("scripted", SLOW_PLAN)
    try:
        started = time.monotonic()
        seen = client.wait(run.id, timeout=1.0)
        assert time.monotonic() - started >= 1.0
        assert seen.id == run.id and seen.status in ("queued", "running") and not seen.done
    finally:
        client.cancel(run.id)


def test_cancel_stops_a_running_run(fleet: FleetProcesses, client: Fleet) -> None:
    run = client.submit("scripted", SLOW_PLAN)
    fleet.wait_status(run.id, "running")
    answer = client.cancel(run.id)
    assert answer.id == run.id
    done = client.wait(run.id, timeout=15)
    assert (done.status, done.stop_reason) == ("cancelled", "cancelled"), done


def test_events_stream_a_run_to_its_end_and_a_resume_after_the_end_yields_nothing(client: Fleet) -> None:
    """`events()` against the real endpoint: statuses, one `step` per step log entry, `end` with
    the run as GET shows it; resumed with the `end`'s id (the API answers 204), it ends at once."""
    plan = {"plan": [{"tool": "echo", "args": {"n": 1}}, {"sleep": 0.2}, {"final": "streamed"}]}
    run = client.submit("scripted", plan)
    events = list(client.events(run.id))
    kinds = [event.type for event in events]
    assert kinds[0] == "status" and kinds[-1] == "end", kinds
    assert kinds.count("step") == 2, kinds
    assert len({event.id for event in events}) == len(events)  # every event has its own id
    final = client.get(run.id)
    assert events[-1].data == final.raw, (events[-1].data, final.raw)
    assert list(client.events(run.id, last_event_id=events[-1].id)) == []

    async def resumed() -> list[Any]:
        async with AsyncFleet(client.base_url, KEY_T1, retries=FAST) as c:
            return [event async for event in c.events(run.id, last_event_id=events[-2].id)]

    assert [event.type for event in asyncio.run(resumed())] == ["end"]


def test_async_client_submits_waits_gets_and_cancels(fleet: FleetProcesses) -> None:
    async def main() -> None:
        async with AsyncFleet(fleet.url, KEY_T1, retries=FAST) as c:
            run = await c.submit("scripted", {"plan": [{"tool": "echo", "args": {}}, {"final": "async hi"}]})
            done = await c.wait(run.id, timeout=30)
            assert (done.status, done.output) == ("succeeded", "async hi"), done
            steps = (await c.get(run.id, steps=True)).steps
            assert steps is not None and [s["tool"] for s in steps] == ["echo"], steps
            slow = await c.submit("scripted", SLOW_PLAN)
            await c.cancel(slow.id)
            assert (await c.wait(slow.id, timeout=15)).status == "cancelled"
            with pytest.raises(NotFoundError):
                await c.get("0" * 32)

    asyncio.run(main())


# -- errors -----------------------------------------------------------------------------------------


def test_a_bad_key_raises_authentication_error(fleet: FleetProcesses) -> None:
    with (
        Fleet(fleet.url, "not-a-key-of-this-fleet", retries=FAST) as c,
        pytest.raises(AuthenticationError) as err,
    ):
        c.submit("scripted", {"plan": [{"final": "x"}]})
    assert (err.value.status, err.value.type) == (401, "unauthorized")
    assert "not-a-key-of-this-fleet" not in str(err.value)


def test_an_unknown_or_other_tenants_run_raises_not_found(fleet: FleetProcesses, client: Fleet) -> None:
    with pytest.raises(NotFoundError) as err:
        client.get("0" * 32)
    assert (err.value.status, err.value.type) == (404, "not_found")
    other = fleet.submit(input={"plan": [{"final": "t2"}]}, key=KEY_T2)
    with pytest.raises(NotFoundError):
        client.cancel(other["id"])
    with pytest.raises(NotFoundError):
        client.get("../../healthz")  # quoted into one path segment: never another route


def test_a_bad_body_raises_invalid_request_error_naming_the_field(client: Fleet) -> None:
    with pytest.raises(InvalidRequestError) as err:
        client.submit("no-such-agent", {})
    assert (err.value.status, err.value.type) == (422, "invalid_request")
    assert "agent" in err.value.message
    with pytest.raises(InvalidRequestError) as over:
        client.submit("scripted", {"plan": [{"final": "x"}]}, budgets={"max_steps": 10_000})
    assert "AGENT_MAX_STEPS" in over.value.message


def test_an_idempotency_key_reused_with_another_body_raises_conflict(client: Fleet) -> None:
    key = f"client-test-{time.time_ns()}"
    first = client.submit("scripted", {"plan": [{"final": "a"}]}, idempotency_key=key)
    again = client.submit("scripted", {"plan": [{"final": "a"}]}, idempotency_key=key)
    assert again.id == first.id
    with pytest.raises(ConflictError) as err:
        client.submit("scripted", {"plan": [{"final": "b"}]}, idempotency_key=key)
    assert err.value.status == 409


class CountingTransport(httpx.HTTPTransport):
    """httpx's own transport, counting the requests it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return super().handle_request(request)


def test_kill_all_503_is_retried_until_the_attempts_run_out_then_raised(fleet: FleetProcesses) -> None:
    transport = CountingTransport()
    fleet.r.set(KEYS.kill_all(), "incident 42")
    try:
        with (
            Fleet(fleet.url, KEY_T1, retries=FAST, transport=transport) as c,
            pytest.raises(ServiceUnavailableError) as err,
        ):
            c.submit("scripted", {"plan": [{"final": "no"}]})
    finally:
        fleet.r.delete(KEYS.kill_all())
    assert (err.value.status, err.value.type) == (503, "killed")
    assert "incident 42" in err.value.message
    assert err.value.retry_after_s == 30
    assert len(transport.sent) == FAST.max_attempts == 3
    assert len({r.headers["Idempotency-Key"] for r in transport.sent}) == 1  # one submission, retried


def test_an_unreachable_api_raises_connection_error_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Fleet(url, KEY_T1, retries=FAST) as c, pytest.raises(FleetConnectionError) as err:
        c.get("0" * 32)
    assert err.value.status is None and url in err.value.message
    assert isinstance(err.value.__cause__, httpx.ConnectError)


# -- a lost answer ----------------------------------------------------------------------------------


class LosingProxy:
    """A loopback TCP proxy to the API that loses the answer to the first request it carries.

    The first connection's request goes to the API; the proxy reads the API's whole answer, keeps
    it (`lost`) and closes the client's connection without sending a byte of it. Every later
    connection is relayed both ways as it is. `sent` is every byte the client sent, in order.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lost = b""
        self.sent = bytearray()
        self.lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.connections += 1
            back = self._lose_answer if self.connections == 1 else self._relay
            threading.Thread(target=self._forward, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=back, args=(upstream, conn), daemon=True).start()

    def _forward(self, conn: socket.socket, upstream: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                with self.lock:
                    self.sent += data
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _relay(self, upstream: socket.socket, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                conn.sendall(data)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)

    def _lose_answer(self, upstream: socket.socket, conn: socket.socket) -> None:
        answer = b""
        with contextlib.suppress(OSError):
            while not self._complete(answer):
                data = upstream.recv(65536)
                if not data:
                    break
                answer += data
        self.lost = answer
        for sock in (conn, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    @staticmethod
    def _complete(answer: bytes) -> bool:
        head, sep, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        return bool(sep and length and len(body) >= int(length.group(1)))

    def lost_json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.lost.partition(b"\r\n\r\n")[2])
        return body

    def close(self) -> None:
        self.listener.close()


def test_a_retried_post_whose_first_answer_was_lost_makes_one_run(fleet: FleetProcesses) -> None:
    proxy = LosingProxy(fleet.api_port)
    marker = f"lost-{time.time_ns()}"
    try:
        with Fleet(proxy.url, KEY_T1, retries=FAST) as c:
            run = c.submit("scripted", {"plan": [{"final": "once"}]}, metadata={"marker": marker})
            done = c.wait(run.id, timeout=30)
    finally:
        proxy.close()
    assert proxy.lost.startswith(b"HTTP/1.1 202"), proxy.lost[:200]  # the API made the run...
    assert run.id == proxy.lost_json()["id"]  # ...and the retry got that same run back
    posts = re.findall(rb"POST /v1/runs HTTP/1.1\r\n", bytes(proxy.sent))  # a body has no line end
    keys = re.findall(rb"(?im)^idempotency-key: *(\S+)\r$", bytes(proxy.sent))
    assert len(posts) == 2 and len(keys) == 2 and keys[0] == keys[1], bytes(proxy.sent)[:2000]
    assert re.fullmatch(rb"[0-9a-f]{32}", keys[0])  # made by the client: uuid4 hex
    assert runs_with_marker(fleet, marker) == [run.id]
    assert (done.status, done.output) == ("succeeded", "once")


# -- 429 and Retry-After (a stub of the test's own: the client's logic, not the API) ----------------

RUN_BODY = {
    "id": "a" * 32, "agent": "scripted", "tenant": "t1", "status": "queued", "stop_reason": None,
    "output": None, "error": None, "usage": {"steps": 0, "tool_calls": 0, "seconds": 0.0},
    "budgets": {"max_steps": 25}, "metadata": {}, "created_at": "2026-11-26T09:14:39.123456Z",
    "started_at": None, "finished_at": None,
}  # fmt: skip


class StubAPI:
    """A loopback HTTP server that answers each request with the next of `answers` (status,
    headers, body), the last one repeating, and records method, path, headers and arrival time."""

    def __init__(self, answers: list[tuple[int, dict[str, str], Any]]) -> None:
        self.answers = answers
        self.seen: list[tuple[str, str, dict[str, str], float]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                arrived = time.monotonic()
                n = len(outer.seen)
                outer.seen.append((self.command, self.path, dict(self.headers), arrived))
                status, headers, body = outer.answers[min(n, len(outer.answers) - 1)]
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def stub_api(*answers: tuple[int, dict[str, str], Any]) -> Iterator[StubAPI]:
    stub = StubAPI(list(answers))
    try:
        yield stub
    finally:
        stub.close()


QUEUE_FULL = (
    429,
    {"Retry-After": "1"},
    {"error": {"type": "queue_full", "message": "10000 runs are queued (limit 10000); retry later"}},
)


def test_429_with_retry_after_is_retried_no_sooner_than_it_says_with_the_same_key() -> None:
    with stub_api(QUEUE_FULL, (202, {}, RUN_BODY)) as stub, Fleet(stub.url, KEY_T1) as c:
        run = c.submit("scripted", {"plan": [{"final": "x"}]})
    assert run.id == RUN_BODY["id"] and run.status == "queued"
    (m1, p1, h1, t1), (m2, p2, h2, t2) = stub.seen
    assert (m1, p1, m2, p2) == ("POST", "/v1/runs", "POST", "/v1/runs")
    assert t2 - t1 >= 1.0  # Retry-After: 1 is honoured
    assert h1["Idempotency-Key"] == h2["Idempotency-Key"]


def test_429_past_the_attempts_raises_rate_limit_error_with_retry_after() -> None:
    retries = Retries(max_attempts=2, base_delay_s=0.01, max_delay_s=0.05, max_total_s=5)
    with (
        stub_api(QUEUE_FULL) as stub,
        Fleet(stub.url, KEY_T1, retries=retries) as c,
        pytest.raises(RateLimitError) as err,
    ):
        c.get("a" * 32)
    assert (err.value.status, err.value.type, err.value.retry_after_s) == (429, "queue_full", 1.0)
    assert len(stub.seen) == 2


@pytest.mark.parametrize(
    ("status", "error"), [(400, "bad_request"), (409, "conflict"), (413, "payload_too_large"), (422, "x")]
)
def test_4xx_other_than_429_is_not_retried(status: int, error: str) -> None:
    answer = (status, {"Retry-After": "0"}, {"error": {"type": error, "message": "no"}})
    with stub_api(answer) as stub, Fleet(stub.url, KEY_T1) as c, pytest.raises(FleetError) as err:
        c.submit("scripted", {})
    assert err.value.status == status and len(stub.seen) == 1


def test_a_503_then_a_run_is_retried_for_a_get() -> None:
    unavailable = (503, {}, {"error": {"type": "unavailable", "message": "the fleet's store is unreachable"}})
    with (
        stub_api(unavailable, (200, {}, {**RUN_BODY, "status": "running"})) as stub,
        Fleet(stub.url, KEY_T1, retries=FAST) as c,
    ):
        run = c.get("a" * 32)
    assert run.status == "running" and [s[0] for s in stub.seen] == ["GET", "GET"]
    assert "Idempotency-Key" not in stub.seen[0][2]
