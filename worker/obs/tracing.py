"""OpenTelemetry traces: one trace per run, exported over OTLP/HTTP (protobuf). Off by default.

On when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, unless
`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Each process that makes spans starts its
own provider and export thread (`setup`): the API at start, a tool worker (threads pool) at start,
an agent worker in each prefork child after the fork (`worker_process_init`), never in the parent,
whose thread would not survive the fork. Each flushes on shutdown (`shutdown`).

The trace of a run:

    POST /v1/runs                 API, server span; its context is stored in the run's hash
    ├── queue wait                created -> started, recorded by the agent worker that starts it
    ├── step                      agent worker, one per execution of a step (a parked step has a
    │   │                         second one when it resumes, on whichever worker)
    │   └── execute_tool <tool>   tool worker; the step's context travels in the call's message
    │       or chat <model>       (a model call, GenAI semantic conventions)
    └── step ...

Every span is redacted like the logs (worker/obs/redact.py) on the export thread. Prompts, messages,
tool arguments and results are exported only with `observability.otel_content`, and then
redacted and capped at `observability.result_max_bytes` each.

The fleet's spans go through its own provider only; the global tracer provider stays whatever
something else (Sentry's OTLP integration, a user's instrumentation) sets, so neither replaces the
other and no span reaches this exporter unredacted. Sentry keeps its own traces beside these.

Nothing from OpenTelemetry is imported while tracing is off: every hook here is then a no-op.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from worker.obs.logs import cap_bytes
from worker.obs.redact import MAX_SCAN_CHARS, redact

if TYPE_CHECKING:
    from types import TracebackType

    from fastapi import FastAPI
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from worker.settings import Settings

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
TRACEPARENT = "traceparent"  # the W3C header: a field of the run's hash, a header of a tool call's message
MODEL_TOOL = "llm"  # worker.tools.MODEL_TOOL, named here so this module imports no tools
GEN_AI_PROVIDER = "openai"  # the model service speaks the OpenAI chat-completions API
API_UNTRACED = "healthz,readyz,metrics"  # probes and scrapes make no traces

_lock = threading.Lock()
_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_content = False  # observability.otel_content
_redacting = True  # observability.redaction
_content_bytes = 2048  # observability.result_max_bytes


def enabled() -> bool:
    """Whether the environment asks for traces (an OTLP endpoint, and the SDK not disabled)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARS)


def is_on() -> bool:
    """Whether this process exports spans (`setup` started it)."""
    return _tracer is not None


def setup(settings: Settings, component: str) -> bool:
    """Start exporting this process's spans when `enabled()`; True when on. Idempotent; call it
    in the process that makes the spans, after any fork. `component` names the service
    (`agentfleet-<component>`) unless OTEL_SERVICE_NAME does."""
    global _provider, _tracer, _content, _redacting, _content_bytes
    with _lock:
        if _provider is not None:
            return True
        if not enabled():
            return False
        from worker.obs.tracing_export import make_provider

        obs = settings.observability
        _content, _redacting, _content_bytes = obs.otel_content, obs.redaction, obs.result_max_bytes
        _provider = make_provider(component, obs.redaction)
        _tracer = _provider.get_tracer("agentfleet")
        return True


def shutdown() -> None:
    """Export what is left and stop the export thread (at the end of a process)."""
    global _provider, _tracer
    with _lock:
        provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def instrument_api(app: FastAPI) -> None:
    """A server span per API request (not for probes and /metrics), continuing a caller's
    W3C trace context; a no-op while tracing is off."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=_provider, excluded_urls=API_UNTRACED, exclude_spans=["receive", "send"]
    )


def current_traceparent() -> str | None:
    """The current span's context as a W3C `traceparent`, to store or send; None when off."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get(TRACEPARENT)


def trace_headers() -> dict[str, str]:
    """The current span's context as message headers (`traceparent`); none while off."""
    traceparent = current_traceparent()
    return {TRACEPARENT: traceparent} if traceparent else {}


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex), for the run's `trace_id`; None when off or none."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def _parent(traceparent: str | None) -> Context | None:
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({TRACEPARENT: traceparent})


