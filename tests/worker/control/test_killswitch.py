"""Kill switches (CONTRACT.md "Kill switches"), flipped with a plain Redis client, as an operator
would with redis-cli, against real API, agent-worker and tool-worker processes.

The switches are read by the fleet; this module only ever SETs and DELs keys on the fleet's own
redis-server (`fleet.r`), or runs the `fleet kill` / `fleet revive` commands against it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.harness import FLEET_CMD, KEY_T1, KEY_T2, Fleet, RedisServer, running_fleet, wait_for
from worker.keys import Keys

KEYS = Keys("fleet")
# Room for looping runs to go on until a switch stops them (the default caps end them in ~25 steps).
CONFIG = {"runtime": {"env": {"AGENT_MAX_STEPS": 500, "AGENT_MAX_TOOL_CALLS": 500, "AGENT_MAX_SECONDS": 60}}}
# Echo, then think time: a run that goes on until something stops it.
LOOPING = {"plan": [{"tool": "echo", "args": {"n": 1}}, {"sleep": 0.2}], "loop": True}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """API, one agent worker of 4 processes, one tool worker; caps raised for looping runs."""
    server = RedisServer()
    f = Fleet(server, CONFIG)
    try:
        f.start(workers=1, concurrency=4)
        yield f
    finally:
        f.close()
        server.close()


@pytest.fixture(autouse=True)
def switches_off(fleet: Fleet) -> Iterator[None]:
    """Every switch a test turns on is off again before the next test."""
    yield
    for key in list(fleet.r.scan_iter(match=KEYS.kill_pattern())):
        fleet.r.delete(key)


# -- helpers ---------------------------------------------------------------------------------------


def post_run(fleet: Fleet, body: dict[str, Any], key: str = KEY_T1) -> httpx.Response:
    with fleet.client(key) as c:
        return c.post("/v1/runs", json=body)


def scripted(plan: list[dict[str, Any]], loop: bool = False) -> dict[str, Any]:
    return {"agent": "scripted", "input": {"plan": plan, "loop": loop}}


def wait_steps(
    fleet: Fleet, run_id: str, steps: int, key: str = KEY_T1, timeout: float = 20
) -> dict[str, Any]:
    """The run once it is running and has begun at least `steps` steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = fleet.get(run_id, key=key)
        assert run["status"] in ("queued", "running"), run
        if run["status"] == "running" and run["usage"]["steps"] >= steps:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {steps} steps: {fleet.get(run_id, key=key)}")


def epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def assert_killed(run: dict[str, Any], reason: str) -> None:
    assert run["status"] == "stopped", run
    assert run["stop_reason"] == "killed", run
    assert run["error"]["message"] == reason, run


def assert_refused(resp: httpx.Response, reason: str) -> None:
    """A 503 with the contract's JSON error shape, naming the switch's reason."""
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"type", "message"}, body
    assert isinstance(body["error"]["type"], str) and body["error"]["type"]
    assert reason in body["error"]["message"], body


def set_and_snapshot_steps(fleet: Fleet, key: str, reason: str, run_ids: list[str]) -> list[int]:
    """SET the switch and read each run's step count in one MULTI, so both happen at one instant."""
    pipe = fleet.r.pipeline(transaction=True)
    for run_id in run_ids:
        pipe.hget(KEYS.run(run_id), "steps")
    pipe.set(key, reason)
    *steps, _ = pipe.execute()
    return [int(s) for s in steps]


# -- tests -----------------------------------------------------------------------------------------
# The 30 s tool test comes first, so its tool call has ended by the time the tool worker stops.


def test_kill_all_stops_a_run_waiting_on_a_30s_tool_within_1s(fleet: Fleet) -> None:
    run = fleet.submit(input={"plan": [{"tool": "test.sleep", "args": {"seconds": 30}}, {"final": "late"}]})
    wait_for(
        lambda: fleet.get(run["id"])["usage"]["tool_calls"] == 1, 20, f"the tool call never started: {run}"
    )
    time.sleep(0.5)  # the run is now waiting on the tool's reply
    assert fleet.get(run["id"])["status"] == "running"

    fleet.r.set(KEYS.kill_all(), "incident 42")
    switched_on = time.time()
    done = fleet.wait(run["id"], timeout=10)

    assert_killed(done, "incident 42")
    assert done["usage"]["steps"] == 1 and done["usage"]["tool_calls"] == 1
    waited = epoch(done["finished_at"]) - switched_on
    assert waited <= 1.0, f"the run stopped {waited:.3f} s after the switch"


