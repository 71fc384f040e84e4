"""`Fleet`: the synchronous client of the agentfleet HTTP API (on `httpx.Client`)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from types import TracebackType
from typing import Any

import httpx

from agentfleet_client import _base
from agentfleet_client.errors import error_from_response, retry_after_s
from agentfleet_client.models import Approval, Event, Run, RunPage, UsageReport
from agentfleet_client.retry import RETRY_ERRORS, RETRY_STATUSES, Retries
from agentfleet_client.sse import SSEParser


class Fleet:
    """A client of one fleet's API, for one tenant's key.

    `base_url` and `api_key` default to FLEET_API_URL (else http://127.0.0.1:8000) and FLEET_API_KEY.
    `timeout` is each request's timeout in seconds (a `?wait` request gets its wait on top).
    `retries` is the policy for 429, 503 and lost connections (`Retries()` by default; `NO_RETRIES`
    turns it off). `transport` replaces httpx's own (tests, proxies). Use it as a context manager,
    or call `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = _base.DEFAULT_TIMEOUT_S,
        retries: Retries | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._config = _base.Config.resolve(base_url, api_key, timeout, retries)
        self._http = httpx.Client(
            base_url=self._config.base_url,
            headers=self._config.headers(),
            timeout=self._config.timeout_s,
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        return self._config.base_url

    def __repr__(self) -> str:
        return f"Fleet(base_url={self._config.base_url!r})"  # never the key

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------------------------------

    def submit(
        self,
        agent: str,
        input: Any,
        budgets: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        webhook: Mapping[str, Any] | None = None,
    ) -> Run:
        """Submit a run; returns it as queued (or, for a repeated `idempotency_key`, as it is now).

        Without `idempotency_key` the client makes one (uuid4 hex), so that its own retries of this
        call never make a second run. The same key with another body is a `ConflictError`.
        """
        body = _base.submit_body(agent, input, budgets, metadata, webhook)
        response = self._request("POST", "/v1/runs", json=body, idempotency_key=idempotency_key)
        return _base.run_from(response)

    def get(self, id: str, steps: bool = False) -> Run:
        """The run now; with `steps=True` its step log too (`run.steps`)."""
        return self._get(id, 0.0, steps)

    def wait(self, id: str, timeout: float | None = None, steps: bool = False) -> Run:
        """The run once it has ended, or as it is when `timeout` seconds have passed (None: no limit).

        Long-polls `GET /v1/runs/{id}?wait=S` in slices of at most 30 s. On timeout it does not
        raise: it returns the run still queued or running (check `run.done`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left_s = _base.MAX_WAIT_S if deadline is None else deadline - time.monotonic()
            run = self._get(id, max(0.0, left_s), steps)
            if run.done or (deadline is not None and time.monotonic() >= deadline):
                return run

    def cancel(self, id: str) -> Run:
        """Cancel a run: a queued run ends now, a running one at its next check (status cancelled)."""
        return _base.run_from(self._request("POST", _base.run_path(id, "cancel")))

    def events(self, id: str, last_event_id: str | None = None) -> Iterator[Event]:
        """The run's events as they happen (`GET /v1/runs/{id}/events`), ending after the `end` event.

        With `last_event_id`, the stream resumes after that event. A connection that drops is
        opened again with `Last-Event-ID` (so no event is lost or repeated), under the retry
        policy; the policy's attempts count again from zero once a connection delivers anything.
        """
        path = _base.run_path(id, "events")
        timeout = httpx.Timeout(self._config.timeout_s, read=_base.EVENTS_IDLE_TIMEOUT_S)
        policy = self._config.retries
        last_id, failures, failing_since = last_event_id, 0, time.monotonic()
        while True:
            headers = _base.event_headers(last_id)
            connected = heard = False
            failure: Exception | None = None
            retry_after: float | None = None
            try:
                with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                    if response.status_code in RETRY_STATUSES:
                        response.read()
                        retry_after, failure = retry_after_s(response.headers), error_from_response(response)
                    else:
                        if not response.is_success:
                            response.read()
                            raise error_from_response(response)
                        if response.status_code == 204:  # resumed after the end: nothing follows
                            return
                        connected = True
                        parser = SSEParser(last_id)
                        for chunk in response.iter_bytes():
                            heard = True
                            for event in parser.feed(chunk):
                                last_id = event.id
                                yield event
                                if event.type == "end":
                                    return
                        failure = _base.stream_ended_early()
            except httpx.ReadTimeout as exc:
                failure = None if connected else exc  # connected: a quiet stream, opened again at once
            except RETRY_ERRORS as exc:
                failure = exc
            except httpx.HTTPError as exc:
                raise _base.no_answer(self._config.base_url, exc) from exc
            if heard:
                failures, failing_since = 0, time.monotonic()
            if failure is None:
                continue
            failures += 1
            delay = policy.next_delay_s(failures, time.monotonic() - failing_since, retry_after)
            if delay is None:
                raise _base.given_up(self._config.base_url, failure)
            time.sleep(delay)

    # -- history ------------------------------------------------------------------------------------

    def runs(
        self,
        *,
        agent: str | None = None,
        status: str | None = None,
        stop_reason: str | None = None,
        since: datetime | str | float | None = None,
        until: datetime | str | float | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> RunPage:
        """A page of this tenant's ended runs, newest first (`GET /v1/runs`); pass
        `page.next_cursor` as `cursor` for the next. Filters combine with AND: `since` <= created
        < `until` (aware datetimes, ISO 8601 text or unix seconds); `metadata` values match the
        run's metadata values exactly (`"5"` is not `5`). `limit`: 1..1000 (100)."""
        params = _base.runs_params(agent, status, stop_reason, since, until, metadata, limit, cursor)
        return _base.page_from(self._request("GET", "/v1/runs", params=params))

    def usage(
        self,
        start: date | str | None = None,
        end: date | str | None = None,
        *,
        group_by: str = "agent",
        tenant: str | None = None,
    ) -> UsageReport:
        """Steps, tool calls, tokens and cost in USD over the UTC days [`start`, `end`] (default:
        the 30 days to today), per `group_by` (agent, day or model) and in total (`GET /v1/usage`).
        `tenant` is for admin keys; a tenant key reads its own."""
        params = _base.usage_params(start, end, group_by, tenant)
        return _base.usage_from(self._request("GET", "/v1/usage", params=params))

    def delete(self, id: str) -> None:
        """Delete an ended run for good, from the fleet and its history (`DELETE /v1/runs/{id}`);
        a queued or running run is a `ConflictError` (cancel it first)."""
        self._request("DELETE", _base.run_path(id))

    # -- approvals ----------------------------------------------------------------------------------

    def approvals(self) -> list[Approval]:
        """The tool calls of this tenant's runs that wait for a decision (`GET /v1/approvals`)."""
        return _base.approvals_from(self._request("GET", "/v1/approvals"))

    def approve(self, id: str, call_id: str, comment: str | None = None) -> Run:
        """Let the waiting tool call `call_id` of run `id` go ahead; returns the run."""
        return self._decide(id, call_id, "approve", comment)

    def deny(self, id: str, call_id: str, comment: str | None = None) -> Run:
        """Refuse the waiting tool call: the agent gets an error of type `denied` and goes on."""
        return self._decide(id, call_id, "deny", comment)

    def _decide(self, id: str, call_id: str, decision: str, comment: str | None) -> Run:
        body = _base.decision_body(decision, comment)
        response = self._request("POST", _base.run_path(id, "approvals", call_id), json=body)
        return _base.run_from(response) if _base.has_run(response) else self.get(id)

    # -- requests -----------------------------------------------------------------------------------

    def _get(self, id: str, wait_s: float, steps: bool) -> Run:
        params = _base.wait_params(wait_s, steps)
        timeout = self._config.timeout_s + min(wait_s, _base.MAX_WAIT_S)
        response = self._request("GET", _base.run_path(id), params=params, timeout_s=timeout)
        return _base.run_from(response)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """One call, retried under the policy; a POST keeps one Idempotency-Key across its tries."""
        headers = {}
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or _base.new_idempotency_key()
        policy, started, attempts = self._config.retries, time.monotonic(), 0
        timeout = timeout_s if timeout_s is not None else self._config.timeout_s
        while True:
            attempts += 1
            try:
                response = self._http.request(
                    method, path, params=params, json=json, headers=headers, timeout=timeout
                )
            except RETRY_ERRORS as exc:
                delay = policy.next_delay_s(attempts, time.monotonic() - started, None)
                if delay is None:
                    raise _base.no_answer(self._config.base_url, exc) from exc
                time.sleep(delay)
                continue
            except httpx.HTTPError as exc:
                raise _base.no_answer(self._config.base_url, exc) from exc
            if response.status_code in RETRY_STATUSES:
                elapsed_s = time.monotonic() - started
                delay = policy.next_delay_s(attempts, elapsed_s, retry_after_s(response.headers))
                if delay is not None:
                    time.sleep(delay)
                    continue
            return _base.checked(response)
