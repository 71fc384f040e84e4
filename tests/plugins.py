"""Agents and tools that only tests use, registered through the `plugins` setting, as a user's are."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.agents import Action, Agent, RunState, register_agent
from worker.tools import tool
from worker.tools.base import ToolContext


@register_agent("stubborn")
class StubbornAgent(Agent):
    """Blocks forever and swallows every exception, the deadline alarm included."""

    def next_action(self, state: RunState) -> Action:
        while True:
            with contextlib.suppress(BaseException):  # ignoring the deadline is the point
                time.sleep(60)


@register_agent("busy")
class BusyAgent(Agent):
    """Agent code that computes: each step holds its pool child for `input.step_s` seconds (1 by
    default), `input.steps` times (forever without), then finishes. A wait parks a run; this does
    not, so tests of what happens to an executing run (a worker that dies, a queue behind busy
    workers) use it."""

    def next_action(self, state: RunState) -> Action:
        from worker.agents import Finish, Sleep

        config = state.input if isinstance(state.input, dict) else {}
        time.sleep(float(config.get("step_s", 1.0)))
        steps = config.get("steps")
        if steps is not None and state.step >= int(steps):
            return Finish(config.get("output", "done"))
        return Sleep(0)  # a step that waits for nothing: it does not park


@register_agent("suicidal")
class SuicidalAgent(Agent):
    """Kills its own worker process at every step, like a poison run would."""

    def next_action(self, state: RunState) -> Action:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


class SleepArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0, le=600)


@tool("test.sleep", args=SleepArgs, description="Sleeps, then answers; a tool that hangs.")
def sleep_tool(args: SleepArgs, ctx: ToolContext) -> dict[str, Any]:
    time.sleep(args.seconds)
    return {"slept": args.seconds}


@tool("test.asleep", args=SleepArgs, description="An async tool: awaits, then answers.")
async def async_sleep_tool(args: SleepArgs, ctx: ToolContext) -> dict[str, Any]:
    await asyncio.sleep(args.seconds)
    return {"slept": args.seconds, "async": True}


class WriteArgs(BaseModel):
    model_config = ConfigDict(extra="allow")


@tool("test.write", args=WriteArgs, writes=True, description="A tool that writes (returns its args).")
def write_tool(args: WriteArgs, ctx: ToolContext) -> dict[str, Any]:
    return {"written": args.model_dump(), "call_id": ctx.call_id}


@register_agent("versioned")
class VersionedAgent(Agent):
    """Its settings decide: `label` is its output; `fail_percent` of runs fail (by run id)."""

    def next_action(self, state: RunState) -> Action:
        import hashlib

        from worker.agents import Fail, Finish

        bucket = int(hashlib.sha256(f"fail:{state.run_id}".encode()).hexdigest()[:8], 16) % 100
        if bucket < float(self.config.get("fail_percent", 0)):
            return Fail(f"{self.config.get('label')} failed")
        return Finish(str(self.config.get("label", "")))


class BigArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    megabytes: float = Field(gt=0, le=64)
    text: str = ""


@tool("test.big", args=BigArgs, description="Returns a result of that many megabytes (and `text`).")
def big_tool(args: BigArgs, ctx: ToolContext) -> dict[str, Any]:
    return {"text": args.text, "blob": "x" * int(args.megabytes * 1_048_576)}


@register_agent("raiser")
class RaiserAgent(Agent):
    """Raises an exception whose message is its input's `message`."""

    def next_action(self, state: RunState) -> Action:
        raise ValueError(str((state.input or {}).get("message", "boom")))
