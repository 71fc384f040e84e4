"""The agent interface: one method from the run's state to its next action.

The loop owns everything else (budgets, kill switches, tool calls, checkpoints). An agent keeps
what it must remember between steps in `state.memory`, which is checkpointed after every step,
so a resumed run continues where it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from worker.run.spend import Prices


@dataclass(frozen=True)
class CallTool:
    """Call `tool` with `args` through the gateway; the result is `state.last_result` next step."""

    tool: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sleep:
    """Think time: wait `seconds` (the loop keeps checking kill switches and the deadline)."""

    seconds: float


@dataclass(frozen=True)
class CallModel:
    """One chat-completions call through the gateway, its worst case reserved from the run's
    token and cost budgets first; the result is `state.last_result` next step."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    prices: Prices
    tools: list[dict[str, Any]] | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class Finish:
    """End the run as succeeded with `output`."""

    output: Any


@dataclass(frozen=True)
class Fail:
    """End the run as failed with `message`; `type` is the error type the run record shows."""

    message: str
    type: str = "agent_error"


Action = CallTool | CallModel | Sleep | Finish | Fail


@dataclass
class RunState:
    """What an agent sees before each step."""

    run_id: str
    tenant: str
    agent: str
    input: Any
    step: int  # the number of the step about to run, from 1
    tool_calls: int  # tool calls started so far
    last_result: Any  # the previous step's tool result envelope, or None
    memory: dict[str, Any]  # the agent's own state; checkpointed after every step
    remaining_s: float  # seconds left before max_seconds
    # The tools this run may call (fleet allowlist and the agent's policy), as OpenAI tool specs.
    tools: list[dict[str, Any]] = field(default_factory=list)


class Agent:
    """Base class of agents. Subclass it, set `input_model`, implement `next_action`."""

    #: pydantic model of the run's `input`; the API answers 422 for input that does not fit.
    input_model: ClassVar[type[BaseModel] | None] = None
    #: False when the agent never reads `state.tools`: the loop then leaves it empty and saves
    #: the policy read it costs (one Redis round trip per run).
    reads_tools: ClassVar[bool] = True

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def finished(self, state: RunState) -> Finish | None:
        """A Finish when the agent is done without taking another step (checked before budgets)."""
        return None

    def next_action(self, state: RunState) -> Action:
        raise NotImplementedError