def run_context(run_id: str, raw: dict[str, str]) -> Context | None:
    """The context a run's spans hang from: the API request's, stored in the run. A run created
    without it (by an API that did not trace) gets a parent made from its own ids, so its spans
    still share one trace, under the run's `trace_id`."""
    stored = _parent(raw.get(TRACEPARENT))
    if stored is not None:
        return stored
    from opentelemetry import trace

    try:
        trace_id, span_id = int(raw.get("trace_id") or "", 16), int(run_id[:16], 16)
    except ValueError:
        return None
    if not (0 < trace_id < 2**128 and 0 < span_id < 2**64):
        return None
    parent = trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(1))
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def plain(value: Any, depth: int = 0) -> Any:
    """`value` with what hides text from the redaction's patterns undone in its strings:
    percent-encoding decoded (a URL's query may hold `alice%40example.com`), and a string that
    holds a JSON object or array replaced by what it holds (a tool result the agent passes back
    to the model as JSON text, its non-ASCII escaped and its keys quoted twice)."""
    if depth > 32:
        return value
    if isinstance(value, str):
        text = unquote(value) if "%" in value else value
        if text[:1] in ("{", "[") and len(text) <= 4 * MAX_SCAN_CHARS:
            try:
                return plain(json.loads(text), depth + 1)
            except ValueError:
                pass
        return text
    if isinstance(value, dict):
        return {k: plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value]
    return value


def content(value: Any) -> str:
    """Prompt or tool content as an attribute: made `plain`, redacted (keys named like secrets
    too), capped at `observability.result_max_bytes`."""
    data = redact(plain(value)) if _redacting else value
    return json.dumps(cap_bytes(data, _content_bytes), ensure_ascii=False, default=str)


def _ns(ts: float) -> int:
    return int(ts * 1e9)


class RunTrace:
    """The spans of one execution of a run on an agent worker: its queue wait (first start
    only) and one span per step, current while the step acts (so its tool calls carry it)."""

    def __init__(self, run_id: str, raw: dict[str, str]) -> None:
        self._parent = run_context(run_id, raw) if _tracer is not None else None
        self._attributes = {
            "fleet.run_id": run_id,
            "fleet.tenant": raw["tenant"],
            "fleet.agent": raw["agent"],
        }
        self._span: Span | None = None
        self._token: object = None
        self._thread = 0  # the thread whose context holds the step's span (the run's)

    def __enter__(self) -> RunTrace:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._span is not None and kind is not None:
            self._span.set_attribute("error.type", kind.__name__)
        self._end()

    def queued(self, raw: dict[str, str]) -> None:
        """The queue wait: from the run's creation to this, its first start."""
        if _tracer is None:
            return
        try:
            created, started = float(raw["created_ts"]), float(raw.get("started_ts") or time.time())
        except (KeyError, ValueError):
            return
        span = _tracer.start_span(
            "queue wait", context=self._parent, attributes=self._attributes, start_time=_ns(created)
        )
        span.end(end_time=_ns(max(created, started)))

    def begin_step(self, step: int, resumed: bool = False) -> None:
        """A step begins (or a parked one resumes) in this execution."""
        if _tracer is None:
            return
        from opentelemetry import context, trace

        self._end()
        attributes: dict[str, Any] = {**self._attributes, "fleet.step": step, "fleet.step.resumed": resumed}
        self._span = _tracer.start_span("step", context=self._parent, attributes=attributes)
        self._token = context.attach(trace.set_span_in_context(self._span))
        self._thread = threading.get_ident()

    def end_step(self, entry: dict[str, Any]) -> None:
        """The step is done: its step-log entry gives the action, tool and outcome."""
        if self._span is not None:
            self._span.set_attribute("fleet.action", str(entry.get("action")))
            if entry.get("tool"):
                self._span.set_attribute("fleet.tool", str(entry["tool"]))
            ok = entry.get("ok", True)
            self._span.set_attribute("fleet.outcome", "ok" if ok else str(entry.get("error_type")))
        self._end()

    def parked(self, action: str) -> None:
        """The step's `action` waits without a process; the step goes on in a later execution."""
        if self._span is not None:
            self._span.set_attributes({"fleet.action": action, "fleet.step.parked": True})
        self._end()

    def finished(self, status: str, stop_reason: str) -> None:
        """The run ended during its current step (if one is open)."""
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_attributes({"fleet.run.status": status, "fleet.run.stop_reason": stop_reason})
            if status == "failed":
                self._span.set_status(Status(StatusCode.ERROR, stop_reason))
        self._end()

    def _end(self) -> None:
        if self._span is None:
            return
        from opentelemetry import context

        span, self._span = self._span, None
        token, self._token = self._token, None
        # The watchdog (another thread) may end a run at its deadline: only the run's own thread
        # can take the span out of its context.
        if token is not None and threading.get_ident() == self._thread:
            context.detach(token)  # type: ignore[arg-type]
        span.end()