def test_kill_all_stops_every_running_run_within_one_step_with_the_reason(fleet: Fleet) -> None:
    keys = [KEY_T1, KEY_T2, KEY_T1]
    runs = [fleet.submit(input=LOOPING, key=key) for key in keys]
    for run, key in zip(runs, keys, strict=True):
        wait_steps(fleet, run["id"], 3, key=key)

    before = set_and_snapshot_steps(fleet, KEYS.kill_all(), "incident 42", [r["id"] for r in runs])
    for run, key, steps_then in zip(runs, keys, before, strict=True):
        done = fleet.wait(run["id"], timeout=10, key=key)
        assert_killed(done, "incident 42")
        # At the SET, the run is either inside step n (its next check stops it: n steps) or has
        # passed the top-of-step check and not yet begun step n+1 (that step's action checks
        # again before it acts: n+1). It can never begin a second step under the switch.
        assert steps_then >= 3
        assert steps_then <= done["usage"]["steps"] <= steps_then + 1, (steps_then, done)


def test_kill_all_stops_queued_runs_without_a_step(fleet: Fleet) -> None:
    # Four long runs fill the worker's four processes, so the next two queue behind them.
    blockers = [fleet.submit("busy", input={"steps": 30}) for _ in range(4)]
    for run in blockers:
        wait_steps(fleet, run["id"], 1)
    queued = [fleet.submit(input=LOOPING) for _ in range(2)]
    time.sleep(0.5)
    assert [fleet.get(r["id"])["status"] for r in queued] == ["queued", "queued"]

    fleet.r.set(KEYS.kill_all(), "queue drain")
    for run in blockers:
        assert_killed(fleet.wait(run["id"], timeout=10), "queue drain")
    for run in queued:
        done = fleet.wait(run["id"], timeout=20)
        assert_killed(done, "queue drain")
        assert done["usage"]["steps"] == 0 and done["usage"]["tool_calls"] == 0, done
        assert done["steps"] == [], done


def test_kill_all_refuses_submissions_with_503_and_del_restores_service(fleet: Fleet) -> None:
    fleet.r.set(KEYS.kill_all(), "incident 42")
    for key in (KEY_T1, KEY_T2):
        assert_refused(post_run(fleet, scripted([{"final": "no"}]), key=key), "incident 42")

    fleet.r.delete(KEYS.kill_all())
    run = fleet.submit(input={"plan": [{"tool": "echo", "args": {}}, {"final": "back"}]})
    done = fleet.wait(run["id"])
    assert done["status"] == "succeeded" and done["output"] == "back", done


def test_tenant_switch_stops_and_refuses_that_tenant_while_others_go_on(fleet: Fleet) -> None:
    t1_run = fleet.submit(input=LOOPING, key=KEY_T1)
    t2_plan = [{"tool": "echo", "args": {}}, *[{"sleep": 0.4}] * 6, {"final": "t2 done"}]
    t2_run = fleet.submit(input={"plan": t2_plan}, key=KEY_T2)
    wait_steps(fleet, t1_run["id"], 2, key=KEY_T1)
    wait_steps(fleet, t2_run["id"], 1, key=KEY_T2)

    fleet.r.set(KEYS.kill_tenant("t1"), "tenant t1 over quota")
    t1_done = fleet.wait(t1_run["id"], timeout=10, key=KEY_T1)
    assert_killed(t1_done, "tenant t1 over quota")
    assert fleet.get(t2_run["id"], key=KEY_T2)["status"] == "running"

    assert_refused(post_run(fleet, scripted([{"final": "no"}]), key=KEY_T1), "tenant t1 over quota")
    t2_new = fleet.submit(input={"plan": [{"tool": "echo", "args": {}}, {"final": "t2 new"}]}, key=KEY_T2)
    for run, output in ((t2_run, "t2 done"), (t2_new, "t2 new")):
        done = fleet.wait(run["id"], timeout=20, key=KEY_T2)
        assert done["status"] == "succeeded" and done["output"] == output, done
    assert fleet.get(t2_run["id"], key=KEY_T2)["usage"]["steps"] == len(t2_plan)


def test_agent_switch_stops_and_refuses_that_agent_while_others_go_on(fleet: Fleet) -> None:
    t1_run = fleet.submit(input=LOOPING, key=KEY_T1)
    t2_run = fleet.submit(input=LOOPING, key=KEY_T2)
    wait_steps(fleet, t1_run["id"], 2, key=KEY_T1)
    wait_steps(fleet, t2_run["id"], 2, key=KEY_T2)

    # Another agent's switch leaves scripted runs alone.
    fleet.r.set(KEYS.kill_agent("stubborn"), "not this one")
    time.sleep(0.6)
    assert fleet.get(t1_run["id"])["status"] == "running"

    fleet.r.set(KEYS.kill_agent("scripted"), "scripted agent recalled")
    for run, key in ((t1_run, KEY_T1), (t2_run, KEY_T2)):
        assert_killed(fleet.wait(run["id"], timeout=10, key=key), "scripted agent recalled")
        assert_refused(post_run(fleet, scripted([{"final": "no"}]), key=key), "scripted agent recalled")

    # Another agent is still admitted and runs (this one ignores everything but its deadline).
    fleet.r.delete(KEYS.kill_agent("stubborn"))
    other = fleet.submit(agent="stubborn", input={}, budgets={"max_seconds": 1})
    done = fleet.wait(other["id"], timeout=20)
    assert done["status"] == "stopped" and done["stop_reason"] == "max_seconds", done


