"""`llm`: one chat-completions call to the configured OpenAI-compatible model service.

Internal: the loop calls it for the `llm` agent's model calls, through the gateway (kill
switches `kill:tool:llm` and `kill:tool:llm:<model>`, rate limits, breaker, retries honouring
Retry-After). The service URL and the key (OPENAI_API_KEY, or /run/secrets/openai_api_key) come
from config only: an agent cannot send the key anywhere else, and the key is never in a result.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.agents.llmconfig import llm_config
from worker.tools import tool
from worker.tools.base import ToolContext, ToolFailure
from worker.tools.http_client import parse_url, send


class ChatArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    max_tokens: int = Field(gt=0)
    temperature: float | None = None


@tool("llm", args=ChatArgs, description="A chat-completions call to the configured model (internal).")
async def chat(args: ChatArgs, ctx: ToolContext) -> dict[str, Any]:
    config = llm_config(ctx.settings)
    key = ctx.settings.secret("OPENAI_API_KEY")
    request: dict[str, Any] = {"model": args.model, "messages": args.messages, "max_tokens": args.max_tokens}
    if args.tools:
        request["tools"] = args.tools
    if args.temperature is not None:
        request["temperature"] = args.temperature
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = parse_url(config.base_url.rstrip("/") + "/chat/completions")
    answer = await send(
        "POST",
        url,
        ctx,
        headers=headers,
        content=json.dumps(request).encode(),
        follow_redirects=False,
        trusted=True,
    )
    if answer["status"] >= 300:
        raise ToolFailure(
            "http_error", f"model service answered HTTP {answer['status']}", status=answer["status"]
        )
    if answer["truncated"]:
        raise ToolFailure("tool_error", "model answer is larger than tools.http.max_body_bytes")
    try:
        body = json.loads(answer["body"])
    except ValueError:
        raise ToolFailure("tool_error", "model service answered with something that is not JSON") from None
    if not isinstance(body, dict):
        raise ToolFailure("tool_error", "model service answered with JSON that is not an object")
    choices = body.get("choices")
    first: dict[str, Any] = (
        choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    )
    usage: dict[str, Any] = body["usage"] if isinstance(body.get("usage"), dict) else {}
    return {
        "model": body.get("model", args.model),
        "message": first.get("message") if isinstance(first.get("message"), dict) else None,
        "finish_reason": first.get("finish_reason"),
        "usage": {
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
        },
    }
