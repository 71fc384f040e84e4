"""JSON errors: every error the API answers is `{"error": {"type", "message"}}`."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_STATUS_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "queue_full",
    503: "unavailable",
}


def dump_json(content: Any) -> str:
    """The API's JSON text: one line, non-ASCII escaped, so any string a client or an agent
    produced can be sent back (a lone UTF-16 surrogate cannot be encoded as UTF-8)."""
    return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


class FleetJSONResponse(JSONResponse):
    """JSON as `dump_json` writes it."""

    def render(self, content: Any) -> bytes:
        return dump_json(content).encode()


class ApiError(Exception):
    """An error answer: HTTP status, error type, message and optional headers."""

    def __init__(self, status: int, type: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers


def error_response(
    status: int, type: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"type": type, "message": message}}
    return FleetJSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[int | str, ...] | list[int | str]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def validation_message(errors: list[dict[str, object]]) -> str:
    """`field: problem` for the first few problems, naming each field."""
    shown = []
    for err in errors[:5]:
        loc = err.get("loc") or ()
        where = _field(list(loc) if isinstance(loc, list | tuple) else [str(loc)])
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            shown.append(f"body: malformed JSON ({msg})")
        else:
            shown.append(f"{where}: {msg}")
    if len(errors) > 5:
        shown.append(f"and {len(errors) - 5} more")
    return "; ".join(shown)


def _documented_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the OpenAPI lists for `path`: FastAPI makes one route per method, so the
    route that answers 405 knows only its own."""
    from starlette.routing import compile_path

    methods: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into the contract's JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", validation_message(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            # FastAPI's answer to a body it cannot decode (bad UTF-8, nesting too deep).
            return error_response(422, "invalid_request", "body: not valid JSON")
        if exc.status_code == 405 and (allowed := _documented_methods(app, request.url.path)):
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        kind = _STATUS_TYPES.get(exc.status_code, "error")
        return error_response(exc.status_code, kind, str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The fleet's own fault (Redis down, a bug): never echo internals to the client.
        import redis
        import structlog

        structlog.get_logger("agentfleet.api").exception("request failed", path=request.url.path)
        if isinstance(exc, redis.RedisError):
            return error_response(503, "unavailable", "the fleet's store is unreachable; try again")
        return error_response(500, "internal", "internal error")
