"""`http.get` against a real HTTP server on loopback: the SSRF guard, pinning, limits and errors."""

from __future__ import annotations

import contextlib
import functools
import gzip
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.harness import ROOT
from worker.settings import Settings
from worker.tools import execute, http_client
from worker.tools.base import ToolContext
from worker.tools.http_client import retry_after_s
from worker.tools.netguard import address_denial, is_literal

SECRET = "Bearer s3cret-token-never-shown"
MAX_BODY_BYTES = 1000
BOMB_DECODED_BYTES = 256 * 1024 * 1024


@functools.cache
def bomb(encoding: str) -> bytes:
    """BOMB_DECODED_BYTES of "a" compressed with `encoding` (gzip: about 250 KiB on the wire)."""
    wbits = zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)  # as small as level 9 here, 3x faster
    block = b"a" * (1024 * 1024)
    parts = [compressor.compress(block) for _ in range(BOMB_DECODED_BYTES // len(block))]
    return b"".join(parts) + compressor.flush()


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[tuple[str, dict[str, str]]] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    server: RecordingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers.items())))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up on a timeout
            self._route()

    def _route(self) -> None:
        port = self.server.port
        routes: dict[str, tuple[int, dict[str, str], bytes]] = {
            "/ok": (200, {"Content-Type": "text/plain; charset=utf-8", "ETag": '"v1"'}, b"hello, fleet"),
            "/big": (200, {"Content-Type": "text/plain"}, b"x" * 5000),
            "/unavailable": (503, {"Retry-After": "2"}, b"busy"),
            "/throttled": (429, {"Retry-After": formatdate(time.time() + 30, usegmt=True)}, b"slow down"),
            "/redirect": (302, {"Location": "/ok"}, b""),
            "/redirect-loop": (302, {"Location": "/redirect-loop"}, b""),
            "/redirect-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data"}, b""),
            "/redirect-echo": (302, {"Location": "/echo"}, b""),
            "/redirect-other-origin": (302, {"Location": f"http://other.test:{port}/echo"}, b""),
            "/echo": (
                200,
                {"Content-Type": "application/json"},
                json.dumps(dict(self.headers.items())).encode(),
            ),
        }
        if self.path in ("/gzip-bomb", "/deflate-bomb"):
            # Sent although the client asked for identity, as a hostile server would.
            encoding = self.path[1:].split("-")[0]
            self._send(200, {"Content-Type": "text/plain", "Content-Encoding": encoding}, bomb(encoding))
        elif self.path == "/gzip-small":
            self._send(200, {"Content-Encoding": "gzip"}, gzip.compress(b"hello, fleet"))
        elif self.path == "/brotli":
            self._send(200, {"Content-Encoding": "br"}, b"\x1b\x0b\x00\xf8\xc5\xca")
        elif self.path.startswith("/redirect-to-port/"):
            # /redirect-to-port/<port>/<path>: to the same host on another port, another origin.
            _, _, other_port, rest = self.path.split("/", 3)
            self._send(302, {"Location": f"http://127.0.0.1:{other_port}/{rest}"}, b"")
        elif self.path == "/slow":
            time.sleep(2.0)
            self._send(200, {}, b"late")
        elif self.path == "/trickle":
            # Each byte comes well within any read timeout; only the overall deadline stops it.
            self.send_response(200)
            self.send_header("Content-Length", "50")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path == "/stall":
            # Headers late in the call, then nothing: a read timeout alone would end it too late.
            time.sleep(0.8)
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.flush()
            time.sleep(3.0)
        else:
            self._send(*routes.get(self.path, (404, {}, b"no such path")))

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def running_server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def server(running_server: RecordingServer) -> RecordingServer:
    running_server.requests.clear()
    return running_server


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URL of every request httpx sends, whichever server it is meant for."""
    sent: list[str] = []
    real_send = httpx.AsyncClient.send

    async def counting_send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        sent.append(str(request.url))
        return await real_send(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", counting_send)
    return sent


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """Host -> successive answers (the last one repeats, none: no such name); others resolve for real.

    The names asked for are recorded under the key "asked".
    """
    answers: dict[str, list[list[str]]] = {"asked": []}
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        answers["asked"].append([str(host)])
        if host not in answers:
            return real_getaddrinfo(host, port, *args, **kwargs)
        queue = answers[host]
        if not queue:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        ips = queue.pop(0) if len(queue) > 1 else queue[0]
        infos = []
        for ip in ips:
            family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
            infos.append((family, socket.SOCK_STREAM, 6, "", (ip, port)))
        return infos

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def context(allow_hosts: list[str] | None = None, timeout_s: float = 5.0) -> ToolContext:
    settings = Settings(
        tools={
            "http": {
                "allow_hosts": ["127.0.0.1"] if allow_hosts is None else allow_hosts,
                "max_body_bytes": MAX_BODY_BYTES,
            }
        }
    )
    return ToolContext(call_id="call-1", timeout_s=timeout_s, settings=settings)


def get(url: str, ctx: ToolContext | None = None, **args: Any) -> dict[str, Any]:
    return execute("http.get", {"url": url, **args}, ctx or context())


def error_of(envelope: dict[str, Any]) -> dict[str, Any]:
    assert envelope["ok"] is False, envelope
    error: dict[str, Any] = envelope["error"]
    return error


# -- the SSRF guard ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/ok",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:{port}/ok",
        "http://localhost:{port}/ok",
    ],
)
def test_internal_addresses_are_denied_before_any_request(
    url: str, server: RecordingServer, sends: list[str]
) -> None:
    error = error_of(get(url.format(port=server.port), context(allow_hosts=[])))

    assert error["type"] == "denied"
    assert "is not allowed" in error["message"]
    assert sends == []
    assert server.requests == []


@pytest.mark.parametrize(
    ("url", "literal"),
    [
        ("http://127.0.0.1:8080/x", True),
        ("http://[::1]/", True),
        ("https://[2606:4700::1111]:443/", True),
        ("http://localhost/", False),
        ("http://127.0.0.1.example.test/", False),
        ("http://0x7f.1/", False),  # not an address as written: resolved (and then checked) like a name
    ],
)
def test_only_an_address_as_written_skips_the_lookup(url: str, literal: bool) -> None:
    assert is_literal(httpx.URL(url)) is literal


def test_an_address_host_is_checked_on_the_loop_without_the_resolver_threads(
    server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_resolver() -> None:
        raise AssertionError("an address as written needs no lookup thread")

    monkeypatch.setattr(http_client, "_resolver", no_resolver)
    assert get(f"http://127.0.0.1:{server.port}/ok")["ok"] is True
    assert error_of(get("http://10.0.0.1/", context(allow_hosts=[])))["type"] == "denied"


def test_localhost_is_denied_although_its_address_is_allowlisted(
    server: RecordingServer, sends: list[str]
) -> None:
    error = error_of(get(f"http://localhost:{server.port}/ok", context(allow_hosts=["127.0.0.1"])))

    assert error["type"] == "denied"
    assert "127.0.0.1" in error["message"]
    assert sends == []
    assert server.requests == []


def test_a_host_with_any_internal_address_is_denied(
    server: RecordingServer, sends: list[str], fake_dns: dict[str, list[list[str]]]
) -> None:
    fake_dns["mixed.test"] = [["93.184.216.34", "127.0.0.1"]]

    error = error_of(get(f"http://mixed.test:{server.port}/ok"))

    assert error["type"] == "denied"
    assert "127.0.0.1" in error["message"]
    assert sends == []


def test_an_allowlisted_host_is_fetched(server: RecordingServer) -> None:
    envelope = get(f"http://127.0.0.1:{server.port}/ok")

    assert envelope["ok"] is True, envelope
    result = envelope["result"]
    assert result["status"] == 200
    assert result["body"] == "hello, fleet"
    assert result["truncated"] is False
    assert result["url"] == f"http://127.0.0.1:{server.port}/ok"
    assert result["headers"] == {
        "content-type": "text/plain; charset=utf-8",
        "content-length": "12",
        "etag": '"v1"',
    }
    assert [path for path, _ in server.requests] == ["/ok"]


def test_the_checked_address_is_used_not_a_fresh_resolution(
    server: RecordingServer, fake_dns: dict[str, list[list[str]]]
) -> None:
    # A second answer would point at an unroutable address: a rebinding attempt.
    fake_dns["pinned.test"] = [["127.0.0.1"], ["10.255.255.1"]]

    envelope = get(f"http://pinned.test:{server.port}/echo", context(allow_hosts=["pinned.test"]))

    assert envelope["ok"] is True, envelope
    assert json.loads(envelope["result"]["body"])["Host"] == f"pinned.test:{server.port}"
    assert fake_dns["asked"].count(["pinned.test"]) == 1


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::",
        "64:ff9b::a9fe:a9fe",
    ],
)
def test_internal_and_embedded_internal_addresses_are_refused(address: str) -> None:
    assert address_denial(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_denial(ipaddress.ip_address(address)) is None


# -- redirects --------------------------------------------------------------------------------


def test_a_redirect_is_followed(server: RecordingServer) -> None:
    envelope = get(f"http://127.0.0.1:{server.port}/redirect")

    assert envelope["ok"] is True, envelope
    assert envelope["result"]["body"] == "hello, fleet"
    assert envelope["result"]["url"] == f"http://127.0.0.1:{server.port}/ok"
    assert [path for path, _ in server.requests] == ["/redirect", "/ok"]


def test_a_redirect_to_the_metadata_address_is_denied(server: RecordingServer, sends: list[str]) -> None:
    error = error_of(get(f"http://127.0.0.1:{server.port}/redirect-metadata"))

    assert error["type"] == "denied"
    assert "169.254.169.254" in error["message"]
    assert len(sends) == 1
    assert [path for path, _ in server.requests] == ["/redirect-metadata"]


def test_redirects_stop_after_five(server: RecordingServer) -> None:
    error = error_of(get(f"http://127.0.0.1:{server.port}/redirect-loop"))

    assert error["type"] == "http_error"
    assert error["status"] == 302
    assert len(server.requests) == 6


RUN_HEADERS = {
    "Authorization": SECRET,
    "Cookie": "session=s3cret-cookie",
    "X-Api-Key": "s3cret-api-key",
    "Private-Token": "s3cret-private-token",
    "X-Tenant-Note": "any header the run set",
}


def test_headers_follow_a_redirect_only_within_the_origin(
    server: RecordingServer, fake_dns: dict[str, list[list[str]]]
) -> None:
    fake_dns["other.test"] = [["127.0.0.1"]]
    ctx = context(allow_hosts=["127.0.0.1", "other.test"])

    same = get(f"http://127.0.0.1:{server.port}/redirect-echo", ctx, headers=RUN_HEADERS)
    other = get(f"http://127.0.0.1:{server.port}/redirect-other-origin", ctx, headers=RUN_HEADERS)

    received_same = json.loads(same["result"]["body"])
    assert {name: received_same.get(name) for name in RUN_HEADERS} == RUN_HEADERS
    received = json.loads(other["result"]["body"])
    assert received["Host"] == f"other.test:{server.port}"
    assert not set(RUN_HEADERS) & set(received), received


@pytest.fixture
def other_server() -> Iterator[RecordingServer]:
    """A second server on another port of the same host: another origin."""
    other = RecordingServer()
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    yield other
    other.shutdown()
    other.server_close()


def test_a_redirect_to_another_port_carries_none_of_the_run_headers(
    server: RecordingServer, other_server: RecordingServer
) -> None:
    url = f"http://127.0.0.1:{server.port}/redirect-to-port/{other_server.port}/echo"

    envelope = get(url, headers=RUN_HEADERS)

    assert envelope["ok"] is True, envelope
    [(path, headers_sent_first)] = server.requests
    assert {name: headers_sent_first.get(name) for name in RUN_HEADERS} == RUN_HEADERS
    [(path, received)] = other_server.requests
    assert path == "/echo"
    assert received["Host"] == f"127.0.0.1:{other_server.port}"
    assert not {name.lower() for name in RUN_HEADERS} & {name.lower() for name in received}, received
    for secret in RUN_HEADERS.values():
        assert secret not in envelope["result"]["body"]


# -- limits -----------------------------------------------------------------------------------


def test_a_slow_response_times_out_within_the_timeout(server: RecordingServer) -> None:
    started = time.monotonic()
    error = error_of(get(f"http://127.0.0.1:{server.port}/slow", context(timeout_s=0.5)))

    assert error["type"] == "timeout"
    assert time.monotonic() - started < 1.5


def test_a_trickling_body_times_out_at_the_overall_deadline(server: RecordingServer) -> None:
    started = time.monotonic()
    error = error_of(get(f"http://127.0.0.1:{server.port}/trickle", context(timeout_s=1.0)))

    assert error["type"] == "timeout"
    assert time.monotonic() - started < 2.0


def test_a_stalled_body_ends_at_the_deadline_not_a_read_timeout_later(server: RecordingServer) -> None:
    started = time.monotonic()
    error = error_of(get(f"http://127.0.0.1:{server.port}/stall", context(timeout_s=1.0)))

    assert error["type"] == "timeout"
    assert time.monotonic() - started < 1.4


def test_a_large_body_is_truncated_at_max_body_bytes(server: RecordingServer) -> None:
    envelope = get(f"http://127.0.0.1:{server.port}/big")

    assert envelope["ok"] is True, envelope
    assert envelope["result"]["body"] == "x" * MAX_BODY_BYTES
    assert envelope["result"]["truncated"] is True


def test_a_gzip_body_is_decoded(server: RecordingServer) -> None:
    envelope = get(f"http://127.0.0.1:{server.port}/gzip-small")

    assert envelope["ok"] is True, envelope
    assert (envelope["result"]["body"], envelope["result"]["truncated"]) == ("hello, fleet", False)
    assert server.requests[0][1]["Accept-Encoding"] == "identity"


@pytest.mark.parametrize("path", ["/gzip-bomb", "/deflate-bomb"])
def test_a_compression_bomb_is_cut_at_max_body_bytes_of_decoded_text(
    path: str, server: RecordingServer
) -> None:
    bomb(path[1:].split("-")[0])  # built before the call, not within its timeout
    envelope = get(f"http://127.0.0.1:{server.port}{path}")

    assert envelope["ok"] is True, envelope
    assert envelope["result"]["body"] == "a" * MAX_BODY_BYTES
    assert envelope["result"]["truncated"] is True


def test_an_encoding_other_than_gzip_or_deflate_is_a_clear_http_error(server: RecordingServer) -> None:
    error = error_of(get(f"http://127.0.0.1:{server.port}/brotli"))

    assert error == {
        "type": "http_error",
        "message": "Content-Encoding br is not supported (identity, gzip and deflate are, one at a time)",
    }


# Runs http.get in a fresh interpreter and reports its peak RSS growth over the call, in KiB. The
# peak is the kernel's high-water mark (VmHWM), reset to the current RSS just before the call:
# ru_maxrss would carry over the peak of the forking test process.
_MEASURE = """
import json, re, sys
from worker.settings import Settings
from worker.tools import execute
from worker.tools.base import ToolContext
def status_kib(field):
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\\s+(\\d+) kB", f.read()).group(1))
settings = Settings(tools={"http": {"allow_hosts": ["127.0.0.1"], "max_body_bytes": 1048576}})
ctx = ToolContext(call_id="call-1", timeout_s=30.0, settings=settings)
execute("http.get", {"url": sys.argv[1]}, ctx)  # warm up: imports and a first connection
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to VmRSS
rss_kib = status_kib("VmRSS")
envelope = execute("http.get", {"url": sys.argv[2]}, ctx)
result = envelope.get("result", {})
print(json.dumps({"growth_kib": status_kib("VmHWM") - rss_kib, "ok": envelope["ok"],
                  "body_len": len(result.get("body", "")), "truncated": result.get("truncated")}))
