"""Approval of tool calls (CONTRACT.md, "Approvals"; worker/control/approvals.py) against a real
redis-server, `fleet api`, an agent worker and a tool worker.

The module's fleet needs an approval for every `echo` call and gives runs 2 s (max_seconds) and
approvals APPROVAL_TIMEOUT_S: a run that waits longer than its max_seconds for a human and then
finishes shows that the wait did not count against it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api_client import EventReader, assert_error, stream_client
from tests.cli_runs import run_fleet, submit_env
from tests.harness import KEY_T1, KEY_T2, Fleet, RedisServer, wait_for
from worker.control.policy import Policy, PolicyStore
from worker.keys import Keys

KEYS = Keys("fleet")
APPROVAL_TIMEOUT_S = 20  # long enough for the tests that decide, on a loaded machine
MAX_SECONDS = 2.0


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    server = RedisServer()
    config = {"tools": {"approval": {"required": ["echo"], "timeout_s": APPROVAL_TIMEOUT_S}}}
    fleet = Fleet(server, config)
    try:
        fleet.start(workers=1, concurrency=2)
        yield fleet
    finally:
        fleet.close()
        server.close()


def plan(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"plan": list(steps)}


def submit_waiting(fleet: Fleet, args: dict[str, Any] | None = None, tool: str = "echo") -> dict[str, Any]:
    """Submit a run whose first step calls `tool` and wait until it waits for approval."""
    run = fleet.submit(
        input=plan({"tool": tool, "args": args or {"text": "hello"}}, {"final": "done"}),
        budgets={"max_seconds": MAX_SECONDS},
    )
    wait_for(lambda: fleet.get(run["id"])["waiting"] is not None, 20, f"never waited:\n{fleet.logs()}")
    return fleet.get(run["id"])


def decide(fleet: Fleet, run_id: str, call_id: str, body: Any, key: str = KEY_T1) -> httpx.Response:
    with fleet.client(key) as c:
        return c.post(f"/v1/runs/{run_id}/approvals/{call_id}", json=body)


def refused(resp: httpx.Response, status: int, error_type: str) -> None:
    """The answer is an error of the contract's shape with this status and type."""
    assert_error(resp, status)
    assert resp.json()["error"]["type"] == error_type, resp.text


def pending(fleet: Fleet, key: str = KEY_T1) -> list[dict[str, Any]]:
    with fleet.client(key) as c:
        resp = c.get("/v1/approvals")
    assert resp.status_code == 200, resp.text
    found: list[dict[str, Any]] = resp.json()["approvals"]
    return found


