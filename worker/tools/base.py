"""What every tool shares: its declaration, its context, its failures and the result envelope."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from worker.settings import Settings

ErrorType = Literal[
    "denied", "killed", "rate_limited", "circuit_open", "timeout", "http_error", "invalid_args", "tool_error"
]
ERROR_MESSAGE_MAX = 500  # characters of an error message kept in a result


class ToolFailure(Exception):
    """A tool call that failed in a way the agent should see; `type` is one of ErrorType."""

    def __init__(
        self,
        type: ErrorType,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.type: ErrorType = type
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s

    def envelope(self) -> dict[str, Any]:
        return error_result(self.type, self.message, status=self.status, retry_after_s=self.retry_after_s)


@dataclass(frozen=True)
class ToolContext:
    """What a tool knows about its call: its deterministic id, its time and the fleet's settings."""

    call_id: str
    timeout_s: float
    settings: Settings


# `def fn(args, ctx) -> result` or `async def fn(args, ctx) -> result`
ToolFn = Callable[[Any, ToolContext], Any]


@dataclass(frozen=True)
class Tool:
    """A declared tool: its name, whether it writes, its argument model and its function."""

    name: str
    fn: ToolFn
    args_model: type[BaseModel]
    writes: bool = False
    # A write that sends the call's key (ctx.call_id) as an idempotency key may be retried and
    # re-sent after a crash: the server sees one effect. Other writes are never executed twice.
    idempotent: bool = False
    timeout_ms: int | None = None
    rate_limit: str | None = None  # "20/s", "600/m", "5000/h"; config tools.rate_limits wins
    cost_usd: float = 0.0  # per call, counted against max_spend_usd_per_day and the run's max_cost_usd
    description: str = ""


def ok_result(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error_result(
    type: ErrorType, message: str, *, status: int | None = None, retry_after_s: float | None = None
) -> dict[str, Any]:
    """The envelope of a failed call; `status` and `retry_after_s` only when known."""
    error: dict[str, Any] = {"type": type, "message": message[:ERROR_MESSAGE_MAX]}
    if status is not None:
        error["status"] = status
    if retry_after_s is not None:
        error["retry_after_s"] = retry_after_s
    return {"ok": False, "error": error}


def is_retryable(result: dict[str, Any]) -> bool:
    """Timeouts, connection failures (http_error without status), 5xx, 429, and a tool worker
    that was busy (rate_limited from its bulkhead) are worth another attempt."""
    if result.get("ok"):
        return False
    error = result.get("error") or {}
    if error.get("type") in ("timeout", "rate_limited"):
        return True
    if error.get("type") == "http_error":
        status = error.get("status")
        return status is None or status == 429 or status >= 500
    return False