"""


@pytest.mark.parametrize("path", ["/gzip-bomb", "/deflate-bomb"])
def test_a_compression_bomb_keeps_memory_near_the_cap(path: str, server: RecordingServer) -> None:
    """256 MiB of decoded body on a 1 MiB cap: the process grows by a few MiB, not by the body."""
    bomb(path[1:].split("-")[0])  # built before the measured call, in this process
    base = f"http://127.0.0.1:{server.port}"
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, f"{base}/gzip-small", f"{base}{path}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout)

    assert (measured["ok"], measured["body_len"], measured["truncated"]) == (True, 1048576, True), measured
    # The cap plus buffers is a few MiB; 32 MiB holds on any machine and is 1/8 of the decoded body.
    assert measured["growth_kib"] < 32 * 1024, measured


# -- errors -----------------------------------------------------------------------------------


def test_503_is_an_http_error_with_retry_after_seconds(server: RecordingServer) -> None:
    error = error_of(get(f"http://127.0.0.1:{server.port}/unavailable"))

    assert error == {"type": "http_error", "message": "HTTP 503", "status": 503, "retry_after_s": 2.0}


def test_429_is_an_http_error_with_retry_after_from_a_date(server: RecordingServer) -> None:
    error = error_of(get(f"http://127.0.0.1:{server.port}/throttled"))

    assert error["type"] == "http_error"
    assert error["status"] == 429
    assert 25.0 <= error["retry_after_s"] <= 31.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [("120", 120.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None), ("-5", None), (None, None)],
)
def test_retry_after_parses_seconds_and_dates_and_is_never_negative(
    header: str | None, expected: float | None
) -> None:
    assert retry_after_s(header) == expected


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_is_an_http_error_without_status() -> None:
    error = error_of(get(f"http://127.0.0.1:{_refused_port()}/"))

    assert error["type"] == "http_error"
    assert error["message"].startswith("connection failed")
    assert "status" not in error


def test_an_unresolvable_host_is_an_http_error(fake_dns: dict[str, list[list[str]]]) -> None:
    fake_dns["no-such-host.invalid"] = []

    error = error_of(get("http://no-such-host.invalid/"))

    assert error["type"] == "http_error"
    assert "cannot resolve" in error["message"]


@pytest.mark.parametrize(
    "args",
    [{"url": "ftp://127.0.0.1/file"}, {"url": "http:///no-host"}, {}, {"url": "http://x/", "body": "?"}],
)
def test_bad_arguments_are_invalid_args(args: dict[str, Any], sends: list[str]) -> None:
    error = error_of(execute("http.get", args, context()))

    assert error["type"] == "invalid_args"
    assert sends == []


def test_the_authorization_value_never_appears_in_an_error(server: RecordingServer) -> None:
    headers = {"Authorization": SECRET}
    fast, slow = context(), context(timeout_s=0.5)
    calls = [
        (f"http://10.0.0.1:{server.port}/", fast, headers),
        (f"http://127.0.0.1:{server.port}/unavailable", fast, headers),
        (f"http://127.0.0.1:{server.port}/redirect-loop", fast, headers),
        (f"http://127.0.0.1:{server.port}/slow", slow, headers),
        (f"http://127.0.0.1:{_refused_port()}/", fast, headers),
        (f"http://127.0.0.1:{server.port}/ok", fast, {"Authorization": SECRET + "\r\nX-Injected: 1"}),
    ]

    errors = [error_of(get(url, ctx, headers=h)) for url, ctx, h in calls]

    assert [e["type"] for e in errors] == [
        "denied",
        "http_error",
        "http_error",
        "timeout",
        "http_error",
        "invalid_args",
    ]
    assert not any("s3cret" in json.dumps(e) for e in errors)
