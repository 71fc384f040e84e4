"""The SSRF guard of the HTTP tools: which addresses a tool may connect to, checked after DNS.

A host is resolved once; it is refused if any of its addresses is loopback, private, link-local,
multicast, reserved, unspecified or otherwise not globally routable (also when embedded in
IPv4-mapped, 6to4 or NAT64 IPv6), unless the host, as written in the URL, is allowed
(`tools.http.allow_hosts`). The caller then connects to exactly the addresses returned, so a DNS
answer cannot change between check and use.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import httpx

from worker.tools.base import ToolFailure

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_V6 = ipaddress.IPv6Address("fd00:ec2::254")
NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def allowed_hosts(hosts: Iterable[str]) -> frozenset[str]:
    """Host names as the guard compares them: lower case, IPv6 brackets and blanks stripped."""
    return frozenset(host.strip().strip("[]").lower() for host in hosts)


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


def is_literal(url: httpx.URL) -> bool:
    """Whether the URL's host is an IP address as written: checking it needs no DNS lookup."""
    try:
        ipaddress.ip_address(url.raw_host.decode("ascii"))
    except ValueError:
        return False
    return True


def checked_addresses(url: httpx.URL, allowed: frozenset[str]) -> list[str]:
    """The addresses of the URL's host, all of them allowed; raises denied or http_error.

    `allowed` comes from `allowed_hosts`; a host in it skips the address check (it is still resolved
    once, so the connection goes to the address looked up here).
    """
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


def _nat64_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if any(ip in prefix for prefix in NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
