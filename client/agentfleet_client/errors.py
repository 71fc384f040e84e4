"""The errors the client raises: one class per HTTP status the API answers, built from its error body.

Every error the API answers is JSON `{"error": {"type", "message"}}`; `type` names the cause
within a status (429 `queue_full`, `tenant_queue_full` or `too_many_waiters`; 503 `killed` or
`unavailable`; ...). Catch `FleetError` for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import httpx


class FleetError(Exception):
    """An answer of the API that is not a success, or no answer at all.

    `status` is the HTTP status (None when the API could not be reached), `type` the error type
    of the body, `message` its message, `headers` the answer's headers (case-insensitive).
    """

    def __init__(
        self,
        status: int | None,
        type: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {type}: {message}" if status is not None else f"{type}: {message}")
        self.status = status
        self.type = type
        self.message = message
        self.headers = httpx.Headers(headers or {})

    @property
    def retry_after_s(self) -> float | None:
        """The answer's `Retry-After` in seconds, when it has one in seconds."""
        return retry_after_s(self.headers)


class BadRequestError(FleetError):
    """400."""


class AuthenticationError(FleetError):
    """401: no API key, or one the fleet does not know."""


class PermissionDeniedError(FleetError):
    """403: the key may not do this (e.g. pin a version without the admin key)."""


class NotFoundError(FleetError):
    """404: no such run for this key's tenant (another tenant's run is a 404 too)."""


class ConflictError(FleetError):
    """409: an Idempotency-Key reused with another body, or a decision on an approval already decided."""


class PayloadTooLargeError(FleetError):
    """413: the body is over the fleet's FLEET_MAX_BODY_BYTES."""


class InvalidRequestError(FleetError):
    """422: invalid input; the message names the field."""


class RateLimitError(FleetError):
    """429: a queue or the tenant's waits are full; `retry_after_s` says when to come back."""


class ServerError(FleetError):
    """A 5xx answer."""


class ServiceUnavailableError(ServerError):
    """503: a kill switch covers the submission (type `killed`), or the fleet's store or queue is
    unreachable (type `unavailable`)."""


class FleetConnectionError(FleetError):
    """No answer: the API could not be reached, or the connection broke before it answered.
    `status` is None; the httpx error is the `__cause__`."""


_BY_STATUS: dict[int, type[FleetError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_class(status: int) -> type[FleetError]:
    """The class raised for an answer with this status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else FleetError


def error_from_response(response: httpx.Response) -> FleetError:
    """The error for a non-2xx answer, from its `{"error": {"type", "message"}}` body when it has one."""
    kind, message = f"http_{response.status_code}", response.reason_phrase or "error"
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind = str(error.get("type") or kind)
        message = str(error.get("message") or message)
    elif response.text:
        message = response.text[:200]
    return error_class(response.status_code)(response.status_code, kind, message, response.headers)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` in seconds (the fleet sends seconds; an HTTP date is not honoured)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
