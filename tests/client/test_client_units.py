"""Unit tests of the Python client (`agentfleet_client`): its event-stream parser, the reconnects of
`events()` with Last-Event-ID, the requests of `approvals`, `approve` and `deny`, and the parsing
of runs. The API is `httpx.MockTransport` here, answering what CONTRACT.md describes; these are
not integration tests (tests/client/test_client.py runs the client against a real fleet).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from agentfleet_client import (
    NO_RETRIES,
    AsyncFleet,
    ConflictError,
    Event,
    Fleet,
    FleetConnectionError,
    NotFoundError,
    Retries,
    Run,
    ServerError,
    SSEParser,
)
from agentfleet_client.errors import error_class

RUN_ID = "c" * 32
URL = "http://fleet.test"
KEY = "unit-test-key"
QUICK = Retries(max_attempts=3, base_delay_s=0.001, max_delay_s=0.01, max_total_s=5)


def run_body(**fields: Any) -> dict[str, Any]:
    return {
        "id": RUN_ID, "agent": "scripted", "tenant": "t1", "status": "running", "stop_reason": None,
        "output": None, "error": None, "usage": {"steps": 1, "tool_calls": 0, "seconds": 0.5},
        "budgets": {"max_steps": 25}, "metadata": {}, "created_at": "2026-11-26T09:14:39.123456Z",
        "started_at": "2026-11-26T09:14:39.200000Z", "finished_at": None, **fields,
    }  # fmt: skip


def parse(*chunks: bytes) -> list[Event]:
    parser = SSEParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


# -- the event-stream parser ------------------------------------------------------------------------


def test_parser_reads_events_with_ids_types_and_json_data() -> None:
    events = parse(
        b'id: 1\nevent: status\ndata: {"status": "running"}\n\n'
        b"id: 2\nevent: step\ndata: not json\n\n"
        b"data: no type\n\n"
    )
    assert events == [
        Event("1", "status", {"status": "running"}),
        Event("2", "step", "not json"),
        Event("2", "message", "no type"),  # the last id carries on; the type defaults to message
    ]


def test_parser_joins_data_lines_and_skips_comments_and_unknown_fields() -> None:
    events = parse(b": keep-alive\n\nevent: step\ndata: line one\nfoo: bar\ndata:line two\n\n")
    assert events == [Event(None, "step", "line one\nline two")]


def test_parser_takes_crlf_cr_and_lf_and_chunks_cut_anywhere() -> None:
    stream = 'id: 7\r\nevent: step\r\ndata: {"n": "é"}\r\rid: 8\revent: end\rdata: {}\n\n'.encode()
    whole = parse(stream)
    assert whole == [Event("7", "step", {"n": "é"}), Event("8", "end", {})]
    for cut in range(1, len(stream)):  # every split: a CRLF in two halves, a UTF-8 character in two
        assert parse(stream[:cut], stream[cut:]) == whole, cut
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == whole


def test_parser_drops_a_leading_bom_and_keeps_an_end_event_without_data() -> None:
    parser = SSEParser(last_event_id="4")
    assert parser.feed("\ufeffevent: end\n\n".encode()) == [Event("4", "end", "")]


def test_parser_keeps_retry_and_the_last_id_of_a_block_without_data() -> None:
    parser = SSEParser()
    assert parser.feed(b"retry: 1500\nid: 9\n\n") == []
    assert (parser.retry_ms, parser.last_event_id) == (1500, "9")
    assert parser.feed(b"data: x\n\n") == [Event("9", "message", "x")]


def test_parser_holds_an_event_until_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 1\nevent: status\ndata: {}\n") == []
    assert parser.feed(b"\n") == [Event("1", "status", {})]


# -- events(): reconnects with Last-Event-ID --------------------------------------------------------


def sse(*events: tuple[str, str, Any]) -> bytes:
    return b"".join(
        f"id: {id}\nevent: {type}\ndata: {json.dumps(data)}\n\n".encode() for id, type, data in events
    )


class BrokenStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that sends `chunks`, then breaks as a dropped connection does (or ends)."""

    def __init__(self, chunks: list[bytes], error: Exception | None) -> None:
        self.chunks, self.error = chunks, error

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error


