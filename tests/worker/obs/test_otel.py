"""OpenTelemetry traces (issue 19, part 3), end to end with real processes.

A local OTLP/HTTP receiver (an http.server on a loopback port taking POST /v1/traces, decoding
each body as an ExportTraceServiceRequest) and a fake Sentry on the same server; a real fleet (a
redis-server, the API, a prefork agent worker, a tool worker) with OTEL_EXPORTER_OTLP_ENDPOINT
pointing at it, SENTRY_DSN too, and `observability.otel_content` on. One `llm` run against
tests/fake_openai.py: the model asks for one `http.get` (of a page on the receiver, full of PII),
then answers; the model and the page answer slowly, so each step parks and resumes in a new
delivery. Its spans form one trace: the API request, the queue wait and the steps under it,
the tool call and the model calls (GenAI attributes, token counts) under their steps, each from
the process that did the work; the PII corpus appears nowhere in the exported bytes; Sentry still
receives the run's transaction. Without the variable, nothing starts (cheap, in a subprocess).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from tests.harness import ROOT, FakeOpenAI, Fleet, running_fleet, wait_for
from tests.leaks import CORPUS, TEXTS, excerpt, leaks
from tests.request_bodies import decode_body, parse_envelope
from worker.keys import Keys

MODEL = "fake-model"
USAGE = [{"prompt_tokens": 21, "completion_tokens": 7}, {"prompt_tokens": 43, "completion_tokens": 3}]
SENTRY_KEY = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
# The model and the page answer this late, well past runtime.park_after_ms (50 ms): every step
# parks for its reply and resumes in a new execution, which must stay in the run's trace.
SLOW_S = 0.5


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@dataclass(frozen=True)
class Span:
    """One exported span, flattened: ids as hex, attributes as a dict, its process's resource."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name"))


class Receiver:
    """OTLP/HTTP (POST /v1/traces, protobuf) and Sentry's envelope endpoint on one loopback port;
    keeps every body as it came."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.otlp: list[bytes] = []
        self.sentry: list[bytes] = []
        self.other: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
                body = decode_body(raw, encoding)
                if self.path == "/v1/traces":
                    with outer.lock:
                        outer.otlp.append(body)
                    self._answer(ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")
                elif self.path.startswith("/api/"):
                    with outer.lock:
                        outer.sentry.append(body)
                    self._answer(b'{"id": "00000000000000000000000000000000"}', "application/json")
                else:
                    with outer.lock:
                        outer.other.append(self.path)
                    self._answer(b"", "text/plain", 404)

            def do_GET(self) -> None:  # the page the run's http.get fetches: the corpus, slowly
                time.sleep(SLOW_S)
                page = json.dumps({"texts": [c.value for c in CORPUS]}, ensure_ascii=False).encode()
                self._answer(page, "application/json")

            def _answer(self, body: bytes, content_type: str, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[Span]:
        with self.lock:
            bodies = list(self.otlp)
        out = []
        for body in bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for rs in request.resource_spans:
                resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(
                            Span(
                                name=s.name,
                                kind=s.kind,
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_id=s.parent_span_id.hex(),
                                start_ns=s.start_time_unix_nano,
                                end_ns=s.end_time_unix_nano,
                                attributes={a.key: _value(a.value) for a in s.attributes},
                                resource=resource,
                            )
                        )
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def fleet(fake: FakeOpenAI, receiver: Receiver) -> Iterator[Fleet]:
    config = {
        "agents": {"llm": {"base_url": f"{fake.url}/v1", "model": MODEL, "max_tokens_per_call": 100}},
        "tools": {"allowlist": ["http.get"]},
        # prompts, messages, arguments and results exported whole (the cap at its largest)
        "observability": {"otel_content": True, "result_max_bytes": 1_048_576, "traces_sample_rate": 1.0},
    }
    env = {
        "OPENAI_API_KEY": "sk-test-otel-0000000000000000",
        "OPENAI_BASE_URL": "",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export soon after a span ends
        "SENTRY_DSN": f"http://{SENTRY_KEY}@127.0.0.1:{receiver.port}/1",
    }
    with running_fleet(config=config, concurrency=2, env=env) as f:
        yield f


@pytest.fixture(scope="module")
def run(fleet: Fleet, fake: FakeOpenAI, receiver: Receiver) -> dict[str, Any]:
    """One `llm` run: a model call that asks for http.get, the tool call, a model call that answers."""
    pii = [c.value for c in TEXTS]
    page = f"{receiver.url}/page/{quote(pii[0])}?who={quote(pii[1])}&card={quote('4111 1111 1111 1111')}"
    fake.load(
        "otel",
        [
            {
                "tool_calls": [{"id": "call_1", "name": "http__get", "arguments": {"url": page}}],
                "usage": USAGE[0],
                "delay_s": SLOW_S,
            },
            {"content": "Found: " + " | ".join(pii[:20]), "usage": USAGE[1], "delay_s": SLOW_S},
        ],
    )
    prompt = "Look these up:\n" + "\n".join(pii) + "\nscenario:otel:one"
    run_id = str(fleet.submit(agent="llm", input={"prompt": prompt})["id"])
    done = fleet.wait(run_id, timeout=60)
    assert done["status"] == "succeeded", done
    assert [s.get("action") for s in done["steps"]] == ["model", "tool", "model"], done["steps"]
    return done


def _trace(receiver: Receiver, run_id: str, expected: int) -> list[Span]:
    """The run's trace once `expected` spans of it have come (exports are batched per process)."""
    found: list[Span] = []

    def complete() -> bool:
        spans = receiver.spans()
        ids = {s.trace_id for s in spans if s.attributes.get("fleet.run_id") == run_id}
        found[:] = [s for s in spans if s.trace_id in ids]
        return len(found) >= expected

    wait_for(complete, 20, "the run's spans did not all arrive")
    while True:  # and no more come: each process exports within OTEL_BSP_SCHEDULE_DELAY
        count = len(found)
        time.sleep(1.0)
        complete()
        if len(found) == count:
            return found


