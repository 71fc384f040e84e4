"""Parts the unit tests share, on fakeredis: the default keys and budgets, a queued or a parked
run, a tool gateway wired to an in-process dispatcher, and a client that counts round trips."""

from __future__ import annotations

import json
import time
from dataclasses import astuple
from typing import Any

import fakeredis

from worker.gateway.calls import FleetControls, ToolAttempt, ToolGateway
from worker.keys import Keys
from worker.run.budget import ToolCallBudget
from worker.run.guard import RunGuard
from worker.run.store import Budgets, RunStore
from worker.run.timers import Timers
from worker.settings import Settings
from worker.tools import ToolContext, execute

KEYS = Keys("fleet")
BUDGETS = Budgets(max_steps=5, max_tool_calls=2, max_seconds=30)


def new_run(store: RunStore, run_id: str = "r1") -> None:
    store.create(run_id, tenant="t1", agent="scripted", input={"plan": []}, budgets=BUDGETS, metadata={})


class InlineDispatcher:
    """Runs the tool in-process and pushes its reply, as a tool worker would; records calls."""

    def __init__(
        self, r: fakeredis.FakeRedis, settings: Settings, replies: list[dict[str, Any]] | None = None
    ):
        self.r, self.settings, self.replies = r, settings, replies
        self.sent: list[tuple[str, int, str]] = []

    def outgoing(self, sent: ToolAttempt) -> None:
        """None: each attempt is sent with `send`, which runs it here."""
        return None

    def send(self, sent: ToolAttempt) -> None:
        call_id, attempt, tool, args, timeout_s, _owner = astuple(sent)
        self.sent.append((call_id, attempt, tool))
        if self.replies is not None:
            result = self.replies.pop(0)
        else:
            result = execute(
                tool, args, ToolContext(call_id=call_id, timeout_s=timeout_s, settings=self.settings)
            )
        self.r.rpush(KEYS.call_reply(call_id, attempt), json.dumps(result))


def gateway(
    r: fakeredis.FakeRedis,
    store: RunStore,
    settings: Settings,
    dispatcher: InlineDispatcher,
    deadline_s: float = 30,
) -> ToolGateway:
    new_run(store)
    guard = RunGuard(
        r, KEYS, run_id="r1", tenant="t1", agent="scripted", deadline_ts=time.time() + deadline_s
    )
    budget = ToolCallBudget(r, KEYS, "r1", max_tool_calls=5, ttl_s=60)
    return ToolGateway(
        r,
        KEYS,
        settings,
        guard=guard,
        budget=budget,
        dispatcher=dispatcher,
        controls=FleetControls.build(r, KEYS),
        tenant="t1",
        agent="scripted",
    )


class CountingRedis(fakeredis.FakeRedis):
    """Counts round trips: each command sent alone, and each pipeline."""

    round_trips = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.round_trips += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        self.round_trips += 1  # its queued commands go out together, in one round trip
        return super().pipeline(transaction, shard_hint)


def parked_run(
    store: RunStore,
    timers: Timers,
    run_id: str = "r1",
    *,
    tenant: str = "t1",
    agent: str = "scripted",
    wake_ts: float | None = None,
    reply_key: str = "",
) -> str:
    """A started run, parked; returns the park's number."""
    store.create(run_id, tenant=tenant, agent=agent, input={"plan": []}, budgets=BUDGETS, metadata={})
    store.start(run_id, f"host:1:{run_id}")
    outcome, park = timers.park(
        run_id,
        f"host:1:{run_id}",
        tenant=tenant,
        agent=agent,
        wake_ts=time.time() + 60 if wake_ts is None else wake_ts,
        wait=json.dumps({"kind": "sleep", "at": "sleep", "until_ts": 0}),
        pending=json.dumps({"type": "sleep", "seconds": 60, "step": 1, "started_ts": time.time()}),
        memory=json.dumps({"k": 1}),
        reply_key=reply_key,
    )
    assert outcome == "parked"
    return park