Handler = Callable[[httpx.Request], httpx.Response]


def stream_answers(
    answers: list[tuple[list[bytes], Exception | None]],
) -> tuple[Handler, list[httpx.Request]]:
    """A handler that answers the event stream's requests with `answers`, in order."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/v1/runs/{RUN_ID}/events"
        seen.append(request)
        chunks, error = answers[len(seen) - 1]
        return httpx.Response(
            200, headers={"Content-Type": "text/event-stream"}, stream=BrokenStream(chunks, error)
        )

    return handle, seen


DROPPED = [
    ([sse(("1", "status", {"status": "running"}), ("2", "step", {"step": 1}))[:-5]], None),  # cut
    ([sse(("2", "step", {"step": 1}), ("3", "step", {"step": 2}))], httpx.ReadError("reset")),
    ([sse(("4", "end", {"status": "succeeded"}))], None),
]


def test_events_reconnect_with_last_event_id_and_stop_after_end() -> None:
    handle, seen = stream_answers(DROPPED)
    with Fleet(URL, KEY, retries=QUICK, transport=httpx.MockTransport(handle)) as fleet:
        events = list(fleet.events(RUN_ID))
    # the first stream closed inside event 2 (never delivered), the second broke after event 3
    assert [(e.id, e.type) for e in events] == [("1", "status"), ("2", "step"), ("3", "step"), ("4", "end")]
    assert [r.headers.get("Last-Event-ID") for r in seen] == [None, "1", "3"]
    assert all(r.headers["Accept"] == "text/event-stream" for r in seen)
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in seen)


def test_async_events_reconnect_with_last_event_id_and_stop_after_end() -> None:
    handle, seen = stream_answers(DROPPED)

    async def main() -> list[Event]:
        async with AsyncFleet(URL, KEY, retries=QUICK, transport=httpx.MockTransport(handle)) as fleet:
            return [event async for event in fleet.events(RUN_ID)]

    events = asyncio.run(main())
    assert [e.id for e in events] == ["1", "2", "3", "4"] and events[-1].type == "end"
    assert [r.headers.get("Last-Event-ID") for r in seen] == [None, "1", "3"]


def test_events_resume_from_a_given_last_event_id() -> None:
    handle, seen = stream_answers([([sse(("8", "end", {}))], None)])
    with Fleet(URL, KEY, transport=httpx.MockTransport(handle)) as fleet:
        assert [e.id for e in fleet.events(RUN_ID, last_event_id="7")] == ["8"]
    assert seen[0].headers["Last-Event-ID"] == "7"


def test_events_give_up_after_the_attempts_of_streams_that_say_nothing() -> None:
    handle, seen = stream_answers([([], httpx.ReadError("reset"))] * 3)
    with (
        Fleet(URL, KEY, retries=QUICK, transport=httpx.MockTransport(handle)) as fleet,
        pytest.raises(FleetConnectionError) as err,
    ):
        list(fleet.events(RUN_ID))
    assert len(seen) == QUICK.max_attempts and isinstance(err.value.__cause__, httpx.ReadError)


def test_events_of_an_unknown_run_raise_not_found_without_retrying() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, json={"error": {"type": "not_found", "message": f"no run {RUN_ID}"}})

    with (
        Fleet(URL, KEY, retries=QUICK, transport=httpx.MockTransport(handle)) as fleet,
        pytest.raises(NotFoundError),
    ):
        next(fleet.events(RUN_ID))
    assert len(seen) == 1


# -- approvals --------------------------------------------------------------------------------------


class Recorder:
    """A MockTransport handler that records each request and its JSON body, answering `answer`."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str, Any, httpx.Headers]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.raw_path.decode().partition("?")[0]  # as sent: quoted
        self.requests.append((request.method, path, body, request.headers))
        return self.answer(request)


