"""What `Fleet` and `AsyncFleet` share: settings, paths, bodies and the reading of answers."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import quote

import httpx

from agentfleet_client.errors import FleetConnectionError, FleetError, error_from_response
from agentfleet_client.models import Approval, Run, RunPage, UsageReport
from agentfleet_client.retry import Retries

__version__ = "0.1.0"

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 30.0
MAX_WAIT_S = 30.0  # the API holds a `?wait=S` answer at most this long
# An event stream that says nothing for this long is opened again (with Last-Event-ID): a silent
# connection may be one that died without a word.
EVENTS_IDLE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Config:
    """Where the client sends requests, with which key, how long it waits and how it retries."""

    base_url: str
    api_key: str
    timeout_s: float
    retries: Retries

    @classmethod
    def resolve(
        cls, base_url: str | None, api_key: str | None, timeout_s: float, retries: Retries | None
    ) -> Config:
        """Arguments first, then FLEET_API_URL / FLEET_API_KEY, then the default URL."""
        url = base_url or os.environ.get("FLEET_API_URL") or DEFAULT_API_URL
        key = api_key or os.environ.get("FLEET_API_KEY")
        if not key:
            raise ValueError("no API key: pass api_key= or set FLEET_API_KEY")
        if timeout_s <= 0:
            raise ValueError("timeout must be positive (seconds)")
        return cls(url.rstrip("/"), key, float(timeout_s), retries or Retries())

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": f"agentfleet-client/{__version__}",
        }


def run_path(run_id: str, *rest: str) -> str:
    """`/v1/runs/{id}/...` with each part quoted, so an id never reaches another route."""
    return "/".join(["/v1/runs", *(quote(str(part), safe="") for part in (run_id, *rest))])


def submit_body(
    agent: str,
    input: Any,
    budgets: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    webhook: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The body of `POST /v1/runs`; a value that is not a mapping goes as it is (the API 422s it)."""
    body: dict[str, Any] = {"agent": agent, "input": input}
    for name, value in (("budgets", budgets), ("metadata", metadata), ("webhook", webhook)):
        if value is not None:
            body[name] = dict(value) if isinstance(value, Mapping) else value
    return body


def decision_body(decision: str, comment: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"decision": decision}
    if comment is not None:
        body["comment"] = comment
    return body


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def wait_params(wait_s: float, steps: bool) -> dict[str, str]:
    params = {}
    if wait_s > 0:
        params["wait"] = f"{min(wait_s, MAX_WAIT_S):.3f}"
    if steps:
        params["steps"] = "true"
    return params


def _time_param(value: datetime | str | float) -> str:
    """A time for `since` / `until`: an aware datetime as ISO 8601, unix seconds, or text as given."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("since / until: a datetime needs a zone (e.g. tzinfo=timezone.utc)")
        return value.isoformat()
    return str(value)


def runs_params(
    agent: str | None,
    status: str | None,
    stop_reason: str | None,
    since: datetime | str | float | None,
    until: datetime | str | float | None,
    metadata: Mapping[str, Any] | None,
    limit: int | None,
    cursor: str | None,
) -> dict[str, str]:
    """The query of `GET /v1/runs`; metadata values go as JSON, so `"5"` and `5` stay apart."""
    params: dict[str, str] = {}
    for name, value in (
        ("agent", agent),
        ("status", status),
        ("stop_reason", stop_reason),
        ("cursor", cursor),
    ):
        if value is not None:
            params[name] = value
    for name, moment in (("since", since), ("until", until)):
        if moment is not None:
            params[name] = _time_param(moment)
    for key, value in (metadata or {}).items():
        params[f"metadata.{key}"] = json.dumps(value)
    if limit is not None:
        params["limit"] = str(limit)
    return params


def usage_params(
    start: date | str | None, end: date | str | None, group_by: str, tenant: str | None
) -> dict[str, str]:
    """The query of `GET /v1/usage`."""
    params = {"group_by": group_by}
    for name, day in (("from", start), ("to", end), ("tenant", tenant)):
        if day is not None:
            params[name] = day.isoformat() if isinstance(day, date) else str(day)
    return params


def page_from(response: httpx.Response) -> RunPage:
    body = json_body(response)
    if not isinstance(body, dict) or not isinstance(body.get("runs"), list):
        raise FleetError(response.status_code, "invalid_answer", "the API's answer is not a page of runs")
    return RunPage.from_dict(body)


def usage_from(response: httpx.Response) -> UsageReport:
    body = json_body(response)
    if not isinstance(body, dict) or not isinstance(body.get("usage"), list):
        raise FleetError(response.status_code, "invalid_answer", "the API's answer is not a usage report")
    return UsageReport.from_dict(body)


def checked(response: httpx.Response) -> httpx.Response:
    """The answer when it is a success; else the error its body describes, raised."""
    if response.is_success:
        return response
    raise error_from_response(response)


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        message = f"the API answered {response.status_code} without JSON"
        raise FleetError(response.status_code, "invalid_answer", message, response.headers) from None


def run_from(response: httpx.Response) -> Run:
    """The run in an answer's body (a run, or `{"run": {...}}`)."""
    body = json_body(response)
    if isinstance(body, dict) and isinstance(body.get("run"), dict) and "status" not in body:
        body = body["run"]
    if not isinstance(body, dict) or "id" not in body or "status" not in body:
        message = "the API's answer is not a run"
        raise FleetError(response.status_code, "invalid_answer", message, response.headers)
    return Run.from_dict(body)


def has_run(response: httpx.Response) -> bool:
    """True when the answer's body holds a run (an approval's answer may hold only the decision)."""
    try:
        body = response.json()
    except ValueError:
        return False
    if isinstance(body, dict) and isinstance(body.get("run"), dict):
        body = body["run"]
    return isinstance(body, dict) and "id" in body and "status" in body


def approvals_from(response: httpx.Response) -> list[Approval]:
    """The pending approvals in `GET /v1/approvals`'s body: a list, or `{"approvals": [...]}`."""
    body = json_body(response)
    if isinstance(body, dict):
        body = body.get("approvals", [])
    if not isinstance(body, list):
        message = "the API's answer is not a list"
        raise FleetError(response.status_code, "invalid_answer", message, response.headers)
    return [Approval.from_dict(item) for item in body if isinstance(item, dict)]


def no_answer(base_url: str, exc: Exception) -> FleetConnectionError:
    """The error for a request that got no answer; names the URL and the kind of failure only."""
    message = f"cannot reach the API at {base_url}: {type(exc).__name__}"
    error = FleetConnectionError(None, "connection_error", message)
    error.__cause__ = exc
    return error


def event_headers(last_event_id: str | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return headers


def stream_ended_early() -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError("the event stream closed before its end event")


def given_up(base_url: str, failure: Exception) -> Exception:
    """What to raise once the retries are used up: the API's error as it is, a lost connection as
    a FleetConnectionError."""
    if isinstance(failure, httpx.HTTPError):
        return no_answer(base_url, failure)
    return failure
