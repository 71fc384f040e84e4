"""Approvals of tool calls: decide one (`POST /v1/runs/{id}/approvals/{call_id}`) and list the
tenant's pending ones (`GET /v1/approvals`). How a call waits for its decision:
worker/control/approvals.py."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import State, Tenant
from api.errors import ApiError, FleetJSONResponse
from api.routes.runs import _ERRORS, _RUN_ID_RE, _not_found
from api.schemas import RunOut
from worker.control.approvals import COMMENT_MAX, DecideAnswer, DecisionRefused
from worker.obs.redact import redact_text
from worker.run.store import public_view

router = APIRouter(tags=["approvals"])


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "deny"]
    comment: str | None = Field(None, max_length=COMMENT_MAX)


class ApprovalOut(BaseModel):
    """A tool call that waits for a decision."""

    run_id: str
    agent: str
    call_id: str
    tool: str
    args: Any = Field(description="the call's arguments, redacted")
    since: str
    expires_at: str


class ApprovalsOut(BaseModel):
    approvals: list[ApprovalOut]


@router.post("/v1/runs/{run_id}/approvals/{call_id}", responses={200: {"model": RunOut}, **_ERRORS})
def decide(run_id: str, call_id: str, body: DecisionIn, state: State, tenant: Tenant) -> FleetJSONResponse:
    """Approve or deny a tool call that waits for approval, with the run's tenant key: 200 with
    the run; 404 for an unknown run or call; 409 once the call has been decided otherwise (or its
    run has ended undecided). The same decision sent again (same tenant, decision and comment: a
    client's retry after a lost answer) is 200 again, not a conflict. An approved call then goes
    through the whole gateway, checked at that moment."""
    if not _RUN_ID_RE.fullmatch(run_id):
        raise _not_found(run_id)
    comment = redact_text(body.comment) if body.comment else None
    try:
        state.approvals.decide(run_id, call_id, body.decision, tenant=tenant, comment=comment)
    except DecisionRefused as refused:
        if not _same_decision(refused, body.decision, tenant, comment):
            raise _refusal(run_id, call_id, refused) from None
    raw = state.store.load(run_id)
    if raw is None:
        raise _not_found(run_id)
    return FleetJSONResponse(public_view(raw), status_code=200, headers={"Location": f"/v1/runs/{run_id}"})


def _same_decision(refused: DecisionRefused, decision: str, tenant: str, comment: str | None) -> bool:
    """Whether the decision that stands is this one, taken by this tenant with this comment."""
    if refused.reason is not DecideAnswer.DECIDED:
        return False
    try:
        taken = json.loads(refused.detail)
    except ValueError:
        return False
    return isinstance(taken, dict) and (taken.get("decision"), taken.get("by"), taken.get("comment")) == (
        decision,
        tenant,
        comment,
    )


def _refusal(run_id: str, call_id: str, refused: DecisionRefused) -> ApiError:
    if refused.reason is DecideAnswer.MISSING:
        return _not_found(run_id)
    shown = call_id if len(call_id) <= 80 and call_id.isprintable() else "with that id"
    if refused.reason is DecideAnswer.UNKNOWN:
        return ApiError(404, "not_found", f"run {run_id} has no call {shown} waiting for approval")
    if refused.reason is DecideAnswer.ENDED:
        message = f"run {run_id} has ended ({refused.detail}); call {shown} was not decided"
        return ApiError(409, "conflict", message)
    return ApiError(409, "conflict", f"call {shown} has been decided already")


@router.get("/v1/approvals", responses={200: {"model": ApprovalsOut}, **_ERRORS})
def pending(
    state: State,
    tenant: Tenant,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many, oldest first")] = 100,
) -> dict[str, Any]:
    """The tool calls of the tenant's runs that wait for a decision, oldest first."""
    return {"approvals": state.approvals.pending(tenant, limit)}
