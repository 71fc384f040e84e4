"""The run's tool-call budget, counted in Redis once per call, however often the call is retried
or its step is resumed."""

from __future__ import annotations

import json
from typing import Any

import redis

from worker.guard import BudgetExceeded
from worker.keys import Keys

_RESERVE = """
local used = tonumber(redis.call('HGET', KEYS[1], 'tool_calls') or '0')
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {1, used, redis.call('HGET', KEYS[2], 'result')}
end
if used >= tonumber(ARGV[1]) then return {0, used, false} end
used = redis.call('HINCRBY', KEYS[1], 'tool_calls', 1)
redis.call('HSET', KEYS[2], 'state', 'started')
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {1, used, false}
"""


class ToolCallBudget:
    """Reserves tool calls against `max_tool_calls` of one run."""

    def __init__(
        self, r: redis.Redis, keys: Keys, run_id: str, max_tool_calls: int, ttl_s: int, used: int = 0
    ) -> None:
        self.r = r
        self.used = used  # tool calls counted so far, as of the last reservation
        self.keys = keys
        self.run_key = keys.run(run_id)
        self.max_tool_calls = max_tool_calls
        self.ttl_s = ttl_s
        self._reserve = r.register_script(_RESERVE)

    def reserve(self, call_id: str) -> Any | None:
        """Count the call once; return its recorded result when an earlier attempt finished it.

        Raises BudgetExceeded('max_tool_calls') when the call would exceed the budget, so the
        call is never made.
        """
        counted, self.used, recorded = self._reserve(
            keys=[self.run_key, self.keys.call(call_id)], args=[self.max_tool_calls, self.ttl_s]
        )
        if not counted:
            raise BudgetExceeded("max_tool_calls", f"max_tool_calls={self.max_tool_calls} reached")
        return json.loads(recorded) if recorded else None

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
