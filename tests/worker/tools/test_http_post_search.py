"""`http.post` and `search.read` against a real HTTP server on loopback: keys, guard, errors, mapping."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from worker.settings import Settings
from worker.tools import execute, get_tool
from worker.tools.base import ToolContext

CALL_ID = "run-7:3:0"
RESULTS = [
    {"title": f"Result {n}", "url": f"https://example.org/{n}", "content": f"about {n}"} for n in range(15)
]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, list[str]]  # lower-case name -> every value sent under it
    body: bytes

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[Received] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(BaseHTTPRequestHandler):
    server: RecordingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._record(b"")
        route = urlsplit(self.path).path
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up on a timeout
            if route == "/search":
                self._send(200, {"Content-Type": "application/json"}, json.dumps(self._searx()).encode())
            elif route == "/search-garbage":
                self._send(200, {"Content-Type": "text/html"}, b"<html>rate limited</html>")
            elif route == "/search-wrong-shape":
                self._send(200, {"Content-Type": "application/json"}, b'{"answers": ["42"]}')
            elif route == "/search-unavailable":
                self._send(503, {"Retry-After": "7"}, b"busy")
            elif route == "/search-redirect-internal":
                self._send(302, {"Location": "http://10.0.0.1/search"}, b"")
            elif route == "/search-slow":
                time.sleep(2.0)
                self._send(200, {"Content-Type": "application/json"}, b'{"results": []}')
            else:
                self._send(404, {}, b"no such path")

    def do_POST(self) -> None:
        self._record(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        if self.path == "/things":
            self._send(201, {"Content-Type": "application/json", "Location": "/things/1"}, b'{"id": 1}')
        elif self.path == "/unavailable":
            self._send(503, {"Retry-After": "2"}, b"busy")
        elif self.path == "/big":
            self._send(200, {"Content-Type": "text/plain"}, b"x" * 5000)
        elif self.path == "/moved":
            self._send(307, {"Location": "/things"}, b"moved")
        else:
            self._send(404, {}, b"no such path")

    def _record(self, body: bytes) -> None:
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        self.server.requests.append(Received(self.command, self.path, headers, body))

    def _searx(self) -> dict[str, Any]:
        # SearxNG's shape, with an entry that has no URL and fields the tool does not pass on.
        entries: list[Any] = [{"title": "no url", "content": "skipped"}, *RESULTS]
        return {"query": "q", "number_of_results": len(RESULTS), "results": entries, "answers": []}

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def running_server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def server(running_server: RecordingServer) -> RecordingServer:
    running_server.requests.clear()
    return running_server


def context(
    allow_hosts: list[str] | None = None,
    search_url: str | None = None,
    timeout_s: float = 5.0,
    max_body_bytes: int = 1_048_576,
) -> ToolContext:
    tools: dict[str, Any] = {
        "http": {
            "allow_hosts": ["127.0.0.1"] if allow_hosts is None else allow_hosts,
            "max_body_bytes": max_body_bytes,
        },
        "search": {"url": search_url},
    }
    return ToolContext(call_id=CALL_ID, timeout_s=timeout_s, settings=Settings(tools=tools))


def post(url: str, body: Any, ctx: ToolContext | None = None, **args: Any) -> dict[str, Any]:
    return execute("http.post", {"url": url, "json": body, **args}, ctx or context())


def search(search_url: str | None, ctx: ToolContext | None = None, **args: Any) -> dict[str, Any]:
    # No host is allowlisted: the configured search URL must pass without it.
    return execute("search.read", {"query": "celery fleet", **args}, ctx or context([], search_url))


def result_of(envelope: dict[str, Any]) -> dict[str, Any]:
    assert envelope["ok"] is True, envelope
    result: dict[str, Any] = envelope["result"]
    return result


def error_of(envelope: dict[str, Any]) -> dict[str, Any]:
    assert envelope["ok"] is False, envelope
    error: dict[str, Any] = envelope["error"]
    return error


# -- http.post --------------------------------------------------------------------------------------


def test_http_post_is_registered_as_an_idempotent_write() -> None:
    post_tool, search_tool = get_tool("http.post"), get_tool("search.read")

    assert post_tool is not None and search_tool is not None
    assert post_tool.writes is True
    assert post_tool.idempotent is True
    assert search_tool.writes is False


def test_http_post_sends_the_json_body_with_the_calls_idempotency_key(server: RecordingServer) -> None:
    body = {"order": 42, "items": ["a", "b"], "note": "grüße", "paid": None}
    headers = {"idempotency-key": "caller-chosen", "Content-Type": "text/plain", "X-Trace": "t-1"}

    result = result_of(post(server.url("/things"), body, headers=headers))

    [received] = server.requests
    assert (received.method, received.path) == ("POST", "/things")
    assert json.loads(received.body.decode("utf-8")) == body
    assert received.headers["idempotency-key"] == [CALL_ID]
    assert received.headers["content-type"] == ["application/json"]
    assert received.headers["x-trace"] == ["t-1"]
    assert result["status"] == 201
    assert result["body"] == '{"id": 1}'
    assert result["headers"]["location"] == "/things/1"
    assert result["url"] == server.url("/things")


def test_http_post_sends_a_different_key_for_a_different_call(server: RecordingServer) -> None:
    other = ToolContext(call_id="run-7:4:0", timeout_s=5.0, settings=context().settings)

    result_of(post(server.url("/things"), [1], context()))
    result_of(post(server.url("/things"), [1], other))

    assert [r.headers["idempotency-key"] for r in server.requests] == [[CALL_ID], ["run-7:4:0"]]


def test_http_post_to_loopback_is_denied_unless_allowlisted(server: RecordingServer) -> None:
    error = error_of(post(server.url("/things"), {"x": 1}, context(allow_hosts=[])))

    assert error["type"] == "denied"
    assert "127.0.0.1" in error["message"]
    assert server.requests == []


def test_http_post_503_is_an_http_error_with_retry_after_seconds(server: RecordingServer) -> None:
    error = error_of(post(server.url("/unavailable"), {"x": 1}))

    assert error == {"type": "http_error", "message": "HTTP 503", "status": 503, "retry_after_s": 2.0}


def test_http_post_returns_a_redirect_without_following_it(server: RecordingServer) -> None:
    result = result_of(post(server.url("/moved"), {"x": 1}))

    assert result["status"] == 307
    assert result["headers"]["location"] == "/things"
    assert result["body"] == "moved"
    assert [(r.method, r.path) for r in server.requests] == [("POST", "/moved")]


def test_http_post_answer_body_is_capped_at_max_body_bytes(server: RecordingServer) -> None:
    result = result_of(post(server.url("/big"), {"x": 1}, context(max_body_bytes=1000)))

    assert result["body"] == "x" * 1000
    assert result["truncated"] is True


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"json": {"x": 1}}, "url"),
        ({"url": "{url}"}, "json"),
        ({"url": 5, "json": {}}, "url"),
        ({"url": "ftp://127.0.0.1/things", "json": {}}, "url"),
        ({"url": "{url}", "json": {}, "headers": {"X-Count": 1}}, "headers"),
        ({"url": "{url}", "json": {}, "body": "{}"}, "body"),
    ],
)
def test_http_post_bad_arguments_are_invalid_args_and_nothing_is_sent(
    args: dict[str, Any], field: str, server: RecordingServer
) -> None:
    args = {
        k: v.replace("{url}", server.url("/things")) if isinstance(v, str) else v for k, v in args.items()
    }

    error = error_of(execute("http.post", args, context()))

    assert error["type"] == "invalid_args"
    assert error["message"].startswith(field)
    assert server.requests == []


# -- search.read ------------------------------------------------------------------------------------


def test_search_maps_searxng_results_and_applies_the_limit(server: RecordingServer) -> None:
    result = result_of(search(server.url("/search"), limit=3))

    assert result == {
        "query": "celery fleet",
        "results": [
            {"title": f"Result {n}", "url": f"https://example.org/{n}", "snippet": f"about {n}"}
            for n in range(3)
        ],
    }
    [received] = server.requests
    assert received.query == {"q": ["celery fleet"], "format": ["json"]}


def test_search_returns_ten_results_by_default(server: RecordingServer) -> None:
    result = result_of(search(server.url("/search")))

    assert [r["url"] for r in result["results"]] == [f"https://example.org/{n}" for n in range(10)]


def test_search_keeps_the_query_parameters_of_the_configured_url(server: RecordingServer) -> None:
    result_of(search(server.url("/search?engines=wikipedia&language=en")))

    [received] = server.requests
    assert received.query == {
        "engines": ["wikipedia"],
        "language": ["en"],
        "q": ["celery fleet"],
        "format": ["json"],
    }


def test_search_without_a_configured_service_is_a_tool_error_naming_the_setting(
    server: RecordingServer,
) -> None:
    error = error_of(search(None))

    assert error["type"] == "tool_error"
    assert "tools.search.url" in error["message"]
    assert server.requests == []


@pytest.mark.parametrize("path", ["/search-garbage", "/search-wrong-shape"])
def test_search_answer_that_is_not_searxng_json_is_a_tool_error(path: str, server: RecordingServer) -> None:
    error = error_of(search(server.url(path)))

    assert error["type"] == "tool_error"
    assert "search service" in error["message"]


def test_search_answer_over_the_body_cap_is_a_tool_error_naming_the_cap(server: RecordingServer) -> None:
    error = error_of(search(server.url("/search"), context([], server.url("/search"), max_body_bytes=100)))

    assert error["type"] == "tool_error"
    assert "tools.http.max_body_bytes" in error["message"]


def test_search_service_503_is_an_http_error_with_retry_after(server: RecordingServer) -> None:
    error = error_of(search(server.url("/search-unavailable")))

    assert error == {"type": "http_error", "message": "HTTP 503", "status": 503, "retry_after_s": 7.0}


def test_search_redirect_to_another_internal_host_is_denied(server: RecordingServer) -> None:
    error = error_of(search(server.url("/search-redirect-internal")))

    assert error["type"] == "denied"
    assert "10.0.0.1" in error["message"]


def test_a_slow_search_service_times_out(server: RecordingServer) -> None:
    error = error_of(
        search(server.url("/search-slow"), context([], server.url("/search-slow"), timeout_s=0.5))
    )

    assert error["type"] == "timeout"


@pytest.mark.parametrize(
    ("args", "field"), [({"query": ""}, "query"), ({"query": "x" * 501}, "query"), ({"limit": 51}, "limit")]
)
def test_search_bad_arguments_are_invalid_args(
    args: dict[str, Any], field: str, server: RecordingServer
) -> None:
    error = error_of(search(server.url("/search"), **args))

    assert error["type"] == "invalid_args"
    assert error["message"].startswith(field)
    assert server.requests == []
