"""`search.read`: a web search through the fleet's search service, a SearxNG-compatible JSON API.

Asks `GET <tools.search.url>?q=<query>&format=json` (query parameters already in the configured URL
stay) and maps `{"results": [{"title", "url", "content"}, ...]}` to `{"query", "results": [{"title",
"url", "snippet"}, ...]}`, at most `limit` of them. The configured URL is operator config, so its host
is exempt from the private-address block; the deadline, the body cap (`tools.http.max_body_bytes`)
and the error mapping are those of `http.get`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.tools import tool
from worker.tools.base import ToolContext, ToolFailure
from worker.tools.http_client import parse_url, send


class SearchReadArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=500)
    limit: int = Field(10, ge=1, le=50)


@tool(
    "search.read",
    args=SearchReadArgs,
    description="Search the web through the fleet's search service; returns title, url and snippet "
    "of up to `limit` results.",
)
async def search_read(args: SearchReadArgs, ctx: ToolContext) -> dict[str, Any]:
    configured = ctx.settings.tools.search.url
    if not configured:
        raise ToolFailure("tool_error", "no search service configured: set tools.search.url")
    try:
        base = parse_url(configured)
    except ToolFailure as failure:
        raise ToolFailure("tool_error", f"tools.search.url is not usable: {failure.message}") from None
    url = base.copy_merge_params({"q": args.query, "format": "json"})
    answer = await send("GET", url, ctx, headers={"Accept": "application/json"}, trusted=True)
    if answer["truncated"]:
        raise ToolFailure(
            "tool_error", "the search service's answer is larger than tools.http.max_body_bytes"
        )
    results = _results(answer["body"])
    return {"query": args.query, "results": results[: args.limit]}


def _results(body: str) -> list[dict[str, str]]:
    """The results of a SearxNG JSON answer; entries without a URL are left out."""
    try:
        document = json.loads(body)
    except ValueError:
        raise ToolFailure("tool_error", "the search service did not answer JSON") from None
    entries = document.get("results") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ToolFailure(
            "tool_error", 'the search service answered JSON without a "results" list (is it SearxNG?)'
        )
    results: list[dict[str, str]] = []
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("url"), str):
            results.append(
                {
                    "title": _text(entry.get("title")),
                    "url": entry["url"],
                    "snippet": _text(entry.get("content")),
                }
            )
    return results


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
