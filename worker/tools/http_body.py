"""Reads a response body within a byte cap, decoding `Content-Encoding` without ever passing the cap.

The HTTP tools ask for `Accept-Encoding: identity`, but a server may compress anyway. A decoder
that expands a whole chunk at once lets a small gzip bomb allocate far more than the cap (64 KiB
of gzip can hold 64 MiB of zeros), so the cap counts decoded bytes and zlib is never asked for
more than the room left plus one byte. Encodings: identity, `gzip` (`x-gzip`) and `deflate`
(zlib-wrapped or raw), one at a time; anything else (`br`, `zstd`, stacked codings) is refused.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import AsyncIterable, Callable, Iterable

from worker.tools.base import ToolFailure

SUPPORTED_ENCODINGS = ("identity", "gzip", "x-gzip", "deflate")
_NAME_RE = re.compile(r"^[A-Za-z0-9._+-]{1,32}$")


class _Decoder:
    """Decodes one coding incrementally; `decode` returns at most `max_bytes` and what it left."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._zlib = None if encoding == "identity" else zlib.decompressobj(self._wbits(encoding))
        self._started = False

    @staticmethod
    def _wbits(encoding: str) -> int:
        return zlib.MAX_WBITS | 16 if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS

    def decode(self, data: bytes, max_bytes: int) -> tuple[bytes, bytes]:
        """Up to `max_bytes` (>= 1) decoded bytes of `data`, and the input not yet consumed."""
        if self._zlib is None:
            return data[:max_bytes], data[max_bytes:]
        try:
            out = self._zlib.decompress(data, max_bytes)
        except zlib.error:
            if self.encoding != "deflate" or self._started:
                raise
            # "deflate" is zlib-wrapped by the standard, raw by some servers: retry as raw once.
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._zlib.decompress(data, max_bytes)
        self._started = True
        return out, self._zlib.unconsumed_tail

    def finish(self, max_bytes: int) -> bytes:
        """What the decoder still holds after the last chunk (little: all input was consumed)."""
        return b"" if self._zlib is None else self._zlib.flush()[:max_bytes]


def decoder_for(content_encoding: str | None) -> _Decoder:
    """The decoder of a `Content-Encoding` value, else ToolFailure('http_error')."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"] or ["identity"]
    if len(codings) == 1 and codings[0] in SUPPORTED_ENCODINGS:
        return _Decoder(codings[0])
    # The value comes from the server; it is named only when it is a plain short token.
    shown = content_encoding if content_encoding and _NAME_RE.match(content_encoding) else "this value"
    raise ToolFailure(
        "http_error",
        f"Content-Encoding {shown} is not supported (identity, gzip and deflate are, one at a time)",
    )


class BodyReader:
    """Accumulates a body chunk by chunk within the cap; `feed` says when reading may stop."""

    def __init__(self, content_encoding: str | None, max_bytes: int) -> None:
        self.decoder = decoder_for(content_encoding)
        self.max_bytes = max_bytes
        self.body = bytearray()

    def feed(self, raw: bytes) -> bool:
        """Decode one raw chunk; True once the decoded body has passed the cap."""
        pending = raw
        try:
            while pending:
                out, rest = self.decoder.decode(pending, self.max_bytes - len(self.body) + 1)
                self.body += out
                if len(self.body) > self.max_bytes:
                    return True
                if rest == pending and not out:
                    break  # nothing consumed, nothing produced: the decoder needs more input
                pending = rest
        except zlib.error:
            raise self._invalid() from None
        return False

    def result(self, cut: bool) -> tuple[bytes, bool]:
        """The body and whether it was cut; `cut` False: the input ended, flush the decoder."""
        if not cut:
            try:
                self.body += self.decoder.finish(self.max_bytes - len(self.body) + 1)
            except zlib.error:
                raise self._invalid() from None
        if len(self.body) > self.max_bytes:
            return bytes(self.body[: self.max_bytes]), True
        return bytes(self.body), False

    def _invalid(self) -> ToolFailure:
        return ToolFailure("http_error", f"the body is not valid {self.decoder.encoding}")


def read_body(
    raw_chunks: Iterable[bytes],
    content_encoding: str | None,
    max_bytes: int,
    before_each_chunk: Callable[[], None],
) -> tuple[bytes, bool]:
    """The decoded body cut at `max_bytes`, and whether it was cut.

    `raw_chunks` are the bytes as they came off the wire; reading stops as soon as the decoded
    body passes `max_bytes`, so memory stays about `max_bytes` plus one raw chunk whatever the
    compression ratio. `before_each_chunk` may raise (a deadline). A body that does not decode
    is ToolFailure('http_error').
    """
    reader = BodyReader(content_encoding, max_bytes)
    for raw in raw_chunks:
        before_each_chunk()
        if reader.feed(raw):
            return reader.result(cut=True)
    return reader.result(cut=False)


async def read_body_async(
    raw_chunks: AsyncIterable[bytes],
    content_encoding: str | None,
    max_bytes: int,
    before_each_chunk: Callable[[], None],
) -> tuple[bytes, bool]:
    """`read_body` over an async stream (the tool worker's shared httpx.AsyncClient)."""
    reader = BodyReader(content_encoding, max_bytes)
    async for raw in raw_chunks:
        before_each_chunk()
        if reader.feed(raw):
            return reader.result(cut=True)
    return reader.result(cut=False)
