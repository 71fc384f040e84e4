"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class BudgetsIn(BaseModel):
    """Budgets a request may set; each may only tighten the fleet's cap."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(None, gt=0)
    max_tool_calls: int | None = Field(None, ge=0)
    max_seconds: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=0)
    max_cost_usd: float | None = Field(None, ge=0)


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    input: Any = None
    budgets: BudgetsIn | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    version: Literal["stable", "canary"] | None = Field(
        None, description="pin the agent's version; needs the X-Fleet-Admin-Key header"
    )


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
    steps: list[dict[str, Any]] | None = Field(None, description="the step log, with ?steps=true")


class ErrorBody(BaseModel):
    error: ErrorOut
