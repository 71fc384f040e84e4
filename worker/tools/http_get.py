"""`http.get`: fetches a URL for an agent, refusing internal addresses (SSRF) and capping the body.

Every hop (the first request and each of at most `MAX_REDIRECTS` redirects) is resolved once and
refused if any address is internal, unless the host is in `tools.http.allow_hosts` (`netguard`);
the connection goes to exactly the checked address. The whole call ends within `ctx.timeout_s`;
the body is cut at `tools.http.max_body_bytes` bytes (`http_client`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from worker.tools import tool
from worker.tools.base import ToolContext
from worker.tools.http_client import parse_url, request_headers, send


class HttpGetArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    headers: dict[str, str] | None = None


@tool(
    "http.get",
    args=HttpGetArgs,
    description="GET an http(s) URL; returns status, a few headers and the body as text (capped).",
)
async def http_get(args: HttpGetArgs, ctx: ToolContext) -> dict[str, Any]:
    url = parse_url(args.url)
    return await send("GET", url, ctx, headers=request_headers(args.headers or {}))
