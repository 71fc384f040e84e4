"""/v1/admin: per-agent governance policies, for holders of an admin key (FLEET_ADMIN_KEYS)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import field_validator

from api.deps import Admin, State
from api.errors import ApiError
from api.schemas import ErrorBody, json_number
from worker.control.policy import Policy


class PolicyIn(Policy):
    """A policy as the API takes it: numbers must be JSON numbers (the `fleet policy` CLI relies on
    the lax parsing of its string arguments, so Policy itself stays lax)."""

    @field_validator("max_actions_per_hour", "max_spend_usd_per_day", mode="before")
    @classmethod
    def _json_number(cls, value: Any) -> Any:
        return json_number(value)


router = APIRouter(prefix="/v1/admin", tags=["admin"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 413, 422, 503)}
_AGENT = r"^[A-Za-z0-9_.:-]{1,200}$"
AgentName = Annotated[str, Path(pattern=_AGENT, description="1-200 characters of [A-Za-z0-9_.:-]")]


def _check(agent: str) -> None:
    if not re.match(_AGENT, agent):
        raise ApiError(422, "invalid_request", "agent: 1-200 characters of [A-Za-z0-9_.:-]")


@router.get("/policies/{agent}", responses=_ERRORS)
def get_policy(agent: AgentName, state: State, _: Admin) -> dict[str, Any]:
    """An agent's policy; null fields are not limited."""
    _check(agent)
    return {"agent": agent, **state.policies.get(agent).model_dump()}


@router.put("/policies/{agent}", responses=_ERRORS)
def put_policy(agent: AgentName, policy: PolicyIn, state: State, _: Admin) -> dict[str, Any]:
    """Replace an agent's policy: `allowed_tools`, `approve_tools`, `max_actions_per_hour`,
    `max_spend_usd_per_day`."""
    _check(agent)
    state.policies.set(agent, Policy(**policy.model_dump()))  # a plain Policy: is_empty compares types
    return {"agent": agent, **state.policies.get(agent).model_dump()}


@router.delete("/policies/{agent}", responses=_ERRORS)
def delete_policy(agent: AgentName, state: State, _: Admin) -> dict[str, Any]:
    """Remove an agent's policy (the fleet's allowlist alone applies)."""
    _check(agent)
    state.policies.set(agent, Policy())
    return {"agent": agent, **Policy().model_dump()}