PENDING = {
    "run_id": RUN_ID, "agent": "scripted", "call_id": "call-1", "tool": "http.post",
    "args": {"url": "https://example.com/x", "json": {}}, "since": "2026-11-26T09:15:00.000000Z",
}  # fmt: skip


def test_approvals_gets_the_pending_list_and_parses_each_entry() -> None:
    recorder = Recorder(lambda request: httpx.Response(200, json={"approvals": [PENDING]}))
    with Fleet(URL, KEY, transport=httpx.MockTransport(recorder)) as fleet:
        [approval] = fleet.approvals()
    assert recorder.requests[0][:3] == ("GET", "/v1/approvals", None)
    assert (approval.run_id, approval.call_id, approval.tool) == (RUN_ID, "call-1", "http.post")
    assert approval.args == PENDING["args"] and approval.since == PENDING["since"]


def test_approvals_also_reads_a_bare_list_and_runs_that_show_waiting() -> None:
    waiting_run = run_body(waiting={"type": "approval", "call_id": "call-2", "tool": "echo", "args": {}})
    recorder = Recorder(lambda request: httpx.Response(200, json=[PENDING, waiting_run]))
    with Fleet(URL, KEY, transport=httpx.MockTransport(recorder)) as fleet:
        approvals = fleet.approvals()
    assert [(a.run_id, a.call_id, a.tool) for a in approvals] == [
        (RUN_ID, "call-1", "http.post"),
        (RUN_ID, "call-2", "echo"),
    ]


@pytest.mark.parametrize(
    ("decide", "comment", "body"),
    [
        ("approve", "looks right", {"decision": "approve", "comment": "looks right"}),
        ("approve", None, {"decision": "approve"}),
        ("deny", "wrong host", {"decision": "deny", "comment": "wrong host"}),
        ("deny", None, {"decision": "deny"}),
    ],
)
def test_approve_and_deny_post_the_decision_for_the_call(
    decide: str, comment: str | None, body: dict[str, Any]
) -> None:
    recorder = Recorder(lambda request: httpx.Response(200, json=run_body()))
    with Fleet(URL, KEY, transport=httpx.MockTransport(recorder)) as fleet:
        run = getattr(fleet, decide)(RUN_ID, "call/1", comment=comment)
    method, path, sent, headers = recorder.requests[0]
    assert (method, path, sent) == ("POST", f"/v1/runs/{RUN_ID}/approvals/call%2F1", body)
    assert headers["Authorization"] == f"Bearer {KEY}" and len(headers["Idempotency-Key"]) == 32
    assert isinstance(run, Run) and run.id == RUN_ID


def test_a_decision_answered_without_a_run_reads_the_run() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"decision": "approve"})
        return httpx.Response(200, json=run_body(status="succeeded"))

    recorder = Recorder(answer)
    with Fleet(URL, KEY, transport=httpx.MockTransport(recorder)) as fleet:
        run = fleet.approve(RUN_ID, "call-1")
    assert run.status == "succeeded"
    assert [(m, p) for m, p, _, _ in recorder.requests] == [
        ("POST", f"/v1/runs/{RUN_ID}/approvals/call-1"),
        ("GET", f"/v1/runs/{RUN_ID}"),
    ]


def test_a_decision_on_a_decided_call_raises_conflict() -> None:
    conflict = {"error": {"type": "conflict", "message": "call call-1 was already approved"}}
    recorder = Recorder(lambda request: httpx.Response(409, json=conflict))

    async def main() -> None:
        async with AsyncFleet(URL, KEY, retries=QUICK, transport=httpx.MockTransport(recorder)) as fleet:
            await fleet.deny(RUN_ID, "call-1")

    with pytest.raises(ConflictError) as err:
        asyncio.run(main())
    assert (err.value.type, err.value.message) == ("conflict", "call call-1 was already approved")
    assert len(recorder.requests) == 1


