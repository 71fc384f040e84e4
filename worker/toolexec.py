"""How a tool worker executes one attempt of a call: bulkhead, exactly-once writes, the tool.

- A call whose run has ended (stopped, cancelled) while it waited in the queue is not made.
- Bulkhead: at most `tools.max_concurrency.<tool>` calls of one tool run at once in a worker
  process, so a hanging tool cannot take every thread; a call over it is `rate_limited` at once.
- Writes: the first attempt claims the call in Redis before it runs; its result is recorded.
  A later attempt (a retry, a redelivery, a resumed run) gets the recorded result. If the claim
  is taken but no result exists (the earlier attempt hangs or its worker died), an idempotent
  write (one that sends the call id as its idempotency key) runs again, safely; any other write
  is not run again and answers `tool_error`.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import redis

from worker import tools
from worker.keys import Keys
from worker.logs import cap_bytes
from worker.runs import TERMINAL
from worker.settings import Settings
from worker.tools.base import ToolContext, error_result, is_retryable

EXEC_TTL_S = 2 * 86400

_CLAIM = """
local done = redis.call('HGET', KEYS[1], 'result')
if done then return {'done', done} end
if redis.call('HSETNX', KEYS[1], 'claimed_by', ARGV[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {'run', ''}
end
return {'claimed', redis.call('HGET', KEYS[1], 'claimed_by')}
"""


class ToolExecutor:
    """Executes call attempts in one tool-worker process."""

    def __init__(self, r: redis.Redis, keys: Keys, settings: Settings) -> None:
        self.r = r
        self.keys = keys
        self.settings = settings
        self._claim = r.register_script(_CLAIM)
        self._bulkheads: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def _bulkhead(self, tool: str) -> threading.BoundedSemaphore:
        with self._lock:
            if tool not in self._bulkheads:
                self._bulkheads[tool] = threading.BoundedSemaphore(self.settings.tools.concurrency(tool))
            return self._bulkheads[tool]

    def run(self, call_id: str, attempt: int, tool: str, args: Any, timeout_s: float) -> dict[str, Any]:
        """The envelope of one attempt, at most tools.max_result_bytes of JSON; never raises for a
        tool's failure."""
        envelope = self._bulkheaded(call_id, attempt, tool, args, timeout_s)
        limit = self.settings.tools.max_result_bytes
        if envelope.get("ok") and len(json.dumps(envelope["result"])) > limit:
            return {"ok": True, "result": cap_bytes(envelope["result"], limit), "truncated": True}
        return envelope

    def _bulkheaded(
        self, call_id: str, attempt: int, tool: str, args: Any, timeout_s: float
    ) -> dict[str, Any]:
        bulkhead = self._bulkhead(tool)
        if not bulkhead.acquire(blocking=False):
            limit = self.settings.tools.concurrency(tool)
            return error_result(
                "rate_limited", f"tool {tool!r} is busy: {limit} calls in flight on this worker"
            )
        try:
            return self._run(call_id, attempt, tool, args, timeout_s)
        finally:
            bulkhead.release()

    def _run(self, call_id: str, attempt: int, tool: str, args: Any, timeout_s: float) -> dict[str, Any]:
        run_id = call_id.split(":", 1)[0]
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(self.keys.run(run_id), "status")
        pipe.hmget(self.keys.call(call_id), ["attempt", "result"])
        status, (current, final) = pipe.execute()
        if status in TERMINAL:
            # The run was stopped, cancelled or ended while this call waited in the queue: a call
            # nobody waits for is not made (a killed run's writes must not fire later).
            return error_result("killed", "the run ended before this call was made")
        if final is not None:
            return dict(json.loads(final))  # the call is over; this attempt is a late redelivery
        if current is not None and int(current) > attempt:
            return error_result(
                "timeout", f"attempt {attempt} is stale: the run moved on to attempt {current}"
            )
        spec = tools.get_tool(tool)
        ctx = ToolContext(call_id=call_id, timeout_s=timeout_s, settings=self.settings)
        if spec is None or not spec.writes:
            return tools.execute(tool, args, ctx)
        exec_key = self.keys.call_exec(call_id)
        state, detail = self._claim(keys=[exec_key], args=[f"attempt {attempt}", EXEC_TTL_S])
        if state == "done":
            return dict(json.loads(detail))
        if state == "claimed" and not spec.idempotent:
            return error_result(
                "tool_error",
                f"an earlier attempt ({detail}) of this write may have run; it is not run twice",
            )
        result = tools.execute(tool, args, ctx)
        if not (spec.idempotent and is_retryable(result)):
            # A retryable failure of an idempotent write stays open: its retry is sent again,
            # with the same idempotency key. Anything else is this write's one outcome.
            self.r.hset(exec_key, "result", json.dumps(result))
        return result
