"""One HTTP exchange for the HTTP tools: SSRF-guarded, pinned, within a deadline, body capped.

`send` resolves and checks each hop's host with `netguard`, then connects to exactly the checked
address, with `Host` and TLS SNI set to the host. It is async: the calls of a tool-worker process
share the event loop's `httpx.AsyncClient`s (`shared_client`, a few small pools taken in turn),
which together hold up to `tools.worker_max_inflight` connections (httpx's default is 100) and
keep none alive after its request, so a TLS connection made for one host never carries another
host's request to the same address. The whole call, DNS included (in a thread of its own pool), ends within
`ctx.timeout_s`; the body is cut at `tools.http.max_body_bytes` decoded bytes (default 1 MiB; a
gzip or deflate body is decoded within that cap, other encodings are refused: `http_body`). Errors become
`ToolFailure`s: `denied`, `timeout`, `http_error` (with `status` and `retry_after_s` when known).
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import math
import re
import ssl
import time
import weakref
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

import httpx

from worker.tools.base import ToolContext, ToolFailure
from worker.tools.http_body import read_body_async
from worker.tools.netguard import allowed_hosts, checked_addresses, is_literal

MAX_REDIRECTS = 5
DNS_THREADS = 16  # lookups of one process at once; a slow resolver holds a thread, never the loop
RESULT_HEADERS = ("content-type", "content-length", "etag", "last-modified")
# Set by the client: the connection target is pinned, and a compressed body could expand past the cap.
OWN_HEADERS = frozenset({"host", "accept-encoding", "content-length", "transfer-encoding", "connection"})
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VALUE_RE = re.compile(r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$|^$")


class _Call:
    """What every hop of one call shares: method, body, limits, deadline and the cancel flag."""

    def __init__(self, ctx: ToolContext, method: str, content: bytes | None, follow_redirects: bool) -> None:
        self.method = method
        self.content = content
        self.follow_redirects = follow_redirects
        self.max_body_bytes = ctx.settings.tools.http.max_body_bytes
        self.deadline = time.monotonic() + ctx.timeout_s


CLIENT_SHARDS = 32
_Clients = weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, "_Shards"]
_clients: _Clients = weakref.WeakKeyDictionary()
_dns_pool: concurrent.futures.ThreadPoolExecutor | None = None


class _Shards:
    """The loop's HTTP clients, taken in turn. httpcore's pool walks all its connections and
    queued requests on every request and every close: with 1,000 calls on one pool that costs
    milliseconds of CPU per call, so the calls are spread over CLIENT_SHARDS small pools."""

    def __init__(self, max_connections: int) -> None:
        per_shard = max(1, -(-max_connections // CLIENT_SHARDS))
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=0)
        tls = _ssl_context()
        self.clients = [
            httpx.AsyncClient(verify=tls, trust_env=False, limits=limits) for _ in range(CLIENT_SHARDS)
        ]
        self._next = 0

    def next(self) -> httpx.AsyncClient:
        self._next = (self._next + 1) % len(self.clients)
        return self.clients[self._next]


def shared_client(max_connections: int) -> httpx.AsyncClient:
    """A client of the running loop's shared set (made on first use), for one call.

    Keep-alive is off: a pooled connection is keyed by the checked address, and one made with
    another host's SNI and certificate must never be reused. Together the pools hold up to
    `max_connections` (rounded up to a multiple of CLIENT_SHARDS) connections at once.
    """
    loop = asyncio.get_running_loop()
    shards = _clients.get(loop)
    if shards is None:
        shards = _clients[loop] = _Shards(max_connections)
    return shards.next()


async def close_shared_client() -> None:
    """Close the running loop's clients, if it made them (a loop that ends must not leave them)."""
    shards = _clients.pop(asyncio.get_running_loop(), None)
    if shards is not None:
        await asyncio.gather(*(client.aclose() for client in shards.clients))


def _resolver() -> concurrent.futures.ThreadPoolExecutor:
    global _dns_pool
    if _dns_pool is None:
        _dns_pool = concurrent.futures.ThreadPoolExecutor(DNS_THREADS, thread_name_prefix="http-dns")
    return _dns_pool


async def send(
    method: str,
    url: httpx.URL,
    ctx: ToolContext,
    *,
    headers: dict[str, str],
    content: bytes | None = None,
    follow_redirects: bool = True,
    trusted: bool = False,
) -> dict[str, Any]:
    """`method url` with checked `headers` and `content`; the result or a ToolFailure.

    Result: `{"status", "headers", "body", "truncated", "url"}`; `headers` holds a few safe ones
    (and `location` when redirects are not followed). At most `MAX_REDIRECTS` redirects are followed;
    `headers` go only to the first URL's origin: a hop to another origin drops every one of them.
    `trusted`: the URL is operator config, so its host is exempt from the private-address block
    (as if in `tools.http.allow_hosts`).
    """
    if follow_redirects and content is not None:
        raise ValueError("a request with a body is never re-sent to a redirect target")
    call = _Call(ctx, method, content, follow_redirects)
    allowed = allowed_hosts([*ctx.settings.tools.http.allow_hosts, *([url.host] if trusted else [])])
    client = shared_client(ctx.settings.tools.worker_max_inflight)
    # One deadline over every hop, DNS included: a slow resolver or a server that trickles bytes
    # cannot hold the call past it (a lookup's thread finishes on its own, its answer unused).
    try:
        async with asyncio.timeout(max(0.0, call.deadline - time.monotonic())):
            return await _exchange(client, url, headers, allowed, call)
    except TimeoutError:
        raise _timeout(ctx.timeout_s) from None
    except ToolFailure as failure:
        if failure.type == "timeout":
            raise _timeout(ctx.timeout_s) from None
        raise


