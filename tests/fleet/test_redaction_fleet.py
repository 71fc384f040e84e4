"""Redaction end to end, with real processes (issue 5).

A corpus of PII and secrets (tests/pii_corpus.py) goes into run inputs, tool arguments and tool
results (sampled at 100 %), exceptions raised by agents, HTTP bodies fetched by `http.get`, and
HTTP requests to the API (good and malformed bodies, query strings, bad keys). None of it comes
out in a log line of any process, in the run record's error or step log, or in what a local fake
Sentry server receives; that server also shows the API request and the run's task in one trace,
the trace id the logs carry. Then the incident as a regression test: debug logging, sampling at
100 % and 100 runs whose tool returns 20 MB each; and, last (it replaces the agent worker), a
worker at result_sample_rate 0 logs no tool result at all.

One fleet serves the module: API, an agent worker, two tool workers, FLEET_LOG_LEVEL=DEBUG,
result and trace sampling at 100 %, SENTRY_DSN pointing at the fake Sentry.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psutil
import pytest

from tests.harness import TERMINAL, Fleet, Proc, RedisServer, wait_for
from tests.leaks import CORPUS, SECRETS, TEXTS, Case, excerpt, leaks
from tests.request_bodies import decode_body, parse_envelope
from worker.celery_app import RUN_TASK, TOOL_TASK
from worker.keys import Keys
from worker.settings import ObservabilitySection, ToolsSection

SENTRY_KEY = "5e7f1a2b3c4d4e5f8a9b0c1d2e3f4a5b"  # the DSN's public key: must appear in no log line
LINE_CAP = ObservabilitySection().log_max_line_bytes
MAX_RESULT_BYTES = ToolsSection().max_result_bytes


# -- a fake Sentry -----------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    body: bytes  # decompressed

    def events(self) -> list[dict[str, Any]]:
        """The error events and transactions in this request."""
        if self.path.rstrip("/").endswith("/store"):
            return [json.loads(self.body)]
        return [
            json.loads(payload)
            for header, payload in parse_envelope(self.body)
            if header.get("type") in ("event", "transaction")
        ]


@dataclass
class FakeSentry:
    """A real HTTP server taking Sentry's envelope (and store) endpoint; keeps every body."""

    received: list[Received] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
                try:
                    body = decode_body(raw, encoding)
                except Exception as exc:  # kept, so the test fails instead of missing what came
                    with outer.lock:
                        outer.failures.append(f"{self.path}: {encoding}: {exc!r}")
                    body = raw
                with outer.lock:
                    outer.received.append(Received(self.path, body))
                payload = b'{"id": "00000000000000000000000000000000"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def dsn(self) -> str:
        return f"http://{SENTRY_KEY}@127.0.0.1:{self.port}/1"

    def since(self, start: int) -> list[Received]:
        with self.lock:
            return list(self.received[start:])

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def events(self, start: int = 0) -> list[dict[str, Any]]:
        return [event for got in self.since(start) for event in got.events()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def trace_id(event: dict[str, Any]) -> str | None:
    return ((event.get("contexts") or {}).get("trace") or {}).get("trace_id")


# -- an HTTP server whose bodies hold the corpus ----------------------------------------------------


class PiiServer:
    """`GET /pii/<n>` answers corpus case n as the body (a dict as JSON); keeps request headers."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.headers.append(dict(self.headers))
                index = int(self.path.split("?")[0].rstrip("/").split("/")[-1])
                value = CORPUS[index].value
                body = (value if isinstance(value, str) else json.dumps(value)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, index: int, value: Any = None) -> str:
        """The case's URL; with the case's text as its query when a URL can hold it unencoded."""
        url = f"http://127.0.0.1:{self.port}/pii/{index}"
        if isinstance(value, str) and not any(ch.isspace() or ch in "#%" for ch in value):
            url += f"?q={value}"
        return url

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the fleet -------------------------------------------------------------------------------------

FLEET_ENV = {
    "FLEET_LOG_LEVEL": "DEBUG",
    "FLEET_OBSERVABILITY__RESULT_SAMPLE_RATE": "1.0",
    "FLEET_OBSERVABILITY__TRACES_SAMPLE_RATE": "1.0",
}
# These tests are about what logs and records hold, not speed. On a loaded 2-core machine (DEBUG logs,
# full sampling, the rest of the suite beside) calls took longer than the defaults: the last of 100
# calls of a 20 MB result over 30 s, some http.get calls over 8 s. Time-outs here would fail them
# for a reason they do not test.
FLEET_CONFIG = {"tools": {"timeouts_ms": {"default": 60000, "test.big": 90000}}}
AGENT_CONCURRENCY = 4
TOOL_WORKERS = 2  # a 20 MB result costs a tool worker CPU under one GIL; two use both cores


def spawn_agent_worker(fleet: Fleet) -> Proc:
    name = f"agent-{uuid.uuid4().hex[:6]}@%h"
    return fleet.spawn(
        "worker", "worker", "--concurrency", str(AGENT_CONCURRENCY), "-n", name, "--without-mingle"
    )


def wait_ready(proc: Proc) -> None:
    wait_for(lambda: " ready." in proc.text(), 90, f"{proc.name} did not start:\n{proc.text()[-3000:]}")


@pytest.fixture(scope="module")
def sentry() -> Iterator[FakeSentry]:
    server = FakeSentry()
    yield server
    server.close()


@pytest.fixture(scope="module")
def pii_server() -> Iterator[PiiServer]:
    server = PiiServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def rfleet(sentry: FakeSentry) -> Iterator[Fleet]:
    """API, an agent worker (4 processes) and two tool workers, started side by side: debug logs,
    every run's tool results sampled, every trace sent to the fake Sentry."""
    server = RedisServer()
    f = Fleet(server, FLEET_CONFIG, {**FLEET_ENV, "SENTRY_DSN": sentry.dsn})
    try:
        api = f.spawn("api", "api")
        workers = [spawn_agent_worker(f)]
        for _ in range(TOOL_WORKERS):
            name = f"tool-{uuid.uuid4().hex[:6]}@%h"
            workers.append(f.spawn("tool-worker", "tool-worker", "-n", name, "--without-mingle"))
        wait_for(lambda: _answers(f"{f.url}/healthz"), 60, f"API did not start:\n{api.text()}")
        for proc in workers:
            wait_ready(proc)
        yield f
    finally:
        f.close()
        server.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def log_offsets(fleet: Fleet) -> dict[str, int]:
    return {str(p.log): p.log.stat().st_size if p.log.exists() else 0 for p in fleet.procs}


def log_texts(fleet: Fleet, since: dict[str, int] | None = None) -> dict[str, str]:
    """What each process logged (since `since`), by process and log file."""
    out = {}
    for p in fleet.procs:
        data = p.log.read_bytes() if p.log.exists() else b""
        out[f"{p.name} ({p.log.name})"] = data[(since or {}).get(str(p.log), 0) :].decode(errors="replace")
    return out


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                out.append(event)
    return out


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def leaking_lines(texts: dict[str, str], probe: Callable[[str], list[str]] = leaks) -> list[str]:
    """`process: logger 'event': [labels] xN` for every kind of log line that leaks."""
    found: Counter[str] = Counter()
    for name, text in texts.items():
        if not probe(text):
            continue
        for line in text.splitlines():
            labels = probe(line)
            if labels:
                try:
                    event = json.loads(line)
                    where = f"{event.get('logger')} {str(event.get('event'))[:40]!r}"
                except ValueError:
                    where = f"(not JSON) {line[:40]!r}"
                found[f"{name}: {where}: {labels}"] += 1
    return [f"{kind} x{n}" for kind, n in sorted(found.items())]


# Random hex ids that Sentry generates: a 10-digit piece of a phone number can occur in one by chance.
RANDOM_ID_KEYS = frozenset({"span_id", "parent_span_id", "trace_id", "event_id", "sid"})


def leak_paths(value: Any, path: str = "") -> Iterator[tuple[str, list[str]]]:
    """(JSON path, labels) of every string in `value` that leaks; list indexes shown as []."""
    if isinstance(value, dict | list) and not leaks(json.dumps(value)):
        return  # nothing below leaks
    if isinstance(value, dict):
        for key, item in value.items():
            if found := leaks(str(key)):
                yield f"{path}.<key {key[:20]!r}>", found
            if (
                key in RANDOM_ID_KEYS
                and isinstance(item, str)
                and all(c in "0123456789abcdef-" for c in item)
            ):
                continue
            yield from leak_paths(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from leak_paths(item, f"{path}[]")
    elif isinstance(value, str) and (found := leaks(value)):
        yield path, found


# -- feeding the corpus to the fleet ----------------------------------------------------------------


@dataclass
class Feed:
    """What the fleet was given and what came out of it."""

    tool_runs: dict[str, int]  # run id -> its tool calls
    raised: dict[str, list[Case]]  # run id of the `raiser` agent -> the cases in its exception
    failed: dict[str, Case]  # run id of a scripted `fail` step -> the case in its message
    records: dict[str, dict[str, Any]]  # run id -> the run with its step log, once ended
    logs: dict[str, str]  # process -> what it logged meanwhile
    sentry: list[Received]  # what the fake Sentry received meanwhile
    queued: dict[str, str]  # run id -> trace_id of the API's "run queued" line

    def events(self) -> list[dict[str, Any]]:
        return [e for text in self.logs.values() for e in json_lines(text)]

    def sentry_events(self) -> list[dict[str, Any]]:
        return [e for got in self.sentry for e in got.events()]


def _text(case: Case) -> str:
    return case.value if isinstance(case.value, str) else json.dumps(case.value)


def submit_all(fleet: Fleet, runs: list[tuple[str, Any]]) -> list[str]:
    """Submit (agent, input) pairs a few at a time; their run ids, in order."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(lambda run: str(fleet.submit(run[0], run[1])["id"]), runs))


def _send_api_requests(fleet: Fleet, case: Case) -> None:
    """The case in HTTP requests to the API: a malformed body, an invalid body with the case in
    the query string and a header, and a body sent with the case as the API key."""
    text = _text(case)
    one_line = "\n" not in text and text.isascii()  # a header holds one line of ASCII
    with fleet.client() as c:
        broken = '{"agent": "scripted", "input": {"note": ' + json.dumps(text)
        resp = c.post("/v1/runs", content=broken, headers={"Content-Type": "application/json"})
        assert resp.status_code == 422, resp.text
        resp = c.post(
            "/v1/runs",
            params={"note": text},
            headers={"X-Note": text} if one_line else {},
            json={"agent": "scripted", "input": {"plan": [], "note": case.value}},
        )
        assert resp.status_code == 422, resp.text
    if one_line:
        resp = httpx.post(
            f"{fleet.url}/v1/runs",
            json={"agent": "scripted", "input": {"note": case.value}},
            headers={"Authorization": f"Bearer {text}"},
            timeout=40,
        )
        assert resp.status_code == 401, resp.text


@pytest.fixture(scope="module")
def fed(rfleet: Fleet, sentry: FakeSentry, pii_server: PiiServer) -> Feed:
    """The corpus, fed to the fleet in every way a client, an agent or a tool can."""
    logs_from, sentry_from = log_offsets(rfleet), sentry.count()
    # Run inputs and tool results: each case as echo's arguments (echo returns them), as the text
    # of test.big's result, and as the body (and where it fits, the query) of what http.get
    # fetches; every result is sampled (100 %).
    plans: list[list[dict[str, Any]]] = []
    for group in chunks(list(range(len(CORPUS))), 4):
        plan: list[dict[str, Any]] = []
        for i in group:
            value = CORPUS[i].value
            plan.append({"tool": "echo", "args": value if isinstance(value, dict) else {"note": value}})
            if isinstance(value, str):
                plan.append({"tool": "test.big", "args": {"megabytes": 1e-6, "text": value}})
            plan.append({"tool": "http.get", "args": {"url": pii_server.url(i, value)}})
        plans.append([*plan, {"final": "done"}])
    ids = submit_all(rfleet, [("scripted", {"plan": plan}) for plan in plans])
    tool_runs = {run_id: len(plan) - 1 for run_id, plan in zip(ids, plans, strict=True)}
    # Exceptions raised by agents (two cases in each message, dicts as repr), and plans that fail
    # with the case (a third of them: the same redaction as exceptions, on another path).
    pairs = chunks(CORPUS, 2)
    messages = [" / ".join(c.value if isinstance(c.value, str) else repr(c.value) for c in p) for p in pairs]
    ids = submit_all(
        rfleet,
        [
            ("raiser", {"message": m, "to": [c.value for c in p]})
            for m, p in zip(messages, pairs, strict=True)
        ],
    )
    raised = dict(zip(ids, pairs, strict=True))
    ids = submit_all(rfleet, [("scripted", {"plan": [{"fail": c.value}]}) for c in TEXTS[::3]])
    failed = dict(zip(ids, TEXTS[::3], strict=True))
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda case: _send_api_requests(rfleet, case), CORPUS))

    records = {
        run["id"]: run for run in (rfleet.wait(i, timeout=120) for i in [*tool_runs, *raised, *failed])
    }
    api_text = log_texts(rfleet, logs_from)
    queued = {
        e["run_id"]: e["trace_id"]
        for text in api_text.values()
        for e in json_lines(text)
        if e.get("event") == "run queued"
    }

    def every_task_traced() -> bool:
        seen = {trace_id(e) for e in sentry.events(sentry_from) if e.get("transaction") == RUN_TASK}
        return set(queued.values()) <= seen

    # Transactions are sent in the background; what comes after the runs' own is given a moment.
    with contextlib.suppress(AssertionError):
        wait_for(every_task_traced, 60)
    time.sleep(1.0)
    return Feed(
        tool_runs, raised, failed, records, log_texts(rfleet, logs_from), sentry.since(sentry_from), queued
    )


# -- tests -----------------------------------------------------------------------------------------


def test_the_corpus_holds_at_least_50_pii_and_secret_strings() -> None:
    assert len(TEXTS) >= 50, len(TEXTS)
    assert len(SECRETS) >= 50
    for case in CORPUS:  # each secret is really in the value the fleet is given
        shown = case.value if isinstance(case.value, str) else repr(case.value)
        assert all(s in shown for s in case.secrets), case.label


def test_run_records_hold_no_pii_in_the_error_or_the_step_log(fed: Feed) -> None:
    for run_id in fed.tool_runs:
        run = fed.records[run_id]
        assert run["status"] == "succeeded", run
        assert len(run["steps"]) == fed.tool_runs[run_id]
        assert all(step["ok"] for step in run["steps"]), run["steps"]
        assert run["error"] is None
        found = leaks(json.dumps(run["steps"]))
        assert not found, excerpt(json.dumps(run["steps"]), found)
    for run_id in [*fed.raised, *fed.failed]:
        run = fed.records[run_id]
        assert run["status"] == "failed" and run["stop_reason"] == "error", run
        if run_id in fed.raised:
            assert run["error"]["type"] == "agent_error", run
            assert run["error"]["message"].startswith("ValueError: "), run
        found = leaks(json.dumps(run["error"]) + json.dumps(run["steps"]))
        assert not found, f"{fed.raised.get(run_id) or fed.failed[run_id]}: {found}: {run['error']}"


def test_every_sampled_tool_result_and_agent_error_is_logged_redacted(fed: Feed) -> None:
    """The lines the corpus could leak through were written (so the leak checks are not vacuous),
    and the sampled results in them are redacted and capped."""
    events = fed.events()
    results = [e for e in events if e.get("event") == "tool result"]
    for run_id, calls in fed.tool_runs.items():
        assert sum(1 for e in results if e.get("run_id") == run_id) == calls, run_id
    big = [e["result"] for e in results if e.get("run_id") in fed.tool_runs and e.get("tool") == "test.big"]
    assert len(big) == len(TEXTS)
    assert all(isinstance(r["result"]["text"], str) and "[" in r["result"]["text"] for r in big), big[:3]
    cap = ObservabilitySection().result_max_bytes
    assert all(len(json.dumps(e["result"])) <= cap for e in results)
    raised = {e.get("run_id") for e in events if e.get("event") == "agent raised"}
    assert set(fed.raised) <= raised


def test_no_log_line_of_any_process_holds_the_corpus(fed: Feed) -> None:
    found = leaking_lines(fed.logs)
    assert not found, "log lines with PII or secrets:\n" + "\n".join(found)


def test_no_log_line_holds_the_sentry_dsn_key(fed: Feed) -> None:
    def dsn_key(text: str) -> list[str]:
        return ["SENTRY_DSN key"] if SENTRY_KEY in text else []

    found = leaking_lines(fed.logs, dsn_key)
    assert not found, "log lines with the DSN's key:\n" + "\n".join(found)


def test_sentry_receives_none_of_the_corpus(fed: Feed, sentry: FakeSentry) -> None:
    assert not sentry.failures, sentry.failures  # every body was read (and decompressed)
    kinds = Counter((e.get("server_name"), e.get("type", "event")) for e in fed.sentry_events())
    assert kinds[("api", "transaction")] and kinds[("worker", "transaction")], kinds  # not vacuous
    strings: Counter[str] = Counter()  # where -> leaking strings there
    cases: dict[str, set[str]] = {}  # where -> the corpus cases leaked there
    for got in fed.sentry:
        spots = [
            (f"{e.get('server_name')} {e.get('type', 'event')} {e.get('transaction')!r} {path}", labels)
            for e in got.events()
            for path, labels in leak_paths(e)
        ]
        body = re.sub(
            r'"(?:span_id|parent_span_id|trace_id|event_id|sid)":\s*"[0-9a-f-]+"',
            "",
            got.body.decode(errors="replace"),
        )
        if not spots and (labels := leaks(body)):
            spots = [(f"{got.path} (outside the events)", labels)]
        for where, labels in spots:
            strings[where] += 1
            cases.setdefault(where, set()).update(labels)
    listing = [
        f"{where}: {n} strings, {len(cases[where])} cases, e.g. {sorted(cases[where])[:3]}"
        for where, n in sorted(strings.items())
    ]
    assert not listing, "Sentry received PII or secrets:\n" + "\n".join(listing)


def test_agent_exceptions_reach_sentry_as_error_events_in_the_runs_trace(fed: Feed) -> None:
    """SENTRY_DSN: errors go to Sentry. An agent's exception ends its run as failed and is an
    error event in the run's trace (redacted, as the test above checks)."""
    errors = [e for e in fed.sentry_events() if e.get("type", "event") == "event"]
    traces = {trace_id(e) for e in errors}
    missing = [run_id for run_id in fed.raised if fed.queued.get(run_id) not in traces]
    assert not missing, (
        f"{len(missing)} of {len(fed.raised)} runs whose agent raised have no error event in their "
        f"trace; error events received: {len(errors)}"
    )


def test_http_requests_of_tools_do_not_carry_the_sentry_dsn_key(fed: Feed, pii_server: PiiServer) -> None:
    """An agent's http.get goes to any host: the fleet's Sentry key must not go with it."""
    assert len(pii_server.headers) >= len(CORPUS)
    sent = [h for h in pii_server.headers if any(SENTRY_KEY in v for v in h.values())]
    assert not sent, f"{len(sent)} of {len(pii_server.headers)} requests carried it: {sent[0]}"


def test_api_and_worker_share_the_runs_trace_id_in_logs_and_in_sentry(fed: Feed) -> None:
    runs = [*fed.tool_runs, *fed.raised, *fed.failed]
    assert set(runs) <= set(fed.queued), "a run has no 'run queued' line in the API's log"
    by_run: dict[str, set[str | None]] = {}
    for e in fed.events():
        if e.get("run_id") in fed.queued and e.get("event") != "run queued":
            by_run.setdefault(e["run_id"], set()).add(e.get("trace_id"))
    for run_id in runs:
        assert by_run.get(run_id) == {fed.queued[run_id]}, (run_id, fed.queued[run_id], by_run.get(run_id))
    api = {
        trace_id(e)
        for e in fed.sentry_events()
        if e.get("server_name") == "api" and e.get("transaction") == "/v1/runs"
    }
    tasks = {
        trace_id(e)
        for e in fed.sentry_events()
        if e.get("server_name") == "worker" and e.get("transaction") == RUN_TASK
    }
    tools = {trace_id(e) for e in fed.sentry_events() if e.get("transaction") == TOOL_TASK}
    for run_id in runs:
        trace = fed.queued[run_id]
        assert trace in api, f"no API transaction in trace {trace} of run {run_id}"
        assert trace in tasks, f"no run_agent transaction in trace {trace} of run {run_id}"
    for run_id in fed.tool_runs:
        assert fed.queued[run_id] in tools, f"no tool_call transaction in the trace of run {run_id}"


@pytest.mark.timeout(480)  # 2 GB of tool results: minutes on a shared 2-core machine
def test_incident_100_runs_of_20_mb_results_with_debug_logs_and_full_sampling(rfleet: Fleet) -> None:
    """Debug logging, sampling at 100 %, 100 runs whose tool returns 20 MB: the agent worker's
    memory stays under 300 MB, no log line is over the cap, Redis holds capped results, every run
    ends."""
    worker = psutil.Process(
        next(p for p in rfleet.procs if p.name == "worker" and p.popen.poll() is None).popen.pid
    )
    tool_workers = [psutil.Process(p.popen.pid) for p in rfleet.procs if p.name == "tool-worker"]
    tool_peak_rss: dict[int, int] = {}
    keys = Keys("fleet")
    memory_before = int(rfleet.r.info("memory")["used_memory"])
    peak: dict[str, int] = {"total_rss": 0, "total_pss": 0, "redis": memory_before}
    peak_rss: dict[int, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total_rss = total_pss = 0
            for proc in [worker, *worker.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    mem = proc.memory_full_info()
                    total_rss, total_pss = total_rss + mem.rss, total_pss + mem.pss
                    peak_rss[proc.pid] = max(peak_rss.get(proc.pid, 0), mem.rss)
            for proc in tool_workers:  # for the record: a tool worker holds each 20 MB result
                with contextlib.suppress(psutil.Error):
                    tool_peak_rss[proc.pid] = max(tool_peak_rss.get(proc.pid, 0), proc.memory_info().rss)
            peak["total_rss"] = max(peak["total_rss"], total_rss)
            peak["total_pss"] = max(peak["total_pss"], total_pss)
            with contextlib.suppress(Exception):
                peak["redis"] = max(peak["redis"], int(rfleet.r.info("memory")["used_memory"]))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    plan = [{"tool": "test.big", "args": {"megabytes": 20}}, {"final": "ok"}]
    try:
        run_ids = submit_all(rfleet, [("scripted", {"plan": plan})] * 100)
        runs = [rfleet.wait(run_id, timeout=400) for run_id in run_ids]
    finally:
        stop.set()
        sampler.join()

    mib = 2**20
    summary = (
        f"agent worker peak RSS per process (MiB): {sorted(v // mib for v in peak_rss.values())}, "
        f"peak total RSS {peak['total_rss'] // mib} MiB, peak total PSS {peak['total_pss'] // mib} MiB; "
        f"Redis used_memory {memory_before // mib} -> peak {peak['redis'] // mib} MiB; "
        f"tool workers' peak RSS (MiB): {sorted(v // mib for v in tool_peak_rss.values())}"
    )
    print(summary)
    assert all(run["status"] in TERMINAL for run in runs)  # every run ends (wait() fails otherwise)
    assert [run["status"] for run in runs] == ["succeeded"] * 100, Counter(r["status"] for r in runs)
    not_ok = [(run["steps"][0], run["usage"]) for run in runs if not run["steps"][0]["ok"]]
    assert not not_ok, not_ok[:3]  # the first step's entry says why (error_type) and how long it took
    assert all(run["usage"]["tool_calls"] == 1 for run in runs), [run["usage"] for run in runs][:3]
    assert max(peak_rss.values()) < 300 * mib, summary
    assert peak["total_pss"] < 300 * mib, summary

    # Every log line of every process, over the whole module, is within the cap.
    for proc in rfleet.procs:
        sizes = [len(line) for line in proc.log.read_bytes().split(b"\n")]
        assert max(sizes) <= LINE_CAP, f"{proc.name}: a line of {max(sizes)} bytes"
    results = [
        e
        for text in log_texts(rfleet).values()
        for e in json_lines(text)
        if e.get("event") == "tool result" and e.get("run_id") in set(run_ids)
    ]
    assert len(results) == 100  # every result sampled, each in a line within the cap
    assert all(e["result"]["truncated"] is True for e in results)

    # Results are cut on the tool worker: what Redis keeps of each is at most max_result_bytes.
    # (the run's own working copy, last_result, is dropped when the run ends)
    assert not any(rfleet.r.hexists(keys.run(run_id), "last_result") for run_id in run_ids)
    kept = [int(rfleet.r.hstrlen(keys.call(f"{run_id}:1:0"), "result")) for run_id in run_ids]
    assert 0 < max(kept) <= MAX_RESULT_BYTES + 512, max(kept)
    assert peak["redis"] - memory_before <= 100 * 3 * MAX_RESULT_BYTES + 32 * mib, summary


def test_runs_that_are_not_sampled_log_no_tool_result(rfleet: Fleet) -> None:
    """At result_sample_rate 0 no tool result is logged, PII or not. Runs last in this module: it
    replaces the agent worker by one with that setting."""
    rfleet.stop_proc(next(p for p in rfleet.procs if p.name == "worker" and p.popen.poll() is None))
    rfleet.env["FLEET_OBSERVABILITY__RESULT_SAMPLE_RATE"] = "0"
    try:
        worker = spawn_agent_worker(rfleet)
    finally:
        rfleet.env["FLEET_OBSERVABILITY__RESULT_SAMPLE_RATE"] = "1.0"
    wait_ready(worker)
    plans = [
        [
            {"tool": "test.big", "args": {"megabytes": 1e-6, "text": c.value}},
            {"tool": "echo", "args": {"n": c.value}},
        ]
        for c in TEXTS[:8]
    ]
    run_ids = [rfleet.submit(input={"plan": plan})["id"] for plan in plans]
    for run_id in run_ids:
        assert rfleet.wait(run_id)["status"] == "succeeded"
    events = json_lines(worker.text())
    calls = [e for e in events if e.get("event") == "tool call" and e.get("run_id") in run_ids]
    assert len(calls) == 2 * len(run_ids)  # the calls were made and logged by this worker
    assert not [e for e in events if e.get("event") == "tool result"]
