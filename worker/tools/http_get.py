"""`http.get`: fetches a URL for an agent, refusing internal addresses (SSRF) and capping the body.

Every hop (the first request and each of at most `MAX_REDIRECTS` redirects) resolves its host once,
refuses it if any address is loopback, private, link-local, multicast, reserved, unspecified or
otherwise not globally routable (also when embedded in IPv4-mapped, 6to4 or NAT64 IPv6) unless the
host, as written in the URL, is in `tools.http.allow_hosts`, and then connects to exactly the checked
address, with `Host` and TLS SNI set to the host, so a DNS answer cannot change between check and use.
The whole call, DNS included, ends within `ctx.timeout_s`; the body is cut at
`tools.http.max_body_bytes` bytes (default 1 MiB).
"""

from __future__ import annotations

import codecs
import ipaddress
import math
import re
import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from worker.tools import tool
from worker.tools.base import ToolContext, ToolFailure

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_REDIRECTS = 5
RESULT_HEADERS = ("content-type", "content-length", "etag", "last-modified")
# Set by the tool: the connection target is pinned, and a compressed body could expand past the cap.
OWN_HEADERS = frozenset({"host", "accept-encoding", "content-length", "transfer-encoding", "connection"})
# Not sent on to another origin after a redirect.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
METADATA_V6 = ipaddress.IPv6Address("fd00:ec2::254")
NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VALUE_RE = re.compile(r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$|^$")


class HttpGetArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    headers: dict[str, str] | None = None


@tool(
    "http.get",
    args=HttpGetArgs,
    description="GET an http(s) URL; returns status, a few headers and the body as text (capped).",
)
def http_get(args: HttpGetArgs, ctx: ToolContext) -> dict[str, Any]:
    url = _parse_url(args.url)
    headers = _request_headers(args.headers or {})
    deadline = time.monotonic() + ctx.timeout_s
    http = ctx.settings.tools.http
    # The fetch runs on its own thread so that a slow DNS answer or a server that trickles bytes
    # cannot hold the call past its deadline; the thread stops by itself soon after.
    cancelled = threading.Event()
    outcome: dict[str, Any] = {}

    def fetch() -> None:
        try:
            outcome["result"] = _fetch(
                url, headers, http.allow_hosts, http.max_body_bytes, deadline, cancelled
            )
        except BaseException as exc:
            outcome["error"] = exc

    fetcher = threading.Thread(target=fetch, name=f"http.get {ctx.call_id}", daemon=True)
    fetcher.start()
    fetcher.join(max(0.0, deadline - time.monotonic()))
    if fetcher.is_alive():
        cancelled.set()
        raise _timeout(ctx.timeout_s)
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, ToolFailure) and error.type == "timeout":
            raise _timeout(ctx.timeout_s) from None
        raise error
    result: dict[str, Any] = outcome["result"]
    return result


def address_denial(ip: IPAddress) -> str | None:
    """Why the tool may not connect to `ip` ("loopback", "private", ...), or None if it may."""
    if ip == METADATA_V6:
        return "cloud metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or _nat64_ipv4(ip) or ip.sixtofour
        if embedded is not None:
            reason = address_denial(embedded)
            return None if reason is None else f"{reason}, as {embedded}"
    for reason, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    ):
        if flag:
            return reason
    return None


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


def _fetch(
    url: httpx.URL,
    headers: dict[str, str],
    allow_hosts: list[str],
    max_body_bytes: int,
    deadline: float,
    cancelled: threading.Event,
) -> dict[str, Any]:
    allowed = {host.strip().strip("[]").lower() for host in allow_hosts}
    for _hop in range(MAX_REDIRECTS + 1):
        addresses = _checked_addresses(url, allowed)
        outcome = _request(url, addresses, headers, max_body_bytes, deadline, cancelled)
        if isinstance(outcome, dict):
            return outcome
        status, location = outcome
        try:
            next_url = _parse_url(location, base=url)
        except ToolFailure as failure:
            raise ToolFailure("http_error", f"redirect refused: {failure.message}", status=status) from None
        if _origin(next_url) != _origin(url):
            headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
        url = next_url
    raise ToolFailure("http_error", f"more than {MAX_REDIRECTS} redirects", status=status)


