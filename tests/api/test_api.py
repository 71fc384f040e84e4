"""The HTTP API's contract against real fleets (CONTRACT.md, "HTTP API").

Two fleets serve this module:

- `api_only`: an API and a Redis with no agent worker, so every submitted run stays queued and the
  `agents` queue only grows; `FLEET_MAX_QUEUED=3` and `FLEET_MAX_BODY_BYTES=2048` keep the queue and
  body limits cheap to reach. Each test that submits starts from an empty queue.
- `busy_fleet`: an API with one agent worker of a single process, so a test can keep that worker
  busy and have a second run wait in the queue.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.api_client import assert_error, post_run
from tests.harness import KEY_T1, KEY_T2, TERMINAL, Fleet, RedisServer
from worker.keys import AGENT_QUEUE

MAX_BODY_BYTES = 2048
MAX_QUEUED = 3
CAPS = {"max_steps": 25, "max_tool_calls": 12, "max_seconds": 60, "max_tokens": 200_000, "max_cost_usd": 1.0}
FINAL = {"plan": [{"final": "done"}]}
SLEEP_LOOP = {"plan": [{"sleep": 0.3}], "loop": True}


@pytest.fixture(scope="module")
def api_only_fleet() -> Iterator[Fleet]:
    server = RedisServer()
    fleet = Fleet(
        server, {}, {"FLEET_MAX_QUEUED": str(MAX_QUEUED), "FLEET_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    )
    try:
        fleet.start_api()
        yield fleet
    finally:
        fleet.close()
        server.close()


@pytest.fixture
def api_only(api_only_fleet: Fleet) -> Fleet:
    """The API-only fleet with an empty agents queue and no kill switch on."""
    api_only_fleet.r.delete(AGENT_QUEUE, "fleet:kill:all")
    return api_only_fleet


@pytest.fixture(scope="module")
def busy_fleet() -> Iterator[Fleet]:
    server = RedisServer()
    fleet = Fleet(server)
    try:
        fleet.start_api()
        fleet.start_worker(concurrency=1)
        yield fleet
    finally:
        fleet.close()
        server.close()


# -- helpers -----------------------------------------------------------------------------------------


def assert_client_error(resp: httpx.Response) -> None:
    """Any 4xx with the error shape: never a 500 for what a client sent."""
    assert 400 <= resp.status_code < 500, f"{resp.status_code}: {resp.text}"
    assert_error(resp, resp.status_code)


def parse_ts(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def redis_now(fleet: Fleet) -> float:
    """Now, by the clock of the fleet's host (the Redis server's TIME), not the test process."""
    seconds, micros = fleet.r.time()
    return float(seconds) + micros / 1e6


def queued_messages(fleet: Fleet) -> int:
    return int(fleet.r.llen(AGENT_QUEUE))


# -- authentication and ownership ---------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-key-of-anyone"}, {"Authorization": f"Basic {KEY_T1}"}],
    ids=["missing", "wrong-key", "wrong-scheme"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/runs"), ("GET", "/v1/runs/abc"), ("POST", "/v1/runs/abc/cancel")],
    ids=["submit", "get", "cancel"],
)
def test_missing_or_wrong_key_is_401_with_error_shape(
    api_only: Fleet, headers: dict[str, str], method: str, path: str
) -> None:
    body = {"agent": "scripted", "input": FINAL} if path == "/v1/runs" else None
    resp = httpx.request(method, f"{api_only.url}{path}", headers=headers, json=body, timeout=10)
    assert_error(resp, 401)
    assert queued_messages(api_only) == 0


def test_unknown_run_id_is_404_for_get_and_cancel(api_only: Fleet) -> None:
    with api_only.client() as c:
        assert_error(c.get("/v1/runs/0123456789abcdef0123456789abcdef"), 404)
        assert_error(c.post("/v1/runs/0123456789abcdef0123456789abcdef/cancel"), 404)
        assert_error(c.get("/v1/runs/" + "x" * 5000), 404)


def test_another_tenants_run_is_404_for_get_and_cancel_and_stays_untouched(api_only: Fleet) -> None:
    run = api_only.submit(input=FINAL)
    with api_only.client(KEY_T2) as c:
        assert_error(c.get(f"/v1/runs/{run['id']}"), 404)
        assert_error(c.post(f"/v1/runs/{run['id']}/cancel"), 404)
    mine = api_only.get(run["id"])
    assert mine["status"] == "queued" and mine["tenant"] == "t1"
    assert api_only.r.exists(f"fleet:run:{run['id']}:cancel") == 0


def test_submit_answers_202_with_location_and_the_run(api_only: Fleet) -> None:
    resp = post_run(api_only, {"agent": "scripted", "input": FINAL, "budgets": {"max_steps": 3}})
    assert resp.status_code == 202, resp.text
    run = resp.json()
    assert resp.headers["location"] == f"/v1/runs/{run['id']}"
    assert run["status"] == "queued" and run["tenant"] == "t1" and run["agent"] == "scripted"
    assert run["stop_reason"] is None and run["started_at"] is None and run["finished_at"] is None
    assert run["budgets"] == {**CAPS, "max_steps": 3}
    assert run["created_at"].endswith("Z")
    assert queued_messages(api_only) == 1


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_of_a_queued_run_ends_it_at_once_and_the_worker_never_steps_it(busy_fleet: Fleet) -> None:
    blocker = busy_fleet.submit("busy", input={"step_s": 0.3})  # agent code: it holds its process
    busy_fleet.wait_status(blocker["id"], "running")  # the only worker process is now busy
    victim = busy_fleet.submit(input={"plan": [{"final": "should never run"}]})

    with busy_fleet.client() as c:
        resp = c.post(f"/v1/runs/{victim['id']}/cancel")
    assert resp.status_code == 202, resp.text
    answered = resp.json()
    assert answered["status"] == "cancelled" and answered["stop_reason"] == "cancelled"
    assert answered["started_at"] is None and answered["finished_at"] is not None

    # Free the worker; a run queued after the victim ends only once the worker has dealt with it.
    with busy_fleet.client() as c:
        assert c.post(f"/v1/runs/{blocker['id']}/cancel").status_code == 202
    after = busy_fleet.submit(input=FINAL)
    assert busy_fleet.wait(after["id"])["status"] == "succeeded"

    victim_now = busy_fleet.get(victim["id"], steps="true")
    assert victim_now["status"] == "cancelled" and victim_now["stop_reason"] == "cancelled"
    assert victim_now["usage"]["steps"] == 0 and victim_now["steps"] == []
    assert victim_now["started_at"] is None and victim_now["output"] is None
    assert victim_now["finished_at"] == answered["finished_at"]


def test_cancel_of_a_running_run_stops_it_within_one_second(busy_fleet: Fleet) -> None:
    run = busy_fleet.submit(input=SLEEP_LOOP)
    busy_fleet.wait_status(run["id"], "running")
    time.sleep(0.5)  # into the loop's think time
    asked_at = redis_now(busy_fleet)
    with busy_fleet.client() as c:
        resp = c.post(f"/v1/runs/{run['id']}/cancel")
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] in ("running", "cancelled")

    done = busy_fleet.wait(run["id"], timeout=15)
    assert done["status"] == "cancelled" and done["stop_reason"] == "cancelled"
    assert done["started_at"] is not None
    took_s = parse_ts(done["finished_at"]) - asked_at
    assert took_s <= 1.0, f"the run ended {took_s:.3f} s after the cancel request"


# -- idempotency ---------------------------------------------------------------------------------


def test_idempotency_key_repeat_returns_the_same_run_once_and_other_body_is_409(api_only: Fleet) -> None:
    body = {"agent": "scripted", "input": FINAL, "metadata": {"order": 7}}
    first = post_run(api_only, body, headers={"Idempotency-Key": "order-7"})
    assert first.status_code == 202, first.text
    run_id = first.json()["id"]

    repeat = post_run(api_only, body, headers={"Idempotency-Key": "order-7"})
    assert repeat.status_code == 200, repeat.text
    assert repeat.json()["id"] == run_id
    assert repeat.headers["location"] == f"/v1/runs/{run_id}"
    assert queued_messages(api_only) == 1  # the repeat queued nothing

    other = post_run(api_only, {**body, "metadata": {"order": 8}}, headers={"Idempotency-Key": "order-7"})
    assert_error(other, 409)
    assert queued_messages(api_only) == 1


def test_idempotency_keys_are_per_tenant(api_only: Fleet) -> None:
    body = {"agent": "scripted", "input": FINAL}
    one = post_run(api_only, body, KEY_T1, headers={"Idempotency-Key": "shared-key"})
    two = post_run(api_only, body, KEY_T2, headers={"Idempotency-Key": "shared-key"})
    assert one.status_code == 202 and two.status_code == 202, (one.text, two.text)
    assert one.json()["id"] != two.json()["id"]
    assert one.json()["tenant"] == "t1" and two.json()["tenant"] == "t2"
    assert queued_messages(api_only) == 2


def test_malformed_idempotency_key_is_422_naming_the_header(api_only: Fleet) -> None:
    resp = post_run(api_only, {"agent": "scripted", "input": FINAL}, headers={"Idempotency-Key": "k" * 300})
    assert "Idempotency-Key" in assert_error(resp, 422)
    assert queued_messages(api_only) == 0


# -- body size -----------------------------------------------------------------------------------


def _big_body() -> bytes:
    body = json.dumps({"agent": "scripted", "input": {"plan": [{"final": "x" * 3000}]}}).encode()
    assert len(body) > MAX_BODY_BYTES
    return body


def test_body_over_the_limit_with_content_length_is_413(api_only: Fleet) -> None:
    resp = post_run(api_only, None, content=_big_body(), headers={"Content-Type": "application/json"})
    assert resp.request.headers["content-length"] == str(len(_big_body()))
    assert_error(resp, 413)
    assert queued_messages(api_only) == 0


def test_chunked_body_over_the_limit_is_413(api_only: Fleet) -> None:
    data = _big_body()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 500):
            yield data[i : i + 500]

    resp = post_run(api_only, None, content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413)
    assert queued_messages(api_only) == 0


def test_chunked_body_under_the_limit_is_accepted(api_only: Fleet) -> None:
    data = json.dumps({"agent": "scripted", "input": {"plan": [{"final": "y" * 1000}]}}).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 300):
            yield data[i : i + 300]

    resp = post_run(api_only, None, content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "queued"


# -- invalid input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"agent": "no-such-agent", "input": {}}, "agent"),
        ({"agent": 5, "input": FINAL}, "agent"),
        ({"input": FINAL}, "agent"),
        ({"agent": "scripted", "input": FINAL, "budgets": {"max_steps": "x"}}, "budgets.max_steps"),
        ({"agent": "scripted", "input": FINAL, "budgets": {"max_steps": 0}}, "budgets.max_steps"),
        ({"agent": "scripted", "input": FINAL, "budgets": "lots"}, "budgets"),
        ({"agent": "scripted", "input": FINAL, "budgets": {"max_tokens_x": 1}}, "max_tokens_x"),
        ({"agent": "scripted", "input": {"plan": [{"jump": 3}]}}, "input.plan"),
        ({"agent": "scripted", "input": {"plan": [{"sleep": "long"}]}}, "input.plan"),
        ({"agent": "scripted", "input": {"plan": "final"}}, "input.plan"),
        ({"agent": "scripted", "input": FINAL, "priority": 1}, "priority"),
        ({"agent": "scripted", "input": FINAL, "metadata": [1]}, "metadata"),
    ],
    ids=[
        "unknown-agent",
        "agent-not-a-string",
        "agent-missing",
        "budget-wrong-type",
        "budget-zero",
        "budgets-not-an-object",
        "unknown-budget",
        "plan-step-unknown",
        "plan-step-wrong-type",
        "plan-not-a-list",
        "unknown-top-level-field",
        "metadata-not-an-object",
    ],
)
def test_invalid_request_is_422_naming_the_field(api_only: Fleet, body: dict[str, Any], field: str) -> None:
    message = assert_error(post_run(api_only, body), 422)
    assert field in message, message
    assert queued_messages(api_only) == 0


def test_malformed_json_is_422_naming_the_body(api_only: Fleet) -> None:
    resp = post_run(
        api_only,
        None,
        content=b'{"agent": "scripted", "input":',
        headers={"Content-Type": "application/json"},
    )
    message = assert_error(resp, 422)
    assert "body" in message and "JSON" in message, message


@pytest.mark.parametrize(("budget", "cap_name"), [
    ("max_steps", "AGENT_MAX_STEPS"),
    ("max_tool_calls", "AGENT_MAX_TOOL_CALLS"),
    ("max_seconds", "AGENT_MAX_SECONDS"),
])  # fmt: skip
def test_budget_over_the_fleet_cap_is_422_naming_the_cap(api_only: Fleet, budget: str, cap_name: str) -> None:
    body = {"agent": "scripted", "input": FINAL, "budgets": {budget: CAPS[budget] + 1}}
    message = assert_error(post_run(api_only, body), 422)
    assert cap_name in message and f"budgets.{budget}" in message, message
    at_cap = post_run(api_only, {**body, "budgets": {budget: CAPS[budget]}})
    assert at_cap.status_code == 202, at_cap.text


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


EMPTY_PLAN = b'{"agent": "scripted", "input": {"plan": []}'
HUGE_INT = b"1" + b"0" * 400

HOSTILE: list[tuple[str, bytes]] = [
    ("json-array", b"[" + EMPTY_PLAN + b"}]"),
    ("json-null", b"null"),
    ("json-string", b'"scripted"'),
    ("empty-body", b""),
    ("huge-int-max-steps", EMPTY_PLAN + b', "budgets": {"max_steps": ' + HUGE_INT + b"}}"),
    ("huge-int-max-seconds", EMPTY_PLAN + b', "budgets": {"max_seconds": ' + HUGE_INT + b"}}"),
    ("float-overflow-budget", EMPTY_PLAN + b', "budgets": {"max_seconds": 1e999}}'),
    ("nan-budget", EMPTY_PLAN + b', "budgets": {"max_seconds": NaN}}'),
    ("negative-budget", EMPTY_PLAN + b', "budgets": {"max_tool_calls": -1}}'),
    ("huge-int-sleep", b'{"agent": "scripted", "input": {"plan": [{"sleep": ' + HUGE_INT + b"}]}}"),
    ("deep-input", b'{"agent": "scripted", "input": ' + _nested(990).encode() + b"}"),
    ("deep-input-parsable", b'{"agent": "scripted", "input": ' + _nested(400).encode() + b"}"),
    ("deep-tool-args", b'{"agent": "scripted", "input": {"plan": [{"tool": "echo", "args": {"a": '
     + _nested(960).encode() + b"}}]}}"),
    ("invalid-utf8", b'{"agent": "scr\xff\xfeipted", "input": {"plan": []}}'),
    ("invalid-utf8-in-input", b'{"agent": "scripted", "input": {"plan": [{"final": "\xc3\x28"}]}}'),
    ("nul-in-agent", b'{"agent": "scripted\\u0000", "input": {"plan": []}}'),
    ("duplicate-keys", b'{"agent": "scripted", "agent": 7, "input": {"plan": []}}'),
]  # fmt: skip


@pytest.mark.parametrize("content", [c for _, c in HOSTILE], ids=[n for n, _ in HOSTILE])
def test_hostile_body_is_a_4xx_with_the_error_shape(api_only: Fleet, content: bytes) -> None:
    assert len(content) <= MAX_BODY_BYTES
    resp = post_run(api_only, None, content=content, headers={"Content-Type": "application/json"})
    assert_client_error(resp)
    assert queued_messages(api_only) == 0


def test_lone_surrogate_in_metadata_is_refused_or_shown_back_never_a_500(api_only: Fleet) -> None:
    # Valid JSON grammar, but not encodable as UTF-8: the API must refuse it or escape it.
    content = b'{"agent": "scripted", "input": {"plan": []}, "metadata": {"note": "\\ud800"}}'
    resp = post_run(api_only, None, content=content, headers={"Content-Type": "application/json"})
    if resp.status_code != 202:
        assert_error(resp, 422)
        assert queued_messages(api_only) == 0
        return
    assert resp.json()["metadata"] == {"note": "\ud800"}
    assert api_only.get(resp.json()["id"])["metadata"] == {"note": "\ud800"}


def test_run_whose_output_holds_a_lone_surrogate_is_refused_or_readable(busy_fleet: Fleet) -> None:
    content = b'{"agent": "scripted", "input": {"plan": [{"final": "half \\udc00 a pair"}]}}'
    resp = post_run(busy_fleet, None, content=content, headers={"Content-Type": "application/json"})
    if resp.status_code != 202:
        assert_error(resp, 422)
        return
    run_id = resp.json()["id"]
    deadline = time.monotonic() + 20
    while True:
        with busy_fleet.client() as c:
            got = c.get(f"/v1/runs/{run_id}", params={"wait": 2})
        assert got.status_code == 200, f"{got.status_code}: {got.text}"
        if got.json()["status"] in TERMINAL:
            break
        assert time.monotonic() < deadline, got.text
    assert got.json()["status"] == "succeeded" and got.json()["output"] == "half \udc00 a pair"


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/v1/runs", {"content": b"agent=scripted", "headers": {"Content-Type": "text/plain"}}),
        ("DELETE", "/v1/runs", {}),
        ("PUT", "/v1/runs/abc", {}),
        ("GET", "/v1/runs/abc/cancel", {}),
        ("GET", "/v1/nothing-here", {}),
        ("GET", "/v1/runs/abc?steps=maybe", {}),
    ],
    ids=["text-plain-body", "delete-runs", "put-run", "get-cancel", "unknown-path", "bad-steps-flag"],
)
def test_odd_requests_are_a_4xx_with_the_error_shape(
    api_only: Fleet, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    headers = {"Authorization": f"Bearer {KEY_T1}", **kwargs.pop("headers", {})}
    resp = httpx.request(method, f"{api_only.url}{path}", headers=headers, timeout=10, **kwargs)
    assert_client_error(resp)


# -- admission: queue depth and kill switch -----------------------------------------------------


def test_submissions_over_max_queued_get_429_with_retry_after(api_only: Fleet) -> None:
    accepted = []
    for _ in range(MAX_QUEUED):
        resp = post_run(api_only, {"agent": "scripted", "input": FINAL})
        assert resp.status_code == 202, resp.text
        accepted.append(resp.json()["id"])
    assert queued_messages(api_only) == MAX_QUEUED

    resp = post_run(api_only, {"agent": "scripted", "input": FINAL})
    assert_error(resp, 429)
    assert int(resp.headers["retry-after"]) >= 1
    assert queued_messages(api_only) == MAX_QUEUED  # the refused run was not queued

    api_only.r.delete(AGENT_QUEUE)  # the backlog drains: service resumes
    assert post_run(api_only, {"agent": "scripted", "input": FINAL}).status_code == 202


def test_kill_all_refuses_new_submissions_with_503_until_deleted(api_only: Fleet) -> None:
    api_only.r.set("fleet:kill:all", "incident 42")
    try:
        resp = post_run(api_only, {"agent": "scripted", "input": FINAL})
        assert "incident 42" in assert_error(resp, 503)
        assert queued_messages(api_only) == 0
    finally:
        api_only.r.delete("fleet:kill:all")
    resp = post_run(api_only, {"agent": "scripted", "input": FINAL})
    assert resp.status_code == 202, resp.text


# -- long-poll -----------------------------------------------------------------------------------


def test_get_with_wait_returns_as_soon_as_the_run_ends(busy_fleet: Fleet) -> None:
    run = busy_fleet.submit(input={"plan": [{"sleep": 1.0}, {"final": "slept"}]})
    started = time.monotonic()
    with busy_fleet.client() as c:
        resp = c.get(f"/v1/runs/{run['id']}", params={"wait": 10})
    held_s = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    done = resp.json()
    assert done["status"] == "succeeded" and done["output"] == "slept", done
    assert held_s < 9, f"the GET held {held_s:.1f} s: it waited out the timeout instead of the run"


def test_get_with_wait_returns_the_still_running_run_after_wait_seconds(busy_fleet: Fleet) -> None:
    run = busy_fleet.submit(input=SLEEP_LOOP)
    try:
        busy_fleet.wait_status(run["id"], "running")
        started = time.monotonic()
        with busy_fleet.client() as c:
            resp = c.get(f"/v1/runs/{run['id']}", params={"wait": 1.5})
        held_s = time.monotonic() - started
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "running"
        assert 1.4 <= held_s < 10, held_s
    finally:
        with busy_fleet.client() as c:
            c.post(f"/v1/runs/{run['id']}/cancel")
        assert busy_fleet.wait(run["id"])["status"] in TERMINAL


@pytest.mark.parametrize("wait", ["30.5", "31", "1000", "-1", "soon", "nan"])
def test_wait_outside_zero_to_thirty_seconds_is_422(api_only: Fleet, wait: str) -> None:
    run = api_only.submit(input=FINAL)
    with api_only.client() as c:
        resp = c.get(f"/v1/runs/{run['id']}", params={"wait": wait})
    assert "wait" in assert_error(resp, 422)


# -- health, readiness and docs ------------------------------------------------------------------


def test_healthz_answers_ok(api_only: Fleet) -> None:
    resp = httpx.get(f"{api_only.url}/healthz", timeout=10)
    assert resp.status_code == 200 and resp.json() == {"ok": True}


def test_docs_and_openapi_are_served_and_describe_the_runs_api(api_only: Fleet) -> None:
    docs = httpx.get(f"{api_only.url}/docs", timeout=10)
    assert docs.status_code == 200 and "html" in docs.headers["content-type"]
    spec = httpx.get(f"{api_only.url}/openapi.json", timeout=10)
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert "/v1/runs" in paths and "post" in paths["/v1/runs"]
    assert "/v1/runs/{run_id}" in paths and "/v1/runs/{run_id}/cancel" in paths


def test_readyz_is_503_with_a_reason_while_redis_is_down_and_200_again_after(api_only: Fleet) -> None:
    assert httpx.get(f"{api_only.url}/readyz", timeout=10).status_code == 200
    api_only.redis.stop()
    try:
        resp = httpx.get(f"{api_only.url}/readyz", timeout=15)
        assert resp.status_code == 503, resp.text
        assert "redis" in resp.json()["error"]["message"].lower()
        assert httpx.get(f"{api_only.url}/healthz", timeout=10).status_code == 200  # still serving
        # A submission or read while the store is down is the fleet's 503, never a 500.
        assert_error(post_run(api_only, {"agent": "scripted", "input": FINAL}), 503)
        with api_only.client() as c:
            assert_error(c.get(f"/v1/runs/{'0123456789abcdef' * 2}"), 503)  # a well-formed id
        with api_only.client() as c:  # a connection of its own: uvicorn closes one after a 503
            assert_error(c.get(f"/v1/runs/{'0123456789abcdef' * 2}/events"), 503)
    finally:
        api_only.redis.start()
    deadline = time.monotonic() + 15
    while httpx.get(f"{api_only.url}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "readyz stayed 503 after Redis came back"
        time.sleep(0.1)
