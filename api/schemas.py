"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

MAX_JSON_DEPTH = 64  # well under pydantic's serialization depth limit (~255) and json's recursion limit


def _plain_json(value: Any) -> Any:
    """Refuse what the API could not answer back as JSON: NaN and +-Infinity (Python's parser makes
    them from `NaN`, `Infinity` and overflowing literals such as `1e400`), and nesting deeper than
    MAX_JSON_DEPTH (the Idempotency-Key body hash fails past ~255 levels)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (NaN and Infinity are not JSON)")
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return value


PlainJSON = Annotated[Any, AfterValidator(_plain_json)]


def json_number(value: Any) -> Any:
    """Refuse `true`/`false` and strings where a number goes (pydantic's lax mode takes `true` as 1
    and `"5"` as 5; the schema says number, and JSON Schema's integer still admits 5.0)."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number")
    return value


class BudgetsIn(BaseModel):
    """Budgets a request may set; each may only tighten the fleet's cap."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(None, gt=0)
    max_tool_calls: int | None = Field(None, ge=0)
    max_seconds: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=0)
    max_cost_usd: float | None = Field(None, ge=0)

    @field_validator("*", mode="before")
    @classmethod
    def _json_number(cls, value: Any) -> Any:
        return json_number(value)


class WebhookIn(BaseModel):
    """Where the run's events go (README, "Webhooks"); the host must be allowed for the tenant."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="http(s) URL; its host must be allowed")
    events: list[Literal["end", "approval_requested"]] = Field(min_length=1)


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    input: PlainJSON = None
    budgets: BudgetsIn | None = None
    metadata: Annotated[dict[str, Any], AfterValidator(_plain_json)] = Field(default_factory=dict)
    version: Literal["stable", "canary"] | None = Field(
        None, description="pin the agent's version; needs the X-Fleet-Admin-Key header"
    )
    webhook: WebhookIn | None = Field(None, description="POST these events of the run, signed, to a URL")


class Usage(BaseModel):
    steps: int
    tool_calls: int
    seconds: float
    tokens: int
    cost_usd: float


class ErrorOut(BaseModel):
    type: str
    message: str | None


class RunOut(BaseModel):
    """A run as the API shows it. Times are ISO 8601 UTC, null until they happen."""

    id: str
    agent: str
    tenant: str
    version: str | None = Field(None, description="stable or canary, for an agent with versions")
    status: str = Field(description="queued, running, succeeded, stopped, failed or cancelled")
    stop_reason: str | None = Field(
        description="finish, max_steps, max_tool_calls, max_seconds, max_tokens, max_cost, killed, "
        "cancelled or error"
    )
    output: Any
    error: ErrorOut | None
    usage: Usage
    budgets: dict[str, Any]
    metadata: dict[str, Any]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    waiting: dict[str, Any] | None = Field(
        None,
        description='what a running run waits for: {"type": "approval", "call_id", "tool", '
        '"args" (redacted), "since", "expires_at"}, else null',
    )
    steps: list[dict[str, Any]] | None = Field(None, description="the step log, with ?steps=true")
    webhook: WebhookIn | None = Field(None, description="the run's webhook, when it has one")


class ErrorBody(BaseModel):
    error: ErrorOut


class Readiness(BaseModel):
    """GET /readyz: 200 `{"ok": true, "redis": "ok", "workers": {...}, "warnings": [...]}`, 503
    `{"ok": false, "error"}`."""

    ok: bool
    redis: str | None = None
    workers: dict[str, int] | None = None
    warnings: list[str] | None = Field(
        None, description="what does not make the API unready but needs an operator (200 only)"
    )
    error: ErrorOut | None = None
