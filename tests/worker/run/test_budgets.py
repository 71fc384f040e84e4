"""Every stop reason and budget of CONTRACT.md ("Budgets and time limits", the `scripted` agent),
proven against a real fleet: API, prefork agent worker and tool worker on a real Redis.

Time bounds are measured on the server side (the run's started_at / finished_at and usage.seconds),
never with the test process's clock, and only the bounds the contract gives are asserted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.harness import CountingServer, Fleet, running_fleet, wait_for

MAX_SECONDS = 2
CONTRACT_SLACK_S = 1.0  # "ends within max_seconds + 1 s of its start"


def run_seconds(run: dict[str, Any]) -> float:
    """finished_at - started_at of an ended run, from the run record's ISO 8601 timestamps."""
    started = datetime.fromisoformat(run["started_at"])
    finished = datetime.fromisoformat(run["finished_at"])
    return (finished - started).total_seconds()


def unique_path(name: str) -> str:
    """A path of the counting server that no other test requests."""
    return f"/{name}-{uuid.uuid4().hex[:8]}"


def run_plan(fleet: Fleet, plan: list[dict[str, Any]], loop: bool = False, **budgets: Any) -> dict[str, Any]:
    """Submit a scripted run and return it once it has ended, with its step log."""
    body: dict[str, Any] = {"budgets": budgets} if budgets else {}
    run = fleet.submit(input={"plan": plan, "loop": loop}, **body)
    return fleet.wait(run["id"], timeout=60)


@pytest.fixture(scope="module")
def timeout_fleet() -> Iterator[Fleet]:
    """A second fleet whose http.get times out after 500 ms and is never retried."""
    config = {"tools": {"timeouts_ms": {"http.get": 500}, "retries": {"max": 0, "backoff_ms": [50]}}}
    with running_fleet(config=config, concurrency=1) as f:
        yield f


# -- a tool that hangs past the run's deadline (first: its tool-worker thread is free again by teardown) --


def test_run_waiting_on_a_hanging_tool_stops_at_max_seconds_within_one_second(fleet: Fleet) -> None:
    done = run_plan(
        fleet,
        [{"tool": "test.sleep", "args": {"seconds": 10}}, {"final": "never"}],
        max_seconds=MAX_SECONDS,
    )
    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_seconds"
    assert done["output"] is None
    assert run_seconds(done) <= MAX_SECONDS + CONTRACT_SLACK_S
    assert done["usage"]["seconds"] <= MAX_SECONDS + CONTRACT_SLACK_S
    assert done["usage"]["tool_calls"] == 1


# -- finish ---------------------------------------------------------------------------------------


def test_plan_with_final_succeeds_with_its_text_as_output(fleet: Fleet) -> None:
    done = run_plan(fleet, [{"tool": "echo", "args": {"a": 1}}, {"final": "all done"}])
    assert done["status"] == "succeeded", done
    assert done["stop_reason"] == "finish"
    assert done["output"] == "all done"
    assert done["error"] is None


def test_plan_that_ends_without_final_succeeds_with_empty_output(fleet: Fleet) -> None:
    done = run_plan(fleet, [{"tool": "echo", "args": {"a": 1}}, {"sleep": 0.05}])
    assert done["status"] == "succeeded", done
    assert done["stop_reason"] == "finish"
    assert done["output"] == ""
    assert [s["action"] for s in done["steps"]] == ["tool", "sleep"]