# -- runs, errors, settings -------------------------------------------------------------------------


def test_a_run_with_fields_the_client_does_not_know_parses_and_keeps_them_in_raw() -> None:
    body = run_body(
        status="stopped",
        stop_reason="killed",
        error={"type": "killed", "message": "incident 42", "extra": 1},
        usage={"steps": 3, "tool_calls": 1, "seconds": 1.5, "tokens": 10, "cost_usd": 0.01, "new": 5},
        finished_at="2026-11-26T09:14:41.000000Z",
        shard="eu-1",
    )
    run = Run.from_dict(body)
    assert run.done and not run.succeeded and run.error is not None
    assert (run.error.type, run.error.message) == ("killed", "incident 42")
    assert (run.usage.steps, run.usage.tokens, run.usage.cost_usd) == (3, 10, 0.01)
    assert run.finished_at is not None and run.finished_at.utcoffset() is not None
    assert run.raw["shard"] == "eu-1" and run.raw == body


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (400, "BadRequestError"), (401, "AuthenticationError"), (403, "PermissionDeniedError"),
        (404, "NotFoundError"), (409, "ConflictError"), (413, "PayloadTooLargeError"),
        (422, "InvalidRequestError"), (429, "RateLimitError"), (503, "ServiceUnavailableError"),
        (500, "ServerError"), (502, "ServerError"), (405, "FleetError"),
    ],
)  # fmt: skip
def test_each_status_has_its_error_class(status: int, name: str) -> None:
    assert error_class(status).__name__ == name


def test_an_error_without_the_fleets_body_still_raises_with_the_status() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="<html>bad gateway</html>"))
    with Fleet(URL, KEY, retries=NO_RETRIES, transport=transport) as fleet, pytest.raises(ServerError) as err:
        fleet.get(RUN_ID)
    assert (err.value.status, err.value.type) == (502, "http_502")
    assert "bad gateway" in err.value.message


def test_settings_come_from_fleet_api_url_and_fleet_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_API_URL", "http://from-env.test/")
    monkeypatch.setenv("FLEET_API_KEY", "env-key")
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=run_body())

    with Fleet(transport=httpx.MockTransport(handle)) as fleet:
        fleet.get(RUN_ID, steps=True)
        assert "env-key" not in repr(fleet)
    assert str(seen[0].url) == f"http://from-env.test/v1/runs/{RUN_ID}?steps=true"
    assert seen[0].headers["Authorization"] == "Bearer env-key"
    monkeypatch.delenv("FLEET_API_KEY")
    with pytest.raises(ValueError, match="FLEET_API_KEY"):
        Fleet()


def test_wait_long_polls_in_slices_of_at_most_30_s() -> None:
    answers = iter([run_body(), run_body(), run_body(status="succeeded", stop_reason="finish")])
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=next(answers))

    with Fleet(URL, KEY, transport=httpx.MockTransport(handle)) as fleet:
        run = fleet.wait(RUN_ID, timeout=100)
    assert run.status == "succeeded" and len(seen) == 3
    assert all(0 < float(r.url.params["wait"]) <= 30 for r in seen), [str(r.url) for r in seen]


def test_retries_wait_no_less_than_retry_after_capped_and_stop_at_the_limits() -> None:
    policy = Retries(max_attempts=3, base_delay_s=0.1, max_delay_s=5, max_total_s=20)
    assert policy.delay_s(1, retry_after_s=2) >= 2
    assert policy.delay_s(1, retry_after_s=600) == 5  # capped at max_delay_s
    assert 0.05 <= policy.delay_s(1) <= 0.1 and 0.1 <= policy.delay_s(2) <= 0.2
    assert policy.next_delay_s(3, 0.0, None) is None  # the attempts are used up
    assert policy.next_delay_s(1, 19.0, 2) is None  # the wait would end past max_total_s
    with pytest.raises(ValueError):
        Retries(max_attempts=0)
