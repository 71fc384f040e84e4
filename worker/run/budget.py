"""The run's tool-call budget, counted in Redis once per call, however often the call is retried
or its step is resumed."""

from __future__ import annotations

import json
from typing import Any

import redis

from worker import lua
from worker.keys import Keys

# budget_reserve(run_key, call_key, max_tool_calls, ttl_s) -> counted (0/1), used, recorded result
# or false. A Lua function, so the gateway's admission script (worker/gateway/checks.py) runs the same code.
LUA_RESERVE = lua.load("worker/run/budget_reserve.lua")

CALL_RECORD_TTL_S = 86400  # a call's recorded result, kept for a resumed run or a late redelivery


class ToolCallBudget:
    """One run's tool-call budget and its calls' records. Tool calls are counted against
    `max_tool_calls` by the gateway's admission script (worker/gateway/checks.py), with LUA_RESERVE."""

    def __init__(
        self, r: redis.Redis, keys: Keys, run_id: str, max_tool_calls: int, ttl_s: int, used: int = 0
    ) -> None:
        self.r = r
        self.used = used  # tool calls counted so far, as of the last admission
        self.keys = keys
        self.run_key = keys.run(run_id)
        self.max_tool_calls = max_tool_calls
        self.ttl_s = ttl_s

    def recorded(self, call_id: str) -> dict[str, Any] | None:
        """The recorded result of a call that is not counted as a tool call (a model call)."""
        raw = self.r.hget(self.keys.call(call_id), "result")
        return dict(json.loads(raw)) if raw else None

    def record(self, call_id: str, result: dict[str, Any]) -> None:
        """Keep a call's final result, so a resumed run replays it instead of calling again."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.call(call_id), mapping={"state": "done", "result": json.dumps(result)})
        pipe.expire(self.keys.call(call_id), self.ttl_s)
        pipe.execute()
