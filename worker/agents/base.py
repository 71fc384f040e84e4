"""The agent interface: one method from the run's state to its next action.

The loop owns everything else (budgets, kill switches, tool calls, checkpoints). An agent keeps
what it must remember between steps in `state.memory`, which is checkpointed after every step,
so a resumed run continues where it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel


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
class Finish:
    """End the run as succeeded with `output`."""

    output: Any


@dataclass(frozen=True)
class Fail:
    """End the run as failed with `message`."""

    message: str


Action = CallTool | Sleep | Finish | Fail


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


class Agent:
    """Base class of agents. Subclass it, set `input_model`, implement `next_action`."""

    #: pydantic model of the run's `input`; the API answers 422 for input that does not fit.
    input_model: ClassVar[type[BaseModel] | None] = None

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def finished(self, state: RunState) -> Finish | None:
        """A Finish when the agent is done without taking another step (checked before budgets)."""
        return None

    def next_action(self, state: RunState) -> Action:
        raise NotImplementedError
