"""Logging and Sentry for every fleet process, set up once at start with the same settings.

Sentry (when SENTRY_DSN is set): no default PII, no local variables, no request bodies, the
fleet's own field names scrubbed, and every event passed through the same redaction as the logs.
Traces propagate from the API request to the run task (Celery integration).
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

from worker.logs import configure_logging
from worker.redact import DEFAULT_FIELDS, redact
from worker.settings import Settings

log = structlog.get_logger("agentfleet")


def setup_logging(settings: Settings) -> None:
    configure_logging(
        settings.log_level,
        redaction=settings.observability.redaction,
        max_line_bytes=settings.observability.log_max_line_bytes,
    )
    logging.captureWarnings(True)  # Python warnings become log lines too (JSON, redacted, capped)


def scrub_event(event: Any, hint: Any) -> Any:
    """Sentry's before_send: the same redaction as the logs, over the whole event."""
    return redact(event)


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
        traces_sample_rate=settings.observability.traces_sample_rate,
        integrations=[CeleryIntegration(propagate_traces=True)],
        server_name=component,
    )
    sentry_sdk.set_tag("component", component)
    return True
