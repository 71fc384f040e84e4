"""/v1/admin: per-agent governance policies, for holders of an admin key (FLEET_ADMIN_KEYS)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter

from api.deps import Admin, State
from api.errors import ApiError
from api.schemas import ErrorBody
from worker.policy import Policy

router = APIRouter(prefix="/v1/admin", tags=["admin"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 422)}
_AGENT = r"^[A-Za-z0-9_.:-]{1,200}$"


def _check(agent: str) -> None:
    if not re.match(_AGENT, agent):
        raise ApiError(422, "invalid_request", "agent: 1-200 characters of [A-Za-z0-9_.:-]")


@router.get("/policies/{agent}", responses=_ERRORS)
def get_policy(agent: str, state: State, _: Admin) -> dict[str, Any]:
    """An agent's policy; null fields are not limited."""
    _check(agent)
    return {"agent": agent, **state.policies.get(agent).model_dump()}


@router.put("/policies/{agent}", responses=_ERRORS)
def put_policy(agent: str, policy: Policy, state: State, _: Admin) -> dict[str, Any]:
    """Replace an agent's policy: `allowed_tools`, `max_actions_per_hour`, `max_spend_usd_per_day`."""
    _check(agent)
    state.policies.set(agent, policy)
    return {"agent": agent, **state.policies.get(agent).model_dump()}


@router.delete("/policies/{agent}", responses=_ERRORS)
def delete_policy(agent: str, state: State, _: Admin) -> dict[str, Any]:
    """Remove an agent's policy (the fleet's allowlist alone applies)."""
    _check(agent)
    state.policies.set(agent, Policy())
    return {"agent": agent, **Policy().model_dump()}