def test_tool_switch_refuses_that_tool_with_killed_and_the_run_goes_on(fleet: Fleet) -> None:
    fleet.r.set(KEYS.kill_tool("echo"), "echo is broken")
    plan = [
        {"tool": "echo", "args": {"x": 1}},
        {"tool": "test.write", "args": {"x": 2}},
        {"final": "went on"},
    ]
    done = fleet.wait(fleet.submit(input={"plan": plan})["id"])

    assert done["status"] == "succeeded" and done["output"] == "went on", done
    echo_step, write_step = done["steps"][0], done["steps"][1]
    assert echo_step["tool"] == "echo" and echo_step["ok"] is False and echo_step["error_type"] == "killed"
    assert write_step["tool"] == "test.write" and write_step["ok"] is True, write_step
    assert done["usage"]["tool_calls"] == 1, done  # the refused call was never made


def test_writes_switch_refuses_tools_that_write_but_not_others(fleet: Fleet) -> None:
    fleet.r.set(KEYS.kill_writes(), "read-only mode")
    plan = [
        {"tool": "test.write", "args": {"x": 1}},
        {"tool": "echo", "args": {"x": 2}},
        {"final": "went on"},
    ]
    done = fleet.wait(fleet.submit(input={"plan": plan})["id"])

    assert done["status"] == "succeeded" and done["output"] == "went on", done
    write_step, echo_step = done["steps"][0], done["steps"][1]
    assert write_step["tool"] == "test.write" and write_step["ok"] is False, write_step
    assert write_step["error_type"] == "killed", write_step
    assert echo_step["tool"] == "echo" and echo_step["ok"] is True, echo_step


def test_switch_set_with_ex_refuses_until_it_expires(fleet: Fleet) -> None:
    fleet.r.set(KEYS.kill_all(), "brief pause", ex=1)
    assert_refused(post_run(fleet, scripted([{"final": "no"}])), "brief pause")

    wait_for(lambda: not fleet.r.exists(KEYS.kill_all()), 5, "the switch did not expire")
    resp = post_run(fleet, scripted([{"final": "after expiry"}]))
    assert resp.status_code == 202, resp.text
    done = fleet.wait(resp.json()["id"])
    assert done["status"] == "succeeded" and done["output"] == "after expiry", done


def fleet_cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEET_CMD, *args], env=fleet.env, capture_output=True, text=True, timeout=30, check=False
    )


def test_cli_kill_lists_and_revive_flip_the_switches_the_fleet_obeys(fleet: Fleet) -> None:
    listed = fleet_cli(fleet, "kill")
    assert listed.returncode == 0, listed
    assert "fleet:kill:all" not in listed.stdout

    on = fleet_cli(fleet, "kill", "all", "--reason", "x", "--ttl", "60")
    assert on.returncode == 0, on
    assert fleet.r.get(KEYS.kill_all()) == "x"
    assert 0 < fleet.r.ttl(KEYS.kill_all()) <= 60
    assert_refused(post_run(fleet, scripted([{"final": "no"}])), "x")

    listed = fleet_cli(fleet, "kill")
    assert listed.returncode == 0, listed
    line = next(ln for ln in listed.stdout.splitlines() if "fleet:kill:all" in ln)
    assert "x" in line.split("fleet:kill:all", 1)[1], listed.stdout

    off = fleet_cli(fleet, "revive", "all")
    assert off.returncode == 0, off
    assert not fleet.r.exists(KEYS.kill_all())
    resp = post_run(fleet, scripted([{"final": "revived"}]))
    assert resp.status_code == 202, resp.text
    assert fleet.wait(resp.json()["id"])["output"] == "revived"


def test_cli_kill_tool_without_a_name_is_a_usage_error(fleet: Fleet) -> None:
    result = fleet_cli(fleet, "kill", "tool")
    assert result.returncode == 2, result
    assert "name" in result.stderr, result
    assert not list(fleet.r.scan_iter(match=KEYS.kill_pattern()))


def test_switch_keys_follow_fleet_key_prefix() -> None:
    with running_fleet(CONFIG, concurrency=2, env={"FLEET_KEY_PREFIX": "acme"}) as acme:
        looping = acme.submit(input=LOOPING)
        wait_steps(acme, looping["id"], 2)

        # The default prefix's switch is not this fleet's: runs go on, submissions are admitted.
        acme.r.set(Keys("fleet").kill_all(), "wrong prefix")
        other = acme.submit(input={"plan": [{"tool": "echo", "args": {}}, {"final": "ignored it"}]})
        done = acme.wait(other["id"])
        assert done["status"] == "succeeded" and done["output"] == "ignored it", done
        assert acme.get(looping["id"])["status"] == "running"

        acme.r.set(Keys("acme").kill_all(), "acme incident")
        assert_killed(acme.wait(looping["id"], timeout=10), "acme incident")
        assert_refused(post_run(acme, scripted([{"final": "no"}])), "acme incident")
