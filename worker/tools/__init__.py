"""The tool registry: declare a tool with `@tool(...)`; built-ins register on import.

A tool is `async def fn(args, ctx)` (it shares the tool worker's event loop: it must not block)
or a plain `def fn(args, ctx)`, which the tool worker runs in a bounded thread pool
(`tools.sync_threads`). Either way the call ends within its timeout: an async tool is cancelled,
a plain one answers `timeout` and its thread finishes on its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from worker.tools.base import Tool, ToolContext, ToolFailure, ToolFn, error_result, ok_result

_REGISTRY: dict[str, Tool] = {}
_BUILTINS = (
    "worker.tools.echo",
    "worker.tools.http_get",
    "worker.tools.http_post",
    "worker.tools.search_read",
    "worker.tools.llm_call",
)
MODEL_TOOL = "llm"  # internal: model calls of the llm agent; never offered to an agent as a tool


def tool(
    name: str,
    *,
    args: type[BaseModel],
    writes: bool = False,
    idempotent: bool = False,
    timeout_ms: int | None = None,
    rate_limit: str | None = None,
    cost_usd: float = 0.0,
    description: str = "",
) -> Callable[[ToolFn], ToolFn]:
    """Register `fn(args, ctx)` as the tool `name`; `args` is the pydantic model of its arguments.

    `writes`: the call changes something outside (refused under `kill:writes`, never run twice);
    `idempotent`: a write that passes `ctx.call_id` on as an idempotency key, so it may be retried;
    `timeout_ms`, `rate_limit` ("20/s"), `cost_usd` per call: defaults that config can override.
    """
    if rate_limit is not None:
        from worker.gateway.ratelimit import parse_rate

        parse_rate(rate_limit)  # a bad declaration fails at import, not at the first call

    def register(fn: ToolFn) -> ToolFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"tool {name!r} is registered twice")
        _REGISTRY[name] = Tool(
            name=name,
            fn=fn,
            args_model=args,
            writes=writes,
            idempotent=idempotent,
            timeout_ms=timeout_ms,
            rate_limit=rate_limit,
            cost_usd=cost_usd,
            description=description,
        )
        return fn

    return register


def load_builtins() -> None:
    for module in _BUILTINS:
        importlib.import_module(module)


def get_tool(name: str) -> Tool | None:
    load_builtins()
    return _REGISTRY.get(name)


def tool_names() -> list[str]:
    load_builtins()
    return sorted(_REGISTRY)


def validate_args(spec: Tool, args: Any) -> BaseModel:
    """Parse a call's arguments, or raise ToolFailure('invalid_args') naming the field."""
    try:
        return spec.args_model.model_validate(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "args"
        raise ToolFailure("invalid_args", f"{where}: {first['msg']}") from None


# An async tool's own deadline (http_client's) answers first; this bound is for a tool that has none.
OVERRUN_SLACK_S = 0.25


async def execute_async(
    name: str, args: Any, ctx: ToolContext, sync_pool: concurrent.futures.Executor | None = None
) -> dict[str, Any]:
    """Run a tool on the running event loop and return its envelope; never raises for a tool's
    failure. A plain tool runs in `sync_pool` (the loop's default executor if None)."""
    spec = get_tool(name)
    if spec is None:
        return error_result("denied", f"unknown tool {name!r}")
    try:
        parsed = validate_args(spec, args)
        if inspect.iscoroutinefunction(spec.fn):
            work = spec.fn(parsed, ctx)
        else:
            work = asyncio.get_running_loop().run_in_executor(sync_pool, spec.fn, parsed, ctx)
        try:
            # asyncio.timeout, not wait_for: the tool runs in this task, with no task of its own
            async with asyncio.timeout(ctx.timeout_s + OVERRUN_SLACK_S):
                return ok_result(await work)
        except TimeoutError:
            # A plain tool's thread cannot be stopped: it runs on and its result is dropped.
            return error_result("timeout", f"{name} did not answer within {ctx.timeout_s:g} s")
    except ToolFailure as failure:
        return failure.envelope()
    except Exception as exc:
        return error_result("tool_error", f"{type(exc).__name__}: {exc}")


def execute(name: str, args: Any, ctx: ToolContext) -> dict[str, Any]:
    """`execute_async` from code without an event loop (tests, scripts): a loop of its own."""
    return asyncio.run(_execute_and_close(name, args, ctx))


async def _execute_and_close(name: str, args: Any, ctx: ToolContext) -> dict[str, Any]:
    from worker.tools.http_client import close_shared_client

    try:
        return await execute_async(name, args, ctx)
    finally:
        await close_shared_client()  # the loop ends here: its HTTP client must not outlive it


__all__ = [
    "Tool",
    "ToolContext",
    "ToolFailure",
    "execute",
    "execute_async",
    "get_tool",
    "tool",
    "tool_names",
    "validate_args",
]
