"""`http.post`: sends a JSON body to a URL for an agent, once per call as the server sees it.

Every request carries `Idempotency-Key: <ctx.call_id>`, the call's deterministic id, so a retry or a
re-delivery after a worker died is one effect on a server that honours the key; a caller's own
`Idempotency-Key` or `Content-Type` header is replaced. The SSRF guard, the deadline and the body cap
are those of `http.get` (`http_client`); a redirect is not followed but returned as the result, since
re-sending a body to another URL is a second write the caller did not ask for.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.tools import tool
from worker.tools.base import ToolContext, ToolFailure
from worker.tools.http_client import parse_url, request_headers, send

# Set by the tool, whatever the caller sends.
POST_HEADERS = frozenset({"idempotency-key", "content-type"})


class HttpPostArgs(BaseModel):
    # `json` is the contract's name; as a field name it would shadow BaseModel.json.
    model_config = ConfigDict(extra="forbid")

    url: str
    body: Any = Field(alias="json")
    headers: dict[str, str] | None = None


@tool(
    "http.post",
    args=HttpPostArgs,
    writes=True,
    idempotent=True,
    description="POST JSON to an http(s) URL with the call's Idempotency-Key; returns status, "
    "a few headers and the body as text (capped). Redirects are returned, not followed.",
)
async def http_post(args: HttpPostArgs, ctx: ToolContext) -> dict[str, Any]:
    url = parse_url(args.url)
    try:
        content = json.dumps(args.body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ToolFailure("invalid_args", f"json: not serialisable as JSON: {exc}") from None
    headers = {
        **request_headers(args.headers or {}, reserved=POST_HEADERS),
        "Content-Type": "application/json",
        "Idempotency-Key": ctx.call_id,
    }
    return await send("POST", url, ctx, headers=headers, content=content, follow_redirects=False)
