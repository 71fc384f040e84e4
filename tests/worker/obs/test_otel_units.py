"""Units of worker/obs/tracing.py and worker/obs/tracing_export.py: the redaction every span passes before
it is exported, content made plain before it is redacted, and the provider kept apart from the
global one (Sentry's). The fleet end to end is tests/worker/obs/test_otel.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from tests.harness import ROOT
from tests.leaks import TEXTS, leaks
from worker.obs import tracing
from worker.obs.tracing_export import RedactingExporter


def _exported(redacting: bool = True) -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedactingExporter(memory, redacting)))
    return provider, memory


def test_every_string_of_a_span_is_redacted_before_export() -> None:
    provider, memory = _exported()
    corpus = [c.value for c in TEXTS]
    with provider.get_tracer("t").start_as_current_span(f"call {corpus[0]}") as span:
        span.set_attributes({f"text.{i}": value for i, value in enumerate(corpus)})
        span.set_attribute("texts", corpus)
        span.set_attribute("url.query", "who=alice%40example.com")
        span.set_attribute("api_key", "plain-looking-value")  # a key named like a secret
        span.set_attribute("fleet.step", 3)
        span.set_attributes({"client.address": "203.0.113.7", "client.port": 50123})
        span.add_event("note", {"detail": corpus[1]})
        span.set_status(Status(StatusCode.ERROR, corpus[2]))
    (out,) = memory.get_finished_spans()
    attributes = dict(out.attributes or {})
    text = json.dumps(
        [
            out.name,
            attributes,
            [(e.name, dict(e.attributes or {})) for e in out.events],
            out.status.description,
        ],
        ensure_ascii=False,
    )
    assert not leaks(text), leaks(text)
    assert attributes["url.query"] == "who=[EMAIL]"
    assert attributes["api_key"] == "[REDACTED]"
    assert attributes["fleet.step"] == 3  # numbers, ids and names stay
    assert "client.address" not in attributes and "client.port" not in attributes
    assert out.status.status_code is StatusCode.ERROR


def test_with_redaction_off_spans_go_out_as_they_are() -> None:
    provider, memory = _exported(redacting=False)
    with provider.get_tracer("t").start_as_current_span("s") as span:
        span.set_attribute("who", "alice@example.com")
    (out,) = memory.get_finished_spans()
    assert (out.attributes or {})["who"] == "alice@example.com"


def test_content_is_made_plain_then_redacted() -> None:
    message = {"role": "tool", "content": json.dumps({"body": json.dumps({"password": "hunter2-x"})})}
    args = {"url": "http://h/p?to=j%C3%B6rg.m%C3%BCller%40example.de"}
    assert tracing.plain(message) == {"role": "tool", "content": {"body": {"password": "hunter2-x"}}}
    exported = tracing.content([message, args])
    assert "hunter2" not in exported and "ller@" not in exported
    assert "[REDACTED]" in exported and "[EMAIL]" in exported
    assert tracing.plain("[not json") == "[not json"  # text that only looks like JSON stays text


def test_the_fleet_never_installs_the_global_tracer_provider_beside_sentry() -> None:
    """Sentry and traces both on in one process: Sentry is initialized, the fleet's spans have a
    provider of their own, and the global provider is left to whoever sets it."""
    script = """
import json
from opentelemetry import trace
from worker.obs import tracing
from worker.settings import Settings
from worker.obs.telemetry import setup_sentry, setup_tracing
import sentry_sdk
settings = Settings()
sentry = setup_sentry(settings, "worker")
on = setup_tracing(settings, "worker")
print(json.dumps({
    "sentry": sentry and sentry_sdk.is_initialized(), "otel": on and tracing.is_on(),
    "global": type(trace.get_tracer_provider()).__name__,
}))
tracing.shutdown()
"""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FLEET_", "SENTRY_"))},
        "SENTRY_DSN": "http://0a1b2c3d4e5f40718293a4b5c6d7e8f9@127.0.0.1:9/1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    }
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith('{"sentry"')]
    seen = json.loads(line)
    assert seen == {"sentry": True, "otel": True, "global": "ProxyTracerProvider"}, seen


def test_a_run_stored_without_a_span_context_still_has_one_trace_its_own_trace_id() -> None:
    """A run created by an API that did not trace: its spans hang from a parent made from its
    own ids, the same for every execution, so they still share one trace (the run's trace_id)."""
    from opentelemetry import trace

    run_id, trace_id = "7f" * 16, "3c" * 16
    contexts = [tracing.run_context(run_id, {"trace_id": trace_id}) for _ in range(2)]
    parents = [trace.get_current_span(c).get_span_context() for c in contexts]
    assert parents[0] == parents[1]
    assert trace.format_trace_id(parents[0].trace_id) == trace_id and parents[0].is_remote
    stored = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    raw = {"trace_id": trace_id, "traceparent": stored}
    request = trace.get_current_span(tracing.run_context(run_id, raw))
    assert trace.format_span_id(request.get_span_context().span_id) == "cd" * 8  # the stored one
    assert tracing.run_context(run_id, {"trace_id": "not hex"}) is None
