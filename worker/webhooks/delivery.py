"""One attempt of a webhook delivery, on a tool worker: prepare, POST, settle.

`prepare` (the Celery thread, sync Redis) drops an attempt whose claim is no longer the
delivery's latest, checks the target again against the current config (a host taken off the
allow lists, or a tenant whose secret is gone, ends the delivery as `refused`), and fixes the body
at the first attempt, so every retry sends the same bytes: `{"id", "event", "run_id",
"created_at", "data"}`, where `id` is the delivery's id (also `X-Fleet-Event-Id`), `created_at`
when the event happened, and `data` the event's data (for `end`, the run as `GET /v1/runs/{id}`
shows it; a run whose record is already gone ends the delivery as `expired`).

`deliver` (the process's event loop, worker/gateway/pool.py) POSTs once through the HTTP tools'
client (`http_client.send`: resolved once, pinned to the checked address, within
`webhooks.timeout_s`, no redirects followed), signed (worker/webhooks/signing.py), and settles:
2xx `delivered`, 410 `gone`, anything else (another status, a timeout, a connection error)
`failed`, retried after `webhooks.retry_backoff_s` with jitter (worker/webhooks/outbox.py).
A log line per attempt names the delivery, the run, the event and the outcome; never the URL's
path or query (they may hold a token) nor the secret.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
import structlog

from worker.run.store import iso, public_view
from worker.settings import Settings
from worker.tools.base import ToolContext, ToolFailure
from worker.tools.http_client import send
from worker.webhooks import target
from worker.webhooks.outbox import Outbox, Outcome, retry_delay_s
from worker.webhooks.signing import signature_header

log = structlog.get_logger("agentfleet.webhooks")
USER_AGENT = "agentfleet-webhooks/1"

LoadRun = Callable[[str], "dict[str, str] | None"]


@dataclass(frozen=True)
class Attempt:
    """What one attempt sends, and what settling it needs."""

    delivery_id: str
    claim: str
    run_id: str
    event: str
    url: str
    body: bytes = field(repr=False)
    secret: str = field(repr=False)  # never in a log line or an error
    failures: int  # the delivery's failed attempts before this one


def body_of(delivery_id: str, raw: dict[str, str], load_run: LoadRun) -> str | None:
    """The delivery's JSON body, or None when its data is gone (an `end` whose run expired)."""
    if raw.get("data"):
        data = json.loads(raw["data"])
    else:
        run = load_run(raw["run_id"])
        if run is None:
            return None
        data = public_view(run)
    created_at = iso(float(raw["first_ts"]))
    envelope = {"id": delivery_id, "event": raw["event"], "run_id": raw["run_id"], "created_at": created_at,
                "data": data}  # fmt: skip
    return json.dumps(envelope, separators=(",", ":"))


def prepare(
    outbox: Outbox,
    load_run: LoadRun,
    settings: Settings,
    secrets: Mapping[str, str],
    delivery_id: str,
    claim: str,
) -> Attempt | None:
    """The attempt to make for this claim, or None (settled, superseded, refused or expired).
    `secrets`: tenant -> webhook secret (Settings.tenant_webhook_secrets, read at start)."""
    raw = outbox.load(delivery_id)
    if raw is None or raw.get("claims") != claim:
        return None
    run_id, tenant = raw["run_id"], raw["tenant"]
    try:
        url = target.parse_url(raw["url"])
        target.check_host(url, tenant, settings)
        secret = secrets.get(tenant)
        if secret is None:
            raise target.WebhookRefused("webhook: no webhook secret for this tenant")
    except target.WebhookRefused as refused:
        counted = outbox.settle(delivery_id, claim, Outcome.REFUSED, run_id)
        log.warning(
            "webhook refused", delivery_id=delivery_id, run_id=run_id, outcome=counted, reason=str(refused)
        )
        return None
    body = raw.get("body") or body_of(delivery_id, raw, load_run)
    if body is None:
        counted = outbox.settle(delivery_id, claim, Outcome.EXPIRED, run_id)
        log.warning(
            "webhook dropped: its run is gone", delivery_id=delivery_id, run_id=run_id, outcome=counted
        )
        return None
    frozen = outbox.freeze_body(delivery_id, body)
    if frozen is None:
        return None
    return Attempt(delivery_id, claim, run_id, raw["event"], str(url), frozen.encode(), secret,
                   int(raw.get("attempts") or 0))  # fmt: skip


async def post(attempt: Attempt, settings: Settings) -> tuple[Outcome, str]:
    """POST the attempt once: (`delivered`, `gone` or `failed`, what happened)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Fleet-Event": attempt.event,
        "X-Fleet-Event-Id": attempt.delivery_id,
        "X-Fleet-Signature": signature_header(attempt.secret, attempt.body),
    }
    ctx = ToolContext(call_id=attempt.delivery_id, timeout_s=settings.webhooks.timeout_s, settings=settings)
    try:
        # the same SSRF guard as http.get: a host in the webhook allow lists (prepare checked it)
        # may still not resolve to a private or metadata address, unless tools.http.allow_hosts
        # lists it; the connection goes to the checked address
        result = await send("POST", httpx.URL(attempt.url), ctx, headers=headers, content=attempt.body,
                            follow_redirects=False)  # fmt: skip
    except ToolFailure as failure:
        outcome = Outcome.GONE if failure.status == 410 else Outcome.FAILED
        return outcome, f"{failure.type}: {failure.message}"
    status = int(result["status"])
    return (Outcome.DELIVERED if 200 <= status < 300 else Outcome.FAILED), f"HTTP {status}"


def settle(outbox: Outbox, settings: Settings, attempt: Attempt, outcome: Outcome, detail: str) -> Outcome:
    """Record the attempt's outcome; a failure is retried after the next backoff."""
    section = settings.webhooks
    next_ts = time.time() + retry_delay_s(attempt.failures + 1, section.retry_backoff_s)
    counted = outbox.settle(attempt.delivery_id, attempt.claim, outcome, attempt.run_id, next_ts=next_ts,
                            max_age_s=section.max_age_s)  # fmt: skip
    log.info(
        "webhook attempt",
        delivery_id=attempt.delivery_id,
        run_id=attempt.run_id,
        webhook_event=attempt.event,
        attempt=attempt.failures + 1,
        outcome=counted,
        detail=detail,
        **({"retry_in_s": round(next_ts - time.time(), 3)} if counted is Outcome.FAILED else {}),
    )
    return counted


async def deliver(outbox: Outbox, settings: Settings, attempt: Attempt) -> Outcome:
    """One attempt on the event loop; the settling round trip runs off the loop."""
    outcome, detail = await post(attempt, settings)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, settle, outbox, settings, attempt, outcome, detail)
