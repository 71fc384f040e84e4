"""`read_body`: the body cap counts decoded bytes, whatever the compression ratio."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator

import pytest

from worker.tools.base import ToolFailure
from worker.tools.http_body import read_body

CAP_BYTES = 1000


def chunked(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def deflate(data: bytes, raw: bool = False) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def no_check() -> None:
    pass


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        (None, lambda b: b),
        ("identity", lambda b: b),
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", deflate),
        ("deflate", lambda b: deflate(b, raw=True)),
        ("GZIP", gzip.compress),
        ("identity, gzip", gzip.compress),
    ],
)
def test_a_body_within_the_cap_is_decoded_whole(encoding: str | None, encode: object) -> None:
    body = b"hello, fleet " * 50  # 650 bytes
    assert callable(encode)

    assert read_body(chunked(encode(body), 7), encoding, CAP_BYTES, no_check) == (body, False)


def test_a_body_of_exactly_the_cap_is_not_truncated() -> None:
    body = b"x" * CAP_BYTES

    assert read_body(chunked(gzip.compress(body)), "gzip", CAP_BYTES, no_check) == (body, False)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_bomb_is_cut_at_the_cap_and_not_read_further(encoding: str) -> None:
    decoded_bytes = 64 * 1024 * 1024
    bomb = gzip.compress(b"a" * decoded_bytes) if encoding == "gzip" else deflate(b"a" * decoded_bytes)
    chunks_read = 0

    def count() -> None:
        nonlocal chunks_read
        chunks_read += 1

    body, truncated = read_body(chunked(bomb, 1024), encoding, CAP_BYTES, count)

    assert (body, truncated) == (b"a" * CAP_BYTES, True)
    assert chunks_read == 1, "the first raw chunk already holds more than the cap"


def test_the_check_before_each_chunk_can_stop_the_read() -> None:
    def deadline() -> None:
        raise ToolFailure("timeout", "deadline passed while reading the body")

    with pytest.raises(ToolFailure) as caught:
        read_body(chunked(b"x" * 10), None, CAP_BYTES, deadline)
    assert caught.value.type == "timeout"


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, gzip", "deflate, gzip", "x" * 100])
def test_other_or_stacked_encodings_are_refused_before_reading(encoding: str) -> None:
    def never() -> None:
        raise AssertionError("no chunk is read")

    with pytest.raises(ToolFailure) as caught:
        read_body(chunked(b"\x1f\x8b" * 10), encoding, CAP_BYTES, never)

    assert caught.value.type == "http_error"
    assert "is not supported (identity, gzip and deflate are, one at a time)" in caught.value.message
    assert "x" * 33 not in caught.value.message, "a long server value is not echoed"


def test_a_body_that_is_not_valid_gzip_is_an_http_error() -> None:
    with pytest.raises(ToolFailure) as caught:
        read_body(chunked(b"this is not gzip at all"), "gzip", CAP_BYTES, no_check)

    assert (caught.value.type, caught.value.message) == ("http_error", "the body is not valid gzip")
