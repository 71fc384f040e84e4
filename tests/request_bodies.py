"""Request bodies as the fleet's exporters send them: decoded from their Content-Encoding, and a
Sentry envelope split into its items."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any


def decode_body(raw: bytes, encoding: str) -> bytes:
    """`raw` as sent with Content-Encoding `encoding` (identity, gzip, deflate or br), decoded."""
    if encoding in ("", "identity"):
        return raw
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]  # only when the SDK found it installed

        return bytes(brotli.decompress(raw))
    raise ValueError(f"unknown Content-Encoding {encoding!r}")


def parse_envelope(body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """The items of a Sentry envelope: (item header, payload)."""
    first = body.find(b"\n")
    pos = len(body) if first < 0 else first + 1
    items = []
    while pos < len(body):
        end = body.find(b"\n", pos)
        end = len(body) if end < 0 else end
        line = body[pos:end].strip()
        pos = end + 1
        if not line:
            continue
        header = json.loads(line)
        length = header.get("length")
        if length is None:
            stop = body.find(b"\n", pos)
            stop = len(body) if stop < 0 else stop
        else:
            stop = pos + int(length)
        items.append((header, body[pos:stop]))
        pos = stop + 1
    return items
