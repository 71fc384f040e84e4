"""`echo`: returns its arguments; the cheapest round trip through the gateway."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from worker.tools import tool
from worker.tools.base import ToolContext


class EchoArgs(BaseModel):
    model_config = ConfigDict(extra="allow")


@tool("echo", args=EchoArgs, description="Returns its arguments.")
async def echo(args: EchoArgs, ctx: ToolContext) -> dict[str, Any]:  # on the loop: no thread
    return args.model_dump()
