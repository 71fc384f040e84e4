"""Where a run's webhook may go: the checks at submit, and again before every delivery.

A webhook is `{"url", "events"}`. The URL is absolute http(s) with a host and no user or password
(a credential would sit in the run record); its host, as the SSRF guard compares hosts
(`netguard.allowed_hosts`), must be in `webhooks.allow_hosts` or in
`webhooks.tenant_allow_hosts.<tenant>`, and the tenant must have a signing secret. The delivery
then passes the SSRF guard of `http.get` too (worker/webhooks/delivery.py): the host is resolved
once, its addresses must be global unless `tools.http.allow_hosts` lists it, and the connection
goes to exactly that address.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import httpx

from worker.run.events import APPROVAL_REQUESTED, END
from worker.settings import Settings
from worker.tools.netguard import allowed_hosts

EVENTS = (END, APPROVAL_REQUESTED)  # the run events a webhook may subscribe to
URL_MAX_CHARS = 2048


class WebhookRefused(ValueError):
    """A webhook the fleet will not deliver to; the message names the field and never a secret."""


@dataclass(frozen=True)
class Webhook:
    """A checked webhook, as the run record stores it (`to_json`)."""

    url: str
    events: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({"url": self.url, "events": list(self.events)}, separators=(",", ":"))


def tenant_hosts(settings: Settings, tenant: str) -> frozenset[str]:
    """The hosts `tenant`'s webhooks may target, normalised as the SSRF guard compares them."""
    section = settings.webhooks
    return allowed_hosts([*section.allow_hosts, *section.tenant_allow_hosts.get(tenant, [])])


def parse_url(text: str) -> httpx.URL:
    """An absolute http(s) URL with a host and no userinfo, else WebhookRefused."""
    if len(text) > URL_MAX_CHARS:
        raise WebhookRefused(f"webhook.url: longer than {URL_MAX_CHARS} characters")
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise WebhookRefused("webhook.url: not a valid URL") from None
    if url.scheme not in ("http", "https"):
        raise WebhookRefused(f"webhook.url: scheme {url.scheme!r} is not http or https")
    if not url.host:
        raise WebhookRefused("webhook.url: has no host")
    if url.userinfo:
        raise WebhookRefused("webhook.url: must not hold a user name or password (deliveries are signed)")
    return url


def check_host(url: httpx.URL, tenant: str, settings: Settings) -> None:
    """Refuse a URL whose host is not in the tenant's webhook allow lists."""
    if url.host.lower() not in tenant_hosts(settings, tenant):
        raise WebhookRefused(
            f"webhook.url: host {url.host!r} is not allowed for webhooks "
            "(the operator lists hosts in webhooks.allow_hosts or webhooks.tenant_allow_hosts)"
        )


def check(
    url: str, events: list[str], tenant: str, settings: Settings, signed_tenants: Collection[str]
) -> Webhook:
    """The checked webhook of a submission by `tenant`, else WebhookRefused (a 422).
    `signed_tenants`: the tenants with a webhook secret (Settings.tenant_webhook_secrets)."""
    if not events:
        raise WebhookRefused("webhook.events: name at least one of " + ", ".join(EVENTS))
    for name in events:
        if name not in EVENTS:
            raise WebhookRefused(f"webhook.events: unknown event {name!r}; known: " + ", ".join(EVENTS))
    parsed = parse_url(url)
    check_host(parsed, tenant, settings)
    if tenant not in signed_tenants:
        raise WebhookRefused(
            "webhook: no webhook secret for this tenant (the operator sets FLEET_WEBHOOK_SECRETS)"
        )
    return Webhook(url, tuple(dict.fromkeys(events)))


def stored(raw: str | None) -> dict[str, Any] | None:
    """A run record's `webhook` field as the API shows it, or None."""
    if not raw:
        return None
    value = json.loads(raw)
    return value if isinstance(value, dict) else None
