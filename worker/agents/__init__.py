"""The agent registry: `@register_agent("name")` on an Agent subclass; plugins register on import."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import TypeVar

from worker.agents.base import Action, Agent, CallModel, CallTool, Fail, Finish, RunState, Sleep

_REGISTRY: dict[str, type[Agent]] = {}
_BUILTINS = ("worker.agents.scripted", "worker.agents.llm")
A = TypeVar("A", bound=type[Agent])


def register_agent(name: str) -> Callable[[A], A]:
    """Register an Agent subclass under `name`."""

    def register(cls: A) -> A:
        if not (isinstance(cls, type) and issubclass(cls, Agent)):
            raise TypeError(f"agent {name!r} must subclass worker.agents.Agent")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"agent {name!r} is registered twice")
        _REGISTRY[name] = cls
        return cls

    return register


def load_plugins(modules: Iterable[str]) -> None:
    """Import the built-in agents and the modules named in config (`plugins`)."""
    for module in (*_BUILTINS, *modules):
        importlib.import_module(module)


def get_agent_class(name: str) -> type[Agent] | None:
    return _REGISTRY.get(name)


def agent_names() -> list[str]:
    return sorted(_REGISTRY)


__all__ = [
    "Action",
    "Agent",
    "CallModel",
    "CallTool",
    "Fail",
    "Finish",
    "RunState",
    "Sleep",
    "agent_names",
    "get_agent_class",
    "load_plugins",
    "register_agent",
]