def test_one_run_is_one_trace_from_request_to_model_call(
    fleet: Fleet, run: dict[str, Any], receiver: Receiver
) -> None:
    # the request, the queue wait, 3 steps parked and resumed (model, tool, model), the answer's
    # step, 1 tool call, 2 model calls
    spans = _trace(receiver, run["id"], expected=12)
    assert len({s.trace_id for s in spans}) == 1, "the run's spans span more than one trace"
    by_id = {s.span_id: s for s in spans}

    (request,) = [s for s in spans if s.service == "agentfleet-api"]
    assert request.name == "POST /v1/runs"
    assert request.kind == PbSpan.SPAN_KIND_SERVER
    assert request.parent_id == ""  # the root: the backend's request started the trace
    (wait,) = [s for s in spans if s.name == "queue wait"]
    assert wait.parent_id == request.span_id
    assert request.start_ns <= wait.start_ns <= wait.end_ns

    # One span per execution of a step: each step parked for its slow reply, and has a second
    # span from the execution that resumed it (a new delivery, on any child of the agent worker).
    steps: dict[int, list[Span]] = {}
    for s in sorted((s for s in spans if s.name == "step"), key=lambda s: s.start_ns):
        steps.setdefault(int(s.attributes["fleet.step"]), []).append(s)
    assert sorted(steps) == [1, 2, 3, 4]
    (last,) = steps[4]  # the agent's final answer: a step without an action, that ends the run
    assert last.attributes["fleet.run.status"] == "succeeded"
    assert "fleet.action" not in last.attributes
    for number, action in ((1, "model"), (2, "tool"), (3, "model")):
        first, resumed = steps[number]
        assert first.attributes["fleet.action"] == action
        assert first.attributes["fleet.step.resumed"] is False
        assert first.attributes["fleet.step.parked"] is True
        assert resumed.attributes["fleet.step.resumed"] is True
        assert resumed.attributes["fleet.action"] == action
        assert resumed.attributes["fleet.outcome"] == "ok"
        assert first.end_ns <= resumed.start_ns
    step_spans = [s for group in steps.values() for s in group]
    assert all(s.parent_id == request.span_id for s in step_spans)
    # the steps ran in the agent worker's prefork children, which exported them themselves
    (worker,) = [p for p in fleet.procs if p.name == "worker"]
    children = {c.pid for c in fleet.pool_children(worker)}
    assert {s.resource["process.pid"] for s in step_spans} <= children
    assert worker.popen.pid not in {s.resource["process.pid"] for s in spans}

    (tool,) = [s for s in spans if s.name == "execute_tool http.get"]
    assert tool.service == "agentfleet-tool-worker"
    assert by_id[tool.parent_id] is steps[2][0]  # across processes, through the call's message
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "http.get"
    assert tool.attributes["fleet.outcome"] == "ok"

    chats = sorted((s for s in spans if s.name == f"chat {MODEL}"), key=lambda s: s.start_ns)
    assert [by_id[c.parent_id] for c in chats] == [steps[1][0], steps[3][0]]
    for chat, usage in zip(chats, USAGE, strict=True):
        assert chat.service == "agentfleet-tool-worker"
        assert chat.kind == PbSpan.SPAN_KIND_CLIENT
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.request.model"] == MODEL
        assert chat.attributes["gen_ai.provider.name"] == "openai"
        assert chat.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
        assert chat.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    # the run's trace id is the one its logs and record carry
    assert fleet.r.hget(Keys("fleet").run(run["id"]), "trace_id") == request.trace_id