def _checked_addresses(url: httpx.URL, allowed: set[str]) -> list[str]:
    """The addresses of the URL's host, all of them allowed; raises denied or http_error."""
    host = url.raw_host.decode("ascii")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ToolFailure("http_error", f"cannot resolve {host}: {_reason(exc)}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise ToolFailure("http_error", f"cannot resolve {host}: no addresses")
    if url.host.lower() not in allowed and host.lower() not in allowed:
        for ip in addresses:
            reason = address_denial(ip)
            if reason is not None:
                raise ToolFailure(
                    "denied",
                    f"address {ip} of {host} is not allowed ({reason}); "
                    "list the host in tools.http.allow_hosts to permit it",
                )
    return list(dict.fromkeys(str(ip) for ip in addresses))


def _request(
    url: httpx.URL,
    addresses: list[str],
    headers: dict[str, str],
    max_body_bytes: int,
    deadline: float,
    cancelled: threading.Event,
) -> dict[str, Any] | tuple[int, str]:
    """One GET to the first address that accepts a connection: the result or (status, Location)."""
    failure = "no address"
    for ip in addresses:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0 or cancelled.is_set():
            raise ToolFailure("timeout", "deadline passed")
        host = url.raw_host.decode("ascii")
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        own = {"Host": url.netloc.decode("ascii"), "Accept-Encoding": "identity"}
        # A client per connection: a pooled TLS connection must never carry another host's request.
        with httpx.Client(verify=_ssl_context(), trust_env=False, timeout=remaining_s) as client:
            request = client.build_request(
                "GET", url.copy_with(host=ip), headers={**headers, **own}, extensions=extensions
            )
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectError as exc:
                failure = str(exc) or type(exc).__name__
                continue  # the host's next address
            except httpx.HTTPError as exc:
                raise _failure(exc, url) from None
            try:
                return _response(url, response, max_body_bytes, deadline, cancelled)
            except httpx.HTTPError as exc:
                raise _failure(exc, url) from None
            finally:
                response.close()
    raise ToolFailure("http_error", f"connection failed: {_origin_text(url)}: {failure}")


def _response(
    url: httpx.URL, response: httpx.Response, max_body_bytes: int, deadline: float, cancelled: threading.Event
) -> dict[str, Any] | tuple[int, str]:
    status = response.status_code
    if response.is_redirect:
        return status, response.headers["location"]
    if status >= 400:
        raise ToolFailure(
            "http_error",
            f"HTTP {status}",
            status=status,
            retry_after_s=retry_after_s(response.headers.get("retry-after")),
        )
    chunks: list[bytes] = []
    size = 0
    truncated = False
    for chunk in response.iter_bytes():
        # The read timeout bounds each read; this bounds all of them together.
        if cancelled.is_set() or time.monotonic() > deadline:
            raise ToolFailure("timeout", "deadline passed while reading the body")
        room = max_body_bytes - size
        if len(chunk) > room:
            chunks.append(chunk[:room])
            truncated = True
            break
        chunks.append(chunk)
        size += len(chunk)
    return {
        "status": status,
        "headers": {name: response.headers[name] for name in RESULT_HEADERS if name in response.headers},
        "body": b"".join(chunks).decode(_encoding(response), errors="replace"),
        "truncated": truncated,
        "url": str(url.copy_with(userinfo=b"")),
    }


def _parse_url(text: str, base: httpx.URL | None = None) -> httpx.URL:
    try:
        url = base.join(text) if base is not None else httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ToolFailure("invalid_args", f"url: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ToolFailure("invalid_args", f"url: scheme {url.scheme!r} is not http or https")
    if not url.host:
        raise ToolFailure("invalid_args", "url: has no host")
    return url


def _request_headers(headers: dict[str, str]) -> dict[str, str]:
    """The caller's headers, checked; a value never appears in a message, it may be a secret."""
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not _TOKEN_RE.match(name):
            raise ToolFailure("invalid_args", "headers: a header name is not a valid HTTP token")
        if not _VALUE_RE.match(value.strip(" \t")):
            raise ToolFailure("invalid_args", f"headers.{name}: value must be printable ASCII on one line")
        if name.lower() not in OWN_HEADERS:
            checked[name] = value.strip(" \t")
    return checked


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


def _nat64_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if any(ip in prefix for prefix in NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


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


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()
