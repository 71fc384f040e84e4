"""The `scripted` agent: runs a fixed plan, for demos, tests and load (CONTRACT.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.agents import register_agent
from worker.agents.base import Action, Agent, CallTool, Fail, Finish, RunState, Sleep


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolStep(_Step):
    tool: str = Field(min_length=1, max_length=200)
    args: dict[str, Any] = Field(default_factory=dict)


class SleepStep(_Step):
    sleep: float = Field(ge=0, le=86400)


class FinalStep(_Step):
    final: str


class FailStep(_Step):
    fail: str


class ScriptedInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: list[ToolStep | SleepStep | FinalStep | FailStep] = Field(max_length=10_000)
    loop: bool = False

    @model_validator(mode="after")
    def _loop_needs_steps(self) -> ScriptedInput:
        if self.loop and not self.plan:
            raise ValueError("a looping plan needs at least one step")
        return self


@register_agent("scripted")
class ScriptedAgent(Agent):
    """Step n of the run is plan[n-1] (modulo the plan's length when it loops)."""

    input_model = ScriptedInput
    reads_tools = False  # a plan names its tools itself

    def _plan(self, state: RunState) -> ScriptedInput:
        return ScriptedInput.model_validate(state.input)

    def finished(self, state: RunState) -> Finish | None:
        plan = self._plan(state)
        if not plan.loop and state.step > len(plan.plan):
            return Finish("")
        return None

    def next_action(self, state: RunState) -> Action:
        plan = self._plan(state)
        step = plan.plan[(state.step - 1) % len(plan.plan)]
        if isinstance(step, ToolStep):
            return CallTool(step.tool, step.args)
        if isinstance(step, SleepStep):
            return Sleep(step.sleep)
        if isinstance(step, FinalStep):
            return Finish(step.final)
        return Fail(step.fail)