def test_content_is_exported_redacted_and_no_pii_leaves_the_fleet(
    run: dict[str, Any], receiver: Receiver
) -> None:
    spans = _trace(receiver, run["id"], expected=12)
    (tool,) = [s for s in spans if s.name == "execute_tool http.get"]
    chats = [s for s in spans if s.name.startswith("chat ")]
    # content on: exported, with the corpus's placeholders where its values were
    assert "[EMAIL]" in tool.attributes["gen_ai.tool.call.arguments"]
    assert "[CARD]" in tool.attributes["gen_ai.tool.call.result"]
    assert all("[EMAIL]" in c.attributes["gen_ai.input.messages"] for c in chats)
    assert any("Found:" in c.attributes.get("gen_ai.output.messages", "") for c in chats)
    with receiver.lock:
        exported = b"\n".join(receiver.otlp).decode("utf-8", errors="replace")
    assert not leaks(exported), excerpt(exported, leaks(exported))


def test_sentry_keeps_receiving_the_run_beside_opentelemetry(run: dict[str, Any], receiver: Receiver) -> None:
    def transactions() -> list[dict[str, Any]]:
        with receiver.lock:
            bodies = list(receiver.sentry)
        return [
            json.loads(payload)
            for body in bodies
            for header, payload in parse_envelope(body)
            if header.get("type") == "transaction"
        ]

    wait_for(lambda: any(t.get("transaction") == "fleet.run_agent" for t in transactions()), 20)


def test_without_an_endpoint_nothing_starts() -> None:
    """No OTLP variable: the hooks are no-ops, no export thread starts, the SDK is not imported."""
    script = """
import json, sys, threading
from worker.obs import tracing
from worker.settings import Settings
on = tracing.setup(Settings(), "worker")
with tracing.RunTrace("ab" * 16, {"tenant": "t1", "agent": "scripted", "trace_id": "cd" * 16}) as t:
    t.queued({"created_ts": "1.0"}); t.begin_step(1); t.end_step({"action": "tool"})
with tracing.call_span(None, "echo", {}, "x:1:0", 0) as span:
    span.done({"ok": True, "result": {}}, True)
print(json.dumps({
    "on": on, "traceparent": tracing.current_traceparent(),
    "threads": sorted(t.name for t in threading.enumerate()),
    "sdk": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"on": False, "traceparent": None, "threads": ["MainThread"], "sdk": []}, seen


def test_the_sdk_switches_honour_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.obs import tracing

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert tracing.enabled()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.enabled()
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not tracing.enabled()
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    assert tracing.enabled()
