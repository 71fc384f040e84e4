"""Unit tests of the agent loop (worker/run/loop.py) on fakeredis with Lua: a run goes through
`execute_run` with an in-process dispatcher that answers each tool call as a tool worker does,
with the reply script (worker/gateway/reply.py Replier). Delivery, timing and crashes are tested
against real processes elsewhere."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import astuple
from typing import Any

import fakeredis
import pytest

from tests.unit_parts import KEYS, CountingRedis
from worker.agents import load_plugins
from worker.gateway.breaker import BreakerPolicy
from worker.gateway.calls import REPLY_TTL_S, FleetControls, ToolAttempt, is_failure, is_final, stats_field
from worker.gateway.reply import Replier, Reply
from worker.run.keeper import RunKeeper
from worker.run.lease import Leases
from worker.run.loop import LoopDeps, execute_run
from worker.run.store import STOPPED, SUCCEEDED, Budgets, RunStore, public_view
from worker.settings import Settings
from worker.tools import ToolContext, execute, get_tool

SETTINGS = Settings(tools={"allowlist": ["echo"]})
load_plugins([])  # the built-in agents, as a worker loads them


class ReplyingDispatcher:
    """A tool worker in-process: runs the tool and pushes its reply with the reply script, on a
    client of its own (the tool worker's), settling the call as a tool worker that ran it does.
    `after_call` runs after each reply (a test flips a switch there)."""

    def __init__(self, r: fakeredis.FakeRedis, after_call: Callable[[str], None] | None = None) -> None:
        self.replier = Replier(r)
        self.after_call = after_call
        self.sent: list[tuple[str, int, str, dict[str, Any]]] = []

    def outgoing(self, sent: ToolAttempt) -> None:
        """None: each attempt is sent with `send`, which runs it here."""
        return None

    def send(self, sent: ToolAttempt) -> None:
        call_id, attempt, tool, args, timeout_s, _owner = astuple(sent)
        self.sent.append((call_id, attempt, tool, args))
        spec = get_tool(tool)
        assert spec is not None
        result = execute(tool, args, ToolContext(call_id=call_id, timeout_s=timeout_s, settings=SETTINGS))
        run_id = call_id.split(":", 1)[0]
        self.replier.send(
            Reply(
                reply_key=KEYS.call_reply(call_id, attempt),
                call_key=KEYS.call(call_id),
                breaker_key=KEYS.breaker(tool),
                stats_key=KEYS.stats_tools(),
                run_key=KEYS.run(run_id),
                timers_key=KEYS.timers(),
                bell_key=KEYS.timers_bell(),
                run_id=run_id,
                envelope=json.dumps(result),
                reply_ttl_s=REPLY_TTL_S,
                attempt=attempt,
                settle=True,
                ok=not is_failure(result),
                breaker=BreakerPolicy(**SETTINGS.tools.breaker.model_dump()),
                final=is_final(spec, attempt, result, SETTINGS),
                call_ttl_s=60,
                stats_field=stats_field(tool, result),
            )
        )
        if self.after_call is not None:
            self.after_call(call_id)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def r(server: fakeredis.FakeServer) -> CountingRedis:
    """The agent worker's client (its round trips counted)."""
    return CountingRedis(server=server, decode_responses=True)


@pytest.fixture
def tool_side(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """The tool worker's client, on the same server."""
    return fakeredis.FakeRedis(server=server, decode_responses=True)


def deps_for(
    r: fakeredis.FakeRedis, lease_r: fakeredis.FakeRedis, dispatcher: ReplyingDispatcher
) -> LoopDeps:
    """The loop's dependencies as a worker builds them, with the test's dispatcher; the lease
    keeper renews on a client of its own, so its thread adds no round trips to `r`'s count."""
    store = RunStore(r, KEYS, SETTINGS.run_ttl_s)
    return LoopDeps(
        r=r,
        keys=KEYS,
        settings=SETTINGS,
        store=store,
        dispatcher=dispatcher,
        controls=FleetControls.build(r, KEYS, SETTINGS.run_ttl_s),
        leases=Leases(r, KEYS),
        keeper=RunKeeper(Leases(lease_r, KEYS)),
    )


def submit(deps: LoopDeps, run_id: str, plan: list[dict[str, Any]]) -> None:
    budgets = Budgets(max_steps=10, max_tool_calls=10, max_seconds=30)
    deps.store.create(
        run_id, tenant="t1", agent="scripted", input={"plan": plan}, budgets=budgets, metadata={}
    )


def test_a_scripted_run_succeeds_with_its_step_log_through_an_in_process_dispatcher(
    r: CountingRedis, tool_side: fakeredis.FakeRedis
) -> None:
    dispatcher = ReplyingDispatcher(tool_side)
    deps = deps_for(r, tool_side, dispatcher)
    plan: list[dict[str, Any]] = [
        {"tool": "echo", "args": {"n": 1}},
        {"tool": "echo", "args": {"n": 2}},
        {"final": "done"},
    ]
    submit(deps, "r1", plan)

    assert execute_run("r1", deps) == SUCCEEDED

    view = public_view(deps.store.load("r1") or {})
    assert (view["status"], view["stop_reason"], view["output"], view["error"]) == (
        "succeeded",
        "finish",
        "done",
        None,
    )
    assert [(call_id, attempt, tool) for call_id, attempt, tool, _ in dispatcher.sent] == [
        ("r1:1:0", 0, "echo"),
        ("r1:2:0", 0, "echo"),
    ]
    steps = deps.store.steps("r1")
    assert [(s["step"], s["action"], s["tool"], s["ok"]) for s in steps] == [
        (1, "tool", "echo", True),
        (2, "tool", "echo", True),
    ]
    assert all(s["decision"]["decision"] == "allowed" and s["duration_ms"] >= 0 for s in steps)
    raw = deps.store.load("r1") or {}
    assert (raw["cursor"], raw["steps"], raw["tool_calls"]) == ("2", "3", "2")  # the final step counts
    # the tool worker's side settled each call: recorded once, counted once
    assert json.loads(r.hget(KEYS.call("r1:2:0"), "result") or "null") == {"ok": True, "result": {"n": 2}}
    assert r.hget(KEYS.stats_tools(), "calls|echo|ok") == "2"
    assert r.get(KEYS.run_lease("r1")) is None  # the run's end released the lease


def test_a_tool_step_costs_four_round_trips_and_the_checkpoint_reads_the_next_check(
    r: CountingRedis, tool_side: fakeredis.FakeRedis
) -> None:
    """Begin the step, admit the call, take the reply, checkpoint (which reads the switches the
    next step's check needs): a step adds no round trip of its own beyond these."""
    deps = deps_for(r, tool_side, ReplyingDispatcher(tool_side))
    submit(deps, "warm", [{"tool": "echo"}])
    assert execute_run("warm", deps) == SUCCEEDED  # loads the scripts once
    trips: dict[int, int] = {}
    for steps in (1, 3):
        run_id = f"r{steps}"
        submit(deps, run_id, [{"tool": "echo", "args": {"i": i}} for i in range(steps)])
        r.round_trips = 0
        assert execute_run(run_id, deps) == SUCCEEDED
        trips[steps] = r.round_trips
    assert (trips[3] - trips[1]) / 2 == 4


def test_a_switch_flipped_during_a_step_stops_the_run_at_the_next_steps_check(
    r: CountingRedis, tool_side: fakeredis.FakeRedis
) -> None:
    def pause_the_agent(call_id: str) -> None:
        tool_side.set(KEYS.kill_agent("scripted"), "agent paused")

    dispatcher = ReplyingDispatcher(tool_side, after_call=pause_the_agent)
    deps = deps_for(r, tool_side, dispatcher)
    submit(deps, "r1", [{"tool": "echo"}, {"tool": "echo"}])

    assert execute_run("r1", deps) == STOPPED

    view = public_view(deps.store.load("r1") or {})
    assert (view["stop_reason"], view["error"]) == ("killed", {"type": "killed", "message": "agent paused"})
    assert len(dispatcher.sent) == 1 and len(deps.store.steps("r1")) == 1