def test_fail_step_fails_the_run_with_an_error_carrying_its_message(fleet: Fleet) -> None:
    done = run_plan(fleet, [{"tool": "echo", "args": {}}, {"fail": "boom"}, {"final": "not reached"}])
    assert done["status"] == "failed", done
    assert done["stop_reason"] == "error"
    assert done["output"] is None
    error = done["error"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["message"] == "boom"


# -- max_steps ------------------------------------------------------------------------------------


def test_looping_plan_stops_at_max_steps_after_exactly_that_many_steps(fleet: Fleet) -> None:
    done = run_plan(fleet, [{"tool": "echo", "args": {"n": 1}}], loop=True, max_steps=3)
    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_steps"
    assert done["usage"]["steps"] == 3
    assert done["usage"]["tool_calls"] == 3
    assert len(done["steps"]) == 3
    assert [s["step"] for s in done["steps"]] == [1, 2, 3]
    assert all(s["tool"] == "echo" and s["ok"] is True for s in done["steps"])
    assert done["budgets"]["max_steps"] == 3


# -- max_tool_calls -------------------------------------------------------------------------------


def test_looping_tool_calls_stop_at_max_tool_calls_and_the_exceeding_call_is_never_made(
    fleet: Fleet, http_server: CountingServer
) -> None:
    path = unique_path("tool-call-loop")
    done = run_plan(
        fleet, [{"tool": "http.get", "args": {"url": http_server.url(path)}}], loop=True, max_tool_calls=2
    )
    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_tool_calls"
    assert done["usage"]["tool_calls"] == 2
    assert http_server.count(path) == 2
    assert [s["ok"] for s in done["steps"]] == [True, True]


def test_second_tool_call_over_a_budget_of_one_stops_the_run_before_it_is_made(
    fleet: Fleet, http_server: CountingServer
) -> None:
    path = unique_path("one-call")
    url = http_server.url(path)
    plan = [
        {"tool": "http.get", "args": {"url": url}},
        {"sleep": 0.2},
        {"tool": "http.get", "args": {"url": url}},
        {"final": "not reached"},
    ]
    done = run_plan(fleet, plan, max_tool_calls=1)
    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_tool_calls"
    assert done["output"] is None
    assert done["usage"]["tool_calls"] == 1
    assert done["usage"]["steps"] == 3  # stopped in its third step, the second call
    assert http_server.count(path) == 1
    assert [s["action"] for s in done["steps"]] == ["tool", "sleep"]


# -- max_seconds ----------------------------------------------------------------------------------


def test_long_think_time_stops_at_max_seconds_within_one_second(fleet: Fleet) -> None:
    done = run_plan(fleet, [{"sleep": 30}, {"final": "never"}], max_seconds=MAX_SECONDS)
    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_seconds"
    assert done["output"] is None
    assert run_seconds(done) <= MAX_SECONDS + CONTRACT_SLACK_S
    assert done["usage"]["seconds"] <= MAX_SECONDS + CONTRACT_SLACK_S


def test_agent_that_swallows_the_deadline_is_still_ended_and_the_worker_serves_the_next_run(
    fleet: Fleet,
) -> None:
    run = fleet.submit(agent="stubborn", input={}, budgets={"max_seconds": MAX_SECONDS})
    done = fleet.wait(run["id"], timeout=60)
    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_seconds"
    assert run_seconds(done) <= MAX_SECONDS + CONTRACT_SLACK_S
    assert done["usage"]["seconds"] <= MAX_SECONDS + CONTRACT_SLACK_S

    worker = next(p for p in fleet.procs if p.name == "worker")
    assert worker.popen.poll() is None, f"the agent worker died:\n{fleet.logs()}"
    after = run_plan(fleet, [{"tool": "echo", "args": {"after": True}}, {"final": "served"}])
    assert after["status"] == "succeeded", after
    assert after["output"] == "served"
    # The pool is back to its 4 processes: a hard stop ends one child, never the worker.
    wait_for(lambda: len(fleet.pool_children(worker)) == 4, 20, "the pool did not replace its child")
    # The ended run stays ended when its message is delivered again after the child's death.
    assert fleet.get(run["id"])["status"] == "stopped"


# -- tool errors the agent sees, and the run goes on ------------------------------------------------


def test_tool_off_the_allowlist_is_denied_and_the_run_goes_on(
    fleet: Fleet, http_server: CountingServer
) -> None:
    path = unique_path("denied-post")
    plan = [
        {"tool": "http.post", "args": {"url": http_server.url(path), "json": {"x": 1}}},
        {"tool": "no.such.tool", "args": {}},
        {"final": "went on"},
    ]
    done = run_plan(fleet, plan)
    assert done["status"] == "succeeded", done
    assert done["output"] == "went on"
    assert [(s["tool"], s["ok"], s["error_type"]) for s in done["steps"]] == [
        ("http.post", False, "denied"),
        ("no.such.tool", False, "denied"),
    ]
    assert http_server.count(path) == 0
    assert done["usage"]["tool_calls"] == 0


def test_args_that_do_not_fit_the_schema_are_invalid_args_and_nothing_is_sent(
    fleet: Fleet, http_server: CountingServer
) -> None:
    path = unique_path("invalid-args")
    plan = [
        {"tool": "test.sleep", "args": {"seconds": "x"}},
        {"tool": "http.get", "args": {"url": http_server.url(path), "not_a_field": 1}},
        {"final": "went on"},
    ]
    done = run_plan(fleet, plan)
    assert done["status"] == "succeeded", done
    assert done["output"] == "went on"
    assert [(s["tool"], s["ok"], s["error_type"]) for s in done["steps"]] == [
        ("test.sleep", False, "invalid_args"),
        ("http.get", False, "invalid_args"),
    ]
    assert http_server.count(path) == 0
    assert done["usage"]["tool_calls"] == 0  # no call was started


# -- budgets over the caps ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [("max_steps", 26), ("max_tool_calls", 13), ("max_seconds", 61)])
def test_budget_over_the_fleet_cap_is_a_422_naming_the_cap(fleet: Fleet, name: str, value: int) -> None:
    with fleet.client() as c:
        resp = c.post(
            "/v1/runs",
            json={"agent": "scripted", "input": {"plan": [{"final": "x"}]}, "budgets": {name: value}},
        )
    assert resp.status_code == 422, resp.text
    message = resp.json()["error"]["message"]
    assert name in message
    assert f"AGENT_{name.upper()}" in message


# -- a tool that hangs past its own timeout (second fleet) -----------------------------------------


def test_tool_past_its_timeout_gives_the_agent_a_timeout_error_and_the_run_goes_on(
    timeout_fleet: Fleet, http_server: CountingServer
) -> None:
    path = "/sleep/5"
    before = http_server.count(path)
    done = run_plan(
        timeout_fleet, [{"tool": "http.get", "args": {"url": http_server.url(path)}}, {"final": "after"}]
    )
    assert done["status"] == "succeeded", done
    assert done["stop_reason"] == "finish"
    assert done["output"] == "after"
    step = done["steps"][0]
    assert step["tool"] == "http.get"
    assert step["ok"] is False
    assert step["error_type"] == "timeout"
    # The configured 500 ms applied, not the fleet default of 3000 ms, and it was not retried.
    assert step["duration_ms"] < 3000, step
    # At most one request: not retried (under heavy load the tool worker may take the message
    # only after the run gave up on it, and then it skips a call that is over: none at all).
    assert http_server.count(path) - before <= 1
    assert done["usage"]["tool_calls"] == 1
