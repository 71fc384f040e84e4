"""The `llm` agent: an OpenAI-compatible chat model with tool calling (OpenAI, vLLM, Ollama,
a LiteLLM proxy). Input `{"prompt", "system"?}`; output: the model's final message.

Each step is one action: ask the model (CallModel, its worst case reserved from the run's token
and cost budgets by the loop), or run one tool call the model asked for. The conversation lives
in `state.memory`, checkpointed after every step, so a resumed run continues where it was and a
model answer already recorded is replayed, not asked again. A malformed answer (no choice,
arguments that are not a JSON object, an unknown tool) goes back to the model as an error it can
recover from, up to `max_invalid_answers`; then the run fails with `model_output_invalid`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.agents import register_agent
from worker.agents.base import Action, Agent, CallModel, CallTool, Fail, Finish, RunState
from worker.agents.llmconfig import config_from

TOOL_RESULT_MAX_CHARS = 16_000  # of one tool result, as the model sees it


class LlmInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=200_000)
    system: str | None = Field(None, max_length=200_000)


def function_name(tool: str) -> str:
    """Tool names as the chat API allows them (`^[A-Za-z0-9_-]+$`): `http.get` -> `http__get`."""
    return tool.replace(".", "__")


@register_agent("llm")
class LlmAgent(Agent):
    input_model = LlmInput

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.llm = config_from(config)

    def next_action(self, state: RunState) -> Action:
        memory = state.memory
        if "messages" not in memory:
            task = LlmInput.model_validate(state.input)
            memory["messages"] = [{"role": "system", "content": task.system}] if task.system else []
            memory["messages"].append({"role": "user", "content": task.prompt})
            memory.update(pending=[], invalid=0)
            return self._ask(state)
        if memory.get("awaiting") == "tool":
            call = memory.pop("current")
            content = json.dumps(state.last_result)[:TOOL_RESULT_MAX_CHARS]
            memory["messages"].append({"role": "tool", "tool_call_id": call["id"], "content": content})
            return self._next(state)
        return self._read_answer(state)

    def _ask(self, state: RunState) -> Action:
        state.memory["awaiting"] = "model"
        tools = [
            {
                "type": "function",
                "function": {
                    "name": function_name(t["name"]),
                    "description": t["description"],
                    "parameters": t["parameters"],
                },
            }
            for t in state.tools
        ]
        return CallModel(
            model=self.llm.model,
            messages=state.memory["messages"],
            max_tokens=self.llm.max_tokens_per_call,
            prices=self.llm.prices(self.llm.model),
            tools=tools or None,
            temperature=self.llm.temperature,
        )

    def _next(self, state: RunState) -> Action:
        pending = state.memory["pending"]
        if not pending:
            return self._ask(state)
        call = pending.pop(0)
        state.memory.update(awaiting="tool", current=call)
        return CallTool(call["tool"], call["args"])

    def _read_answer(self, state: RunState) -> Action:
        result = state.last_result or {}
        if not result.get("ok"):
            error = result.get("error") or {}
            return Fail(f"model call failed: {error.get('type')}: {error.get('message')}", type="model_error")
        message = (result.get("result") or {}).get("message")
        if not isinstance(message, dict):
            return self._invalid(state, "the model's answer had no message")
        tool_calls = message.get("tool_calls") or []
        if not tool_calls:
            content = message.get("content")
            if not isinstance(content, str):
                return self._invalid(state, "the model's answer had neither content nor tool calls")
            return Finish(content)
        state.memory["messages"].append(
            {"role": "assistant", "content": message.get("content"), "tool_calls": tool_calls}
        )
        calls, problems = self._parse_calls(state, tool_calls)
        if problems:
            for call_id, problem in problems:
                reply = {"ok": False, "error": {"type": "invalid_args", "message": problem}}
                state.memory["messages"].append(
                    {"role": "tool", "tool_call_id": call_id, "content": json.dumps(reply)}
                )
            return self._invalid(state, "; ".join(p for _, p in problems), appended=True)
        state.memory["pending"] = calls
        return self._next(state)

    def _parse_calls(
        self, state: RunState, tool_calls: list[Any]
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        by_name = {function_name(t["name"]): t["name"] for t in state.tools}
        calls, problems = [], []
        for position, raw in enumerate(tool_calls):
            call_id = (
                str(raw.get("id") or f"call_{position}") if isinstance(raw, dict) else f"call_{position}"
            )
            function = raw.get("function") if isinstance(raw, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if name not in by_name:
                problems.append((call_id, f"unknown tool {name!r}; available: {', '.join(sorted(by_name))}"))
                continue
            try:
                args = json.loads(function.get("arguments") or "{}")  # type: ignore[union-attr]
            except (TypeError, ValueError):
                problems.append((call_id, f"arguments of {name} are not valid JSON"))
                continue
            if not isinstance(args, dict):
                problems.append((call_id, f"arguments of {name} must be a JSON object"))
                continue
            calls.append({"id": call_id, "tool": by_name[name], "args": args})
        if problems:  # answer every call of the message, so the conversation stays well-formed
            problems += [(c["id"], "not run: another call in the same answer was invalid") for c in calls]
        return calls, problems

    def _invalid(self, state: RunState, problem: str, appended: bool = False) -> Action:
        state.memory["invalid"] = state.memory.get("invalid", 0) + 1
        if state.memory["invalid"] > self.llm.max_invalid_answers:
            return Fail(f"the model kept answering malformed output: {problem}", type="model_output_invalid")
        if not appended:
            state.memory["messages"].append(
                {
                    "role": "user",
                    "content": f"Your last answer could not be used ({problem}). Please answer again.",
                }
            )
        return self._ask(state)
