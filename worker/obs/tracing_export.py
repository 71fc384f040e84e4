"""The OpenTelemetry SDK side of worker/obs/tracing.py: the tracer provider, and the exporter that
redacts every span before it leaves the process. Imported only when tracing is on (the SDK and
the OTLP exporter take about a second to import)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status
from opentelemetry.util.types import Attributes

from worker.obs.redact import REDACTED, is_secret_key, redact_text


def _text(value: str) -> str:
    """`redact_text`, after decoding percent-encoding (a URL's query can hide an e-mail from it)."""
    return redact_text(unquote(value) if "%" in value else value)


# The caller's address, which the HTTP instrumentation records on the API's spans: personal data
# that Sentry (send_default_pii=False) and the logs leave out too.
PEER_ATTRIBUTES = frozenset(
    {
        "client.address",
        "client.port",
        "network.peer.address",
        "network.peer.port",
        "net.peer.ip",
        "net.peer.port",
        "net.sock.peer.addr",
        "net.sock.peer.port",
        "http.client_ip",
    }
)


def redact_attributes(attributes: Attributes) -> dict[str, Any]:
    """A span's attributes as the logs would show them: no caller's address; a value under a
    secret-looking key is `[REDACTED]` whole; every other string (alone or in a list) passes
    `redact_text`, decoded from percent-encoding first."""
    out: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        if key in PEER_ATTRIBUTES:
            continue
        if is_secret_key(key):
            out[key] = REDACTED
        elif isinstance(value, str):
            out[key] = _text(value)
        elif isinstance(value, tuple | list) and any(isinstance(v, str) for v in value):
            out[key] = [_text(v) if isinstance(v, str) else v for v in value]
        else:
            out[key] = value
    return out


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of `span` with its name, attributes, events and status message redacted."""
    status = span.status
    if status.description:
        status = Status(status.status_code, _text(status.description))
    return ReadableSpan(
        name=_text(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=redact_attributes(span.attributes),
        events=[Event(_text(e.name), redact_attributes(e.attributes), e.timestamp) for e in span.events],
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingExporter(SpanExporter):
    """Redacts each span, then hands the batch to `inner`. It runs on the batch processor's
    thread, so redaction costs nothing on the path of a run."""

    def __init__(self, inner: SpanExporter, redacting: bool = True) -> None:
        self.inner = inner
        self.redacting = redacting

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([redact_span(s) for s in spans] if self.redacting else spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _names_service() -> bool:
    """Whether the environment names the service (OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES)."""
    if os.environ.get("OTEL_SERVICE_NAME", "").strip():
        return True
    pairs = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
    return any(pair.split("=", 1)[0].strip() == "service.name" for pair in pairs)


def make_provider(component: str, redacting: bool) -> TracerProvider:
    """A tracer provider exporting over OTLP/HTTP (protobuf) in batches, from a thread it starts
    now. The SDK reads the standard variables: the endpoint, OTEL_EXPORTER_OTLP_HEADERS and
    _TIMEOUT, OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_*, OTEL_RESOURCE_ATTRIBUTES; the service is
    `agentfleet-<component>` unless OTEL_SERVICE_NAME names it."""
    attributes: dict[str, Any] = {"process.pid": os.getpid(), "agentfleet.component": component}
    if not _names_service():
        attributes["service.name"] = f"agentfleet-{component}"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(RedactingExporter(OTLPSpanExporter(), redacting)))
    return provider
