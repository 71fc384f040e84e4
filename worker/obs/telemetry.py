"""Logging and Sentry for every fleet process, set up once at start with the same settings.

Sentry (when SENTRY_DSN is set): no default PII, no local variables, no request bodies, the
fleet's own field names scrubbed, and every event passed through the same redaction as the logs.
Traces propagate from the API request to the run task (Celery integration).

OpenTelemetry traces (worker/obs/tracing.py, when OTEL_EXPORTER_OTLP_ENDPOINT is set) run beside
Sentry without touching it: the fleet's spans go through a tracer provider of their own, never
the global one, and Sentry's OTel integrations stay off, so neither installs over the other.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import structlog

from worker.obs.logs import configure_logging
from worker.obs.redact import DEFAULT_FIELDS, redact
from worker.settings import Settings

log = structlog.get_logger("agentfleet")


def setup_logging(settings: Settings) -> None:
    configure_logging(
        settings.log_level,
        log_format=settings.log_format,
        redaction=settings.observability.redaction,
        max_line_bytes=settings.observability.log_max_line_bytes,
    )
    logging.captureWarnings(True)  # Python warnings become log lines too (JSON, redacted, capped)
    # At DEBUG Celery's pool logs every task message whole (tool arguments included): never.
    logging.getLogger("celery.pool").setLevel(max(logging.INFO, logging.getLogger().getEffectiveLevel()))
    # httpx logs every request at INFO: a line per tool call, with its URL (the tool worker's own
    # `tool executed` line says what matters). At DEBUG they stay.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)


SAFE_REQUEST_HEADERS = frozenset({"content-type", "content-length", "user-agent", "accept", "host"})


def scrub_event(event: Any, hint: Any) -> Any:
    """Sentry's before_send(_transaction): a request keeps its method, its URL without the query
    and a few harmless headers (a query string or a header may hold anything, URL-encoded past
    any pattern); then the same redaction as the logs, over the whole event."""
    request = event.get("request") if isinstance(event, dict) else None
    if isinstance(request, dict):
        headers = request.get("headers")
        event["request"] = {
            "method": request.get("method"),
            "url": str(request.get("url") or "").split("?", 1)[0],
            "headers": {k: v for k, v in headers.items() if str(k).lower() in SAFE_REQUEST_HEADERS}
            if isinstance(headers, dict)
            else {},
        }
    return redact(event)


def setup_tracing(settings: Settings, component: str) -> bool:
    """Start OpenTelemetry traces in this process when the environment asks (worker/obs/tracing.py);
    True when on. Call it after any fork: in a prefork child, not in its parent."""
    from worker.obs import tracing

    if not tracing.setup(settings, component):
        return False
    endpoint = next((os.environ[n] for n in tracing.ENDPOINT_VARS if os.environ.get(n, "").strip()), "")
    log.info(
        "opentelemetry traces on",
        endpoint=endpoint.split("?", 1)[0],
        content=settings.observability.otel_content,
    )
    return True


def setup_sentry(settings: Settings, component: str) -> bool:
    """Start Sentry in this process when SENTRY_DSN is set; True when it did."""
    if settings.sentry_dsn is None:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        event_scrubber=EventScrubber(denylist=sorted({*DEFAULT_DENYLIST, *DEFAULT_FIELDS}), recursive=True),
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        # Trace headers (with the DSN's public key) go to no outside host a tool calls; Celery
        # propagates traces from the API to the tasks on its own.
        trace_propagation_targets=[],
        traces_sample_rate=settings.observability.traces_sample_rate,
        integrations=[CeleryIntegration(propagate_traces=True)],
        server_name=component,
    )
    sentry_sdk.set_tag("component", component)
    return True