def test_an_approved_call_runs_and_the_wait_does_not_count_against_max_seconds(fleet: Fleet) -> None:
    run = submit_waiting(fleet, {"text": "write to a.user@example.com"})
    waiting = run["waiting"]
    assert run["status"] == "running"
    assert waiting["type"] == "approval" and waiting["tool"] == "echo"
    assert "a.user@example.com" not in json.dumps(waiting), "the approval's args are not redacted"
    assert waiting["since"] and waiting["expires_at"]
    listed = [a for a in pending(fleet) if a["run_id"] == run["id"]]
    assert [a["call_id"] for a in listed] == [waiting["call_id"]]
    assert listed[0]["agent"] == "scripted"
    assert all(a["run_id"] != run["id"] for a in pending(fleet, KEY_T2)), "another tenant sees the approval"

    time.sleep(MAX_SECONDS + 1.0)  # longer than the run's max_seconds, all of it waiting for a human
    assert fleet.get(run["id"])["status"] == "running"

    resp = decide(fleet, run["id"], waiting["call_id"], {"decision": "approve", "comment": "ok by ops"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == run["id"] and resp.json()["waiting"] is None

    ended = fleet.wait(run["id"])
    assert (ended["status"], ended["stop_reason"], ended["output"]) == ("succeeded", "finish", "done"), ended
    step = ended["steps"][0]
    assert step["ok"] is True and step["tool"] == "echo"
    assert step["approval"]["decision"] == "approve"
    assert step["approval"]["by"] == "t1" and step["approval"]["comment"] == "ok by ops"
    assert step["approval"]["at"]
    assert all(a["run_id"] != run["id"] for a in pending(fleet))

    again = decide(fleet, run["id"], waiting["call_id"], {"decision": "deny"})
    refused(again, 409, "conflict")
    # The same decision again, as a client's retry after a lost answer sends it: 200, nothing changes.
    repeat = decide(fleet, run["id"], waiting["call_id"], {"decision": "approve", "comment": "ok by ops"})
    assert repeat.status_code == 200, repeat.text
    assert fleet.get(run["id"], steps=True)["steps"][0]["approval"] == step["approval"]
    other_comment = decide(fleet, run["id"], waiting["call_id"], {"decision": "approve", "comment": "again"})
    refused(other_comment, 409, "conflict")
    other_tenant = decide(fleet, run["id"], waiting["call_id"], {"decision": "approve"}, KEY_T2)
    refused(other_tenant, 404, "not_found")


def test_a_denied_call_reaches_the_agent_as_denied_with_the_comment(fleet: Fleet) -> None:
    run = submit_waiting(fleet)
    call_id = run["waiting"]["call_id"]
    resp = decide(fleet, run["id"], call_id, {"decision": "deny", "comment": "not today"})
    assert resp.status_code == 200, resp.text
    ended = fleet.wait(run["id"])
    assert ended["status"] == "succeeded", ended  # the plan goes on to its final step
    step = ended["steps"][0]
    assert (step["ok"], step["error_type"]) == (False, "denied")
    assert step["decision"]["decision"] == "denied"
    assert step["decision"]["reason"] == "approval denied: not today"
    assert step["approval"]["decision"] == "deny" and step["approval"]["comment"] == "not today"
    refused(decide(fleet, run["id"], call_id, {"decision": "approve"}), 409, "conflict")


def test_an_approval_not_decided_in_time_expires_and_the_call_is_denied(fleet: Fleet) -> None:
    run = submit_waiting(fleet)
    ended = fleet.wait(run["id"], timeout=APPROVAL_TIMEOUT_S + 20)
    assert ended["status"] == "succeeded", ended
    step = ended["steps"][0]
    assert (step["ok"], step["error_type"]) == (False, "denied")
    assert step["decision"]["reason"] == "approval expired"
    assert step["approval"]["decision"] == "expired" and step["approval"]["by"] is None
    refused(decide(fleet, run["id"], run["waiting"]["call_id"], {"decision": "approve"}), 409, "conflict")


def test_the_events_show_the_request_and_the_decision(fleet: Fleet) -> None:
    run = submit_waiting(fleet)
    call_id = run["waiting"]["call_id"]
    assert decide(fleet, run["id"], call_id, {"decision": "approve"}).status_code == 200
    fleet.wait(run["id"])
    with stream_client() as c, c.stream("GET", f"{fleet.url}/v1/runs/{run['id']}/events") as resp:
        events = EventReader(resp).take()
    names = [e.name for e in events]
    assert names.index("approval_requested") < names.index("approval_decided") < names.index("end"), names
    requested = next(e for e in events if e.name == "approval_requested").data
    decided = next(e for e in events if e.name == "approval_decided").data
    assert requested["call_id"] == call_id and requested["tool"] == "echo"
    assert decided["decision"] == "approve" and decided["by"] == "t1"


def test_an_approved_call_meets_the_switches_of_the_moment_it_is_approved(fleet: Fleet) -> None:
    run = submit_waiting(fleet)
    fleet.r.set(KEYS.kill_tool("echo"), "echo is broken")
    try:
        assert decide(fleet, run["id"], run["waiting"]["call_id"], {"decision": "approve"}).status_code == 200
        ended = fleet.wait(run["id"])
    finally:
        fleet.r.delete(KEYS.kill_tool("echo"))
    step = ended["steps"][0]
    assert (step["ok"], step["error_type"]) == (False, "killed"), step
    assert step["approval"]["decision"] == "approve"


@pytest.mark.parametrize("stop", ["kill", "cancel"])
def test_a_kill_switch_or_a_cancel_ends_a_run_waiting_for_approval_at_once(fleet: Fleet, stop: str) -> None:
    run = submit_waiting(fleet)
    flipped = time.monotonic()
    if stop == "kill":
        fleet.r.set(KEYS.kill_tenant("t1"), "tenant paused")
    else:
        with fleet.client() as c:
            assert c.post(f"/v1/runs/{run['id']}/cancel").status_code == 202
    try:
        ended = fleet.wait(run["id"], timeout=10)
    finally:
        fleet.r.delete(KEYS.kill_tenant("t1"))
    assert time.monotonic() - flipped < 3.0, "the waiting run did not end at once"
    expected = ("stopped", "killed") if stop == "kill" else ("cancelled", "cancelled")
    assert (ended["status"], ended["stop_reason"]) == expected, ended
    assert ended["waiting"] is None
    assert all(a["run_id"] != run["id"] for a in pending(fleet))
    resp = decide(fleet, run["id"], run["waiting"]["call_id"], {"decision": "approve"})
    refused(resp, 409, "conflict")


def test_an_agents_policy_can_ask_approval_for_a_tool_the_fleet_does_not(fleet: Fleet) -> None:
    policies = PolicyStore(fleet.r, KEYS)
    policies.set("scripted", Policy(approve_tools=["test.write"]))
    try:
        run = submit_waiting(fleet, {"key": "k1", "value": "v"}, tool="test.write")
        assert run["waiting"]["tool"] == "test.write"
        assert decide(fleet, run["id"], run["waiting"]["call_id"], {"decision": "approve"}).status_code == 200
        ended = fleet.wait(run["id"])
    finally:
        policies.set("scripted", Policy())
    assert ended["steps"][0]["ok"] is True, ended["steps"]


def test_bad_decisions_get_clear_errors_and_change_nothing(fleet: Fleet) -> None:
    run = submit_waiting(fleet)
    run_id, call_id = run["id"], run["waiting"]["call_id"]
    for body in (
        {"decision": "maybe"},
        {},
        {"decision": "approve", "extra": 1},
        {"decision": "deny", "comment": "x" * 2001},
    ):
        refused(decide(fleet, run_id, call_id, body), 422, "invalid_request")
    with fleet.client() as c:
        resp = c.post(
            f"/v1/runs/{run_id}/approvals/{call_id}",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
    refused(resp, 422, "invalid_request")
    refused(decide(fleet, run_id, call_id + "x", {"decision": "approve"}), 404, "not_found")
    refused(decide(fleet, run_id, call_id, {"decision": "approve"}, key=KEY_T2), 404, "not_found")
    refused(decide(fleet, "0" * 32, call_id, {"decision": "approve"}), 404, "not_found")
    refused(decide(fleet, "not-a-run", call_id, {"decision": "approve"}), 404, "not_found")
    assert fleet.get(run_id)["waiting"]["call_id"] == call_id, "a refused decision changed the run"
    assert decide(fleet, run_id, call_id, {"decision": "approve"}).status_code == 200
    assert fleet.wait(run_id)["status"] == "succeeded"


def test_fleet_approvals_and_fleet_approve_from_the_shell(fleet: Fleet) -> None:
    first, second = submit_waiting(fleet), submit_waiting(fleet)
    listed = run_fleet("approvals", env=submit_env(fleet))
    assert listed.code == 0, listed.stderr
    shown = {a["run_id"]: a["call_id"] for a in json.loads(listed.stdout)}
    assert shown.get(first["id"]) == first["waiting"]["call_id"], listed.stdout
    assert shown.get(second["id"]) == second["waiting"]["call_id"], listed.stdout

    approved = run_fleet(
        "approve", first["id"], first["waiting"]["call_id"], "--comment", "fine", env=submit_env(fleet)
    )
    assert approved.code == 0, approved.stderr
    assert json.loads(approved.stdout)["id"] == first["id"]
    denied = run_fleet("approve", second["id"], second["waiting"]["call_id"], "--deny", env=submit_env(fleet))
    assert denied.code == 0, denied.stderr
    assert fleet.wait(first["id"])["steps"][0]["approval"]["comment"] == "fine"
    assert fleet.wait(second["id"])["steps"][0]["error_type"] == "denied"

    again = run_fleet("approve", second["id"], second["waiting"]["call_id"], env=submit_env(fleet))
    assert again.code == 1 and "409" in again.stderr, again.stderr


def test_the_python_client_lists_approves_and_denies(fleet: Fleet) -> None:
    from agentfleet_client import ConflictError
    from agentfleet_client import Fleet as Client

    first, second = submit_waiting(fleet), submit_waiting(fleet)
    with Client(fleet.url, KEY_T1) as client:
        listed = {a.run_id: a for a in client.approvals()}
        assert listed[first["id"]].call_id == first["waiting"]["call_id"]
        assert listed[first["id"]].tool == "echo"
        run = client.approve(first["id"], first["waiting"]["call_id"], comment="go")
        assert run.id == first["id"] and run.waiting is None
        client.deny(second["id"], second["waiting"]["call_id"])
        again = client.deny(second["id"], second["waiting"]["call_id"])  # a retry of the same decision
        assert again.id == second["id"]
        with pytest.raises(ConflictError):
            client.approve(second["id"], second["waiting"]["call_id"])
        assert client.wait(first["id"], timeout=30).status == "succeeded"
    assert fleet.wait(first["id"])["steps"][0]["ok"] is True
    assert fleet.wait(second["id"])["steps"][0]["error_type"] == "denied"
