"""How a tool worker executes one attempt of a call: bulkhead, exactly-once writes, the tool.

- Right before a tool executes (two round trips): a call whose run does not exist is refused
  (`denied`, logged); one whose run has ended (stopped, cancelled) while it waited in the queue,
  or whose run-level or tool switch is on (killswitch.py: the same keys and rule as every other
  path), answers `killed` and sends nothing, nor is an attempt the run has moved on from made.
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
import time
from typing import Any

import redis
import structlog

from worker import killswitch, tools
from worker.admit import Replier
from worker.breaker import BreakerPolicy
from worker.budget import CALL_RECORD_TTL_S
from worker.gateway import REPLY_TTL_S, is_failure, is_final, stats_field
from worker.keys import Keys
from worker.logs import cap_bytes
from worker.runs import TERMINAL
from worker.settings import Settings
from worker.tools.base import ToolContext, error_result, is_retryable

EXEC_TTL_S = 2 * 86400
log = structlog.get_logger("agentfleet.tools")

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
        self._reply = Replier(r)
        self._breaker = BreakerPolicy(**settings.tools.breaker.model_dump())
        self._bulkheads: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def _bulkhead(self, tool: str) -> threading.BoundedSemaphore:
        with self._lock:
            if tool not in self._bulkheads:
                self._bulkheads[tool] = threading.BoundedSemaphore(self.settings.tools.concurrency(tool))
            return self._bulkheads[tool]

    def answer(
        self,
        call_id: str,
        attempt: int,
        tool: str,
        args: Any,
        timeout_s: float,
        trace_id: str | None = None,
    ) -> None:
        """Execute one attempt and push its reply for the waiting run. When the tool ran, the same
        script reports the outcome to the breaker and records a final result (the run's side
        would otherwise do it after the reply), so the run moves on as soon as it has the reply."""
        started = time.monotonic()
        result, ran = self.execute(call_id, attempt, tool, args, timeout_s)
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        spec = tools.get_tool(tool)
        settled, before, after = self._reply(
            reply_key=self.keys.call_reply(call_id, attempt),
            call_key=self.keys.call(call_id),
            breaker_key=self.keys.breaker(tool),
            stats_key=self.keys.stats_tools(),
            run_key=self.keys.run(call_id.split(":", 1)[0]),
            timers_key=self.keys.timers(),
            bell_key=self.keys.timers_bell(),
            run_id=call_id.split(":", 1)[0],
            envelope=json.dumps(result),
            reply_ttl_s=REPLY_TTL_S,
            attempt=attempt,
            # a model call's breaker and record belong to its model (`llm:<model>`): the run's side
            settle=ran and spec is not None and tool != tools.MODEL_TOOL,
            ok=not is_failure(result),
            breaker=self._breaker,
            final=spec is not None and is_final(spec, attempt, result, self.settings),
            call_ttl_s=CALL_RECORD_TTL_S,
            stats_field=stats_field(tool, result),
        )
        # after the reply: the run does not wait for this line
        outcome = "ok" if result.get("ok") else (result.get("error") or {}).get("type", "tool_error")
        log.info(
            "tool executed" if ran else "tool not run",
            run_id=call_id.split(":", 1)[0],
            trace_id=trace_id,
            tool=tool,
            attempt=attempt,
            outcome=outcome,
            duration_ms=duration_ms,
        )
        if settled and after != before:
            log.warning("breaker change", tool=tool, outcome=after, previous=before)

    def execute(
        self,
        call_id: str,
        attempt: int,
        tool: str,
        args: Any,
        timeout_s: float,
    ) -> tuple[dict[str, Any], bool]:
        """The envelope of one attempt, at most tools.max_result_bytes of JSON (never raises for a
        tool's failure), and whether the tool ran (False: the attempt was refused, stale, or
        answered from a record, and the dependency was not asked)."""
        envelope, ran = self._bulkheaded(call_id, attempt, tool, args, timeout_s)
        limit = self.settings.tools.max_result_bytes
        if envelope.get("ok") and len(json.dumps(envelope["result"])) > limit:
            envelope = {"ok": True, "result": cap_bytes(envelope["result"], limit), "truncated": True}
        return envelope, ran

    def _bulkheaded(
        self, call_id: str, attempt: int, tool: str, args: Any, timeout_s: float
    ) -> tuple[dict[str, Any], bool]:
        bulkhead = self._bulkhead(tool)
        if not bulkhead.acquire(blocking=False):
            limit = self.settings.tools.concurrency(tool)
            busy = f"tool {tool!r} is busy: {limit} calls in flight on this worker"
            return error_result("rate_limited", busy), False
        try:
            return self._run(call_id, attempt, tool, args, timeout_s)
        finally:
            bulkhead.release()

    def _run(
        self, call_id: str, attempt: int, tool: str, args: Any, timeout_s: float
    ) -> tuple[dict[str, Any], bool]:
        """The attempt's envelope, and whether the tool ran for it."""
        spec = tools.get_tool(tool)
        ctx = ToolContext(call_id=call_id, timeout_s=timeout_s, settings=self.settings)
        run_id = call_id.split(":", 1)[0]
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(self.keys.run(run_id), ["status", "tenant", "agent"])
        pipe.hmget(self.keys.call(call_id), ["attempt", "result"])
        (status, tenant, agent), (current, final) = pipe.execute()
        if status is None or tenant is None or agent is None:
            # No run sent this (a forged or stray message, or a run long expired): nothing runs.
            log.warning("tool call refused: no such run", run_id=run_id, tool=tool, attempt=attempt)
            return error_result("denied", "the call's run does not exist"), False
        if status in TERMINAL:
            # The run was stopped, cancelled or ended while this call waited in the queue: a call
            # nobody waits for is not made (a killed run's writes must not fire later).
            return error_result("killed", "the run ended before this call was made"), False
        reason = self._kill_reason(str(tenant), str(agent), tool, spec, args)
        if reason is not None:  # flipped while the call was queued: nothing leaves the fleet
            return error_result("killed", reason), False
        if final is not None:
            return dict(json.loads(final)), False  # the call is over; this is a late redelivery
        if current is not None and int(current) > attempt:
            stale = f"attempt {attempt} is stale: the run moved on to attempt {current}"
            return error_result("timeout", stale), False
        if spec is None or not spec.writes:
            return tools.execute(tool, args, ctx), spec is not None
        exec_key = self.keys.call_exec(call_id)
        state, detail = self._claim(keys=[exec_key], args=[f"attempt {attempt}", EXEC_TTL_S])
        if state == "done":
            return dict(json.loads(detail)), False
        if state == "claimed" and not spec.idempotent:
            refused = f"an earlier attempt ({detail}) of this write may have run; it is not run twice"
            return error_result("tool_error", refused), False
        result = tools.execute(tool, args, ctx)
        if not (spec.idempotent and is_retryable(result)):
            # A retryable failure of an idempotent write stays open: its retry is sent again,
            # with the same idempotency key. Anything else is this write's one outcome.
            self.r.hset(exec_key, "result", json.dumps(result))
        return result, True

    def _kill_reason(
        self, tenant: str, agent: str, tool: str, spec: tools.Tool | None, args: Any
    ) -> str | None:
        """The reason of the first run-level or tool switch that refuses this call, in one MGET."""
        model = args.get("model") if tool == tools.MODEL_TOOL and isinstance(args, dict) else None
        switches = [
            *killswitch.run_switch_keys(self.keys, tenant, agent),
            *killswitch.tool_switch_keys(
                self.keys,
                tool,
                writes=spec is not None and spec.writes,
                model=model if isinstance(model, str) else None,
            ),
        ]
        return killswitch.kill_reason(self.r, switches)
