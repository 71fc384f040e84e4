"""The signature of a webhook delivery: `X-Fleet-Signature: t=<unix ts>,v1=<hex HMAC-SHA256>`.

The MAC is over `"<ts>.<body>"` (the body's exact bytes) with the tenant's secret
(`FLEET_WEBHOOK_SECRETS`). `t` is the attempt's time, so each retry is signed anew and a receiver
can refuse a replayed old delivery; the body, and with it `X-Fleet-Event-Id`, stays the same.
`verify` is what a receiver does (README, "Webhooks", shows the same in a few lines).
"""

from __future__ import annotations

import hashlib
import hmac
import time

TOLERANCE_S = 300  # a receiver refuses a signature older (or newer) than this


def signature(secret: str, ts: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `"<ts>.<body>"` under `secret`."""
    return hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, ts: int | None = None) -> str:
    """The `X-Fleet-Signature` value for `body`, signed at `ts` (unix s; now by default)."""
    ts = int(time.time()) if ts is None else ts
    return f"t={ts},v1={signature(secret, ts, body)}"


def verify(
    secret: str, header: str, body: bytes, now: float | None = None, tolerance_s: int = TOLERANCE_S
) -> bool:
    """True when `header` signs `body` with `secret` within `tolerance_s` of `now`."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, ts, body), parts.get("v1", ""))
