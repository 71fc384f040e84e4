"""The tool gateway, on the agent's side: every tool call of a run passes here, in this order:

1. kill switches (`kill:tool:<tool>`, and `kill:writes` for a tool that writes) -> `killed`
2. allowlist (deny by default) -> `denied`; unknown tool -> `denied`
3. argument schema -> `invalid_args`, before any I/O
4. the run's tool-call budget (the call that would exceed is never made), or the recorded result
   of a call that an earlier attempt of this run already finished
5. the call as a Celery subtask on the tool queue, waited for in slices of `SLICE_S` with the
   run's kill switches, cancel flag and deadline checked between slices; a timeout per attempt
6. retries of timeouts, 5xx, 429 and connection failures with the configured backoff and full
   jitter, honouring `Retry-After`, never past the run's deadline; retries count as one call.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Protocol

import redis

from worker import killswitch
from worker.budget import ToolCallBudget
from worker.guard import SLICE_S, RunGuard
from worker.keys import Keys
from worker.settings import Settings
from worker.tools import ToolFailure, get_tool, validate_args
from worker.tools.base import error_result

REPLY_GRACE_S = 1.0  # wait this long past a call's timeout for the tool worker's own answer
REPLY_TTL_S = 300


class Dispatcher(Protocol):
    """Sends one attempt of a tool call to a tool worker."""

    def send(
        self, *, call_id: str, attempt: int, tool: str, args: dict[str, Any], timeout_s: float
    ) -> None: ...


def is_retryable(result: dict[str, Any]) -> bool:
    """Timeouts, connection failures (http_error without status), 5xx and 429 are retried."""
    if result.get("ok"):
        return False
    error = result.get("error") or {}
    if error.get("type") == "timeout":
        return True
    if error.get("type") == "http_error":
        status = error.get("status")
        return status is None or status == 429 or status >= 500
    return False


class ToolGateway:
    """Makes the tool calls of one run."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        settings: Settings,
        *,
        guard: RunGuard,
        budget: ToolCallBudget,
        dispatcher: Dispatcher,
    ) -> None:
        self.r = r
        self.keys = keys
        self.settings = settings
        self.guard = guard
        self.budget = budget
        self.dispatcher = dispatcher

    def call(self, call_id: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """One tool call; returns the envelope the agent sees. Raises RunStopped to end the run."""
        spec = get_tool(tool)
        writes = spec.writes if spec is not None else False
        reason = killswitch.first_reason(self.r.mget(killswitch.tool_switch_keys(self.keys, tool, writes)))
        if reason is not None:
            return error_result("killed", reason)
        if tool not in self.settings.tools.allowlist:
            return error_result("denied", f"tool {tool!r} is not on the allowlist")
        if spec is None:
            return error_result("denied", f"unknown tool {tool!r}")
        try:
            validate_args(spec, args)
        except ToolFailure as failure:
            return failure.envelope()

        recorded = self.budget.reserve(call_id)
        if recorded is not None:
            return dict(recorded)
        result = self._with_retries(call_id, tool, args, retry=not writes)
        self.budget.record(call_id, result)
        return result

    def _with_retries(self, call_id: str, tool: str, args: dict[str, Any], *, retry: bool) -> dict[str, Any]:
        policy = self.settings.tools.retries
        timeout_s = self.settings.tools.timeout_s(tool)
        attempt = 0
        while True:
            result = self._attempt(call_id, attempt, tool, args, timeout_s)
            if not retry or attempt >= policy.max or not is_retryable(result):
                return result
            ceiling_ms = policy.backoff_ms[min(attempt, len(policy.backoff_ms) - 1)]
            delay_s = random.uniform(0, ceiling_ms / 1000.0)  # full jitter
            retry_after = (result.get("error") or {}).get("retry_after_s")
            if isinstance(retry_after, int | float):
                delay_s = max(delay_s, float(retry_after))
            if delay_s >= self.guard.remaining_s():
                return result  # the retry could not finish before the deadline
            self.guard.sleep(delay_s)
            attempt += 1

    def _attempt(
        self, call_id: str, attempt: int, tool: str, args: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        """Send one attempt and wait for its reply, checking the run between slices."""
        self.guard.check()
        reply_key = self.keys.call_reply(call_id, attempt)
        self.dispatcher.send(call_id=call_id, attempt=attempt, tool=tool, args=args, timeout_s=timeout_s)
        give_up = time.monotonic() + timeout_s + REPLY_GRACE_S
        while True:
            left = give_up - time.monotonic()
            if left <= 0:
                return error_result("timeout", f"tool {tool!r} did not answer within {timeout_s:g} s")
            wait = min(SLICE_S, left, max(self.guard.remaining_s(), 0.01))
            reply = self.r.blpop([reply_key], timeout=wait)
            if reply is not None:
                self.r.delete(reply_key)
                return dict(json.loads(reply[1]))
            self.guard.check()