def parse_url(text: str, base: httpx.URL | None = None) -> httpx.URL:
    """An absolute http(s) URL with a host, else ToolFailure('invalid_args')."""
    try:
        url = base.join(text) if base is not None else httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ToolFailure("invalid_args", f"url: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ToolFailure("invalid_args", f"url: scheme {url.scheme!r} is not http or https")
    if not url.host:
        raise ToolFailure("invalid_args", "url: has no host")
    return url


def request_headers(headers: dict[str, str], reserved: frozenset[str] = frozenset()) -> dict[str, str]:
    """The caller's headers, checked, without those the client or the tool sets (`reserved`, lower case).

    A value never appears in a message: it may be a secret.
    """
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not _TOKEN_RE.match(name):
            raise ToolFailure("invalid_args", "headers: a header name is not a valid HTTP token")
        if not _VALUE_RE.match(value.strip(" \t")):
            raise ToolFailure("invalid_args", f"headers.{name}: value must be printable ASCII on one line")
        if name.lower() not in OWN_HEADERS | reserved:
            checked[name] = value.strip(" \t")
    return checked


def retry_after_s(value: str | None) -> float | None:
    """A `Retry-After` header as seconds from now: delta seconds or an HTTP date; never negative."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def _exchange(
    client: httpx.AsyncClient, url: httpx.URL, headers: dict[str, str], allowed: frozenset[str], call: _Call
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    for _ in range(MAX_REDIRECTS + 1):
        if is_literal(url):  # nothing to look up: no hop to a resolver thread and back
            addresses = checked_addresses(url, allowed)
        else:
            addresses = await loop.run_in_executor(_resolver(), checked_addresses, url, allowed)
        outcome = await _request(client, url, addresses, headers, call)
        if isinstance(outcome, dict):
            return outcome
        status, location = outcome
        try:
            next_url = parse_url(location, base=url)
        except ToolFailure as failure:
            raise ToolFailure("http_error", f"redirect refused: {failure.message}", status=status) from None
        if _origin(next_url) != _origin(url):
            # Any header the run set may be a credential (X-Api-Key, Private-Token, ...); a list of
            # known names always misses one, so another origin gets none of them.
            headers = {}
        url = next_url
    raise ToolFailure("http_error", f"more than {MAX_REDIRECTS} redirects", status=status)


async def _request(
    client: httpx.AsyncClient, url: httpx.URL, addresses: list[str], headers: dict[str, str], call: _Call
) -> dict[str, Any] | tuple[int, str]:
    """One request to the first address that accepts a connection: the result or (status, Location)."""
    failure = "no address"
    for ip in addresses:
        remaining_s = call.deadline - time.monotonic()
        if remaining_s <= 0:
            raise ToolFailure("timeout", "deadline passed")
        extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
        own = {"Host": url.netloc.decode("ascii"), "Accept-Encoding": "identity"}
        request = client.build_request(
            call.method,
            url.copy_with(host=ip),
            headers={**headers, **own},
            content=call.content,
            extensions=extensions,
            timeout=remaining_s,
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = str(exc) or type(exc).__name__
            continue  # the host's next address
        except httpx.HTTPError as exc:
            raise _failure(exc, url) from None
        try:
            return await _response(url, response, call)
        except httpx.HTTPError as exc:
            raise _failure(exc, url) from None
        finally:
            await response.aclose()
    raise ToolFailure("http_error", f"connection failed: {_origin_text(url)}: {failure}")


async def _response(
    url: httpx.URL, response: httpx.Response, call: _Call
) -> dict[str, Any] | tuple[int, str]:
    status = response.status_code
    if response.is_redirect and call.follow_redirects:
        return status, response.headers["location"]
    if status >= 400:
        retry_after = retry_after_s(response.headers.get("retry-after"))
        raise ToolFailure("http_error", f"HTTP {status}", status=status, retry_after_s=retry_after)

    def before_each_chunk() -> None:
        # The read timeout bounds each read; this bounds all of them together.
        if time.monotonic() > call.deadline:
            raise ToolFailure("timeout", "deadline passed while reading the body")

    # Raw bytes: a compressed body is decoded by read_body_async, which stops at the cap as it decodes.
    body, truncated = await read_body_async(
        response.aiter_raw(), response.headers.get("content-encoding"), call.max_body_bytes, before_each_chunk
    )
    names = RESULT_HEADERS if call.follow_redirects else (*RESULT_HEADERS, "location")
    return {
        "status": status,
        "headers": {name: response.headers[name] for name in names if name in response.headers},
        "body": body.decode(_encoding(response), errors="replace"),
        "truncated": truncated,
        "url": str(url.copy_with(userinfo=b"")),
    }


def _failure(exc: httpx.HTTPError, url: httpx.URL) -> ToolFailure:
    """An httpx error as the agent sees it; only messages that cannot hold a header value are kept."""
    if isinstance(exc, httpx.TimeoutException):
        return ToolFailure("timeout", "timed out")
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return ToolFailure(
            "http_error", f"connection failed: {_origin_text(url)}: {str(exc) or type(exc).__name__}"
        )
    return ToolFailure("http_error", f"request failed: {_origin_text(url)}: {type(exc).__name__}")


def _timeout(timeout_s: float) -> ToolFailure:
    return ToolFailure("timeout", f"no complete response within {timeout_s:g} s")


def _origin(url: httpx.URL) -> tuple[str, bytes, int | None]:
    return url.scheme, url.raw_host, url.port


def _origin_text(url: httpx.URL) -> str:
    # Scheme and host only: the path and query may carry tokens, the userinfo a password.
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


def _encoding(response: httpx.Response) -> str:
    encoding = response.charset_encoding or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        return "utf-8"
    return encoding


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()