class CallSpan:
    """The span of one attempt of a tool or model call, as a tool worker executes it."""

    def __init__(self, span: Span | None, tool: str) -> None:
        self.span = span
        self.tool = tool

    def done(self, result: dict[str, Any], ran: bool) -> None:
        """The attempt's envelope (and whether the tool ran) onto the span."""
        span = self.span
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("fleet.tool.ran", ran)
        error = None if result.get("ok") else str((result.get("error") or {}).get("type", "tool_error"))
        span.set_attribute("fleet.outcome", error or "ok")
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        answer = result.get("result") if result.get("ok") else None
        if self.tool == MODEL_TOOL:
            if isinstance(answer, dict):
                usage = answer.get("usage") or {}
                span.set_attributes(
                    {
                        "gen_ai.response.model": str(answer.get("model")),
                        "gen_ai.usage.input_tokens": int(usage.get("prompt_tokens") or 0),
                        "gen_ai.usage.output_tokens": int(usage.get("completion_tokens") or 0),
                        "gen_ai.response.finish_reasons": [str(answer.get("finish_reason"))],
                    }
                )
                if _content:
                    message = {"role": "assistant", **(answer.get("message") or {})}
                    span.set_attribute("gen_ai.output.messages", content([message]))
        elif _content:
            span.set_attribute("gen_ai.tool.call.result", content(result))


@contextmanager
def call_span(
    traceparent: str | None, tool: str, args: Any, call_id: str, attempt: int
) -> Iterator[CallSpan]:
    """A span around one attempt on a tool worker, a child of the run's step (`traceparent`, from
    the call's message). A model call follows the GenAI conventions (`chat <model>`)."""
    if _tracer is None:
        yield CallSpan(None, tool)
        return
    from opentelemetry.trace import SpanKind

    attributes: dict[str, Any] = {
        "fleet.run_id": call_id.split(":", 1)[0],
        "fleet.call_id": call_id,
        "fleet.attempt": attempt,
    }
    args = args if isinstance(args, dict) else {}
    if tool == MODEL_TOOL:
        model = str(args.get("model"))
        name, kind = f"chat {model}", SpanKind.CLIENT
        attributes.update(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": GEN_AI_PROVIDER,
                "gen_ai.system": GEN_AI_PROVIDER,  # the older name of the provider, still read widely
                "gen_ai.request.model": model,
            }
        )
        if isinstance(args.get("max_tokens"), int):
            attributes["gen_ai.request.max_tokens"] = args["max_tokens"]
        if _content:
            attributes["gen_ai.input.messages"] = content(args.get("messages"))
    else:
        name, kind = f"execute_tool {tool}", SpanKind.INTERNAL
        attributes.update({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool})
        if _content:
            attributes["gen_ai.tool.call.arguments"] = content(args)
    span = _tracer.start_span(name, context=_parent(traceparent), kind=kind, attributes=attributes)
    try:
        yield CallSpan(span, tool)
    except BaseException as exc:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("error.type", type(exc).__name__)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        span.end()
