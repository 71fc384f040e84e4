"""worker.obs.logs: one JSON object per line through one chain of processors (structlog and stdlib alike),
redacted, capped in size, filtered by level; per-run sampling and value capping."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from tests.harness import Fleet, wait_for
from tests.pii_corpus import PII_CASES
from worker.obs.logs import HANDLER_NAME, RUN_FIELDS, cap_bytes, configure_logging, sampled

RUN_ID = "3f2a9c1e5b7d4f6a8c0e2b4d6f8a0c1e"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
Configure = Callable[..., io.StringIO]


@pytest.fixture
def logs() -> Iterator[Configure]:
    """Configure logging into a fresh StringIO (JSON unless told otherwise); undo it afterwards."""
    root = logging.getLogger()
    level = root.level

    def configure(level: str = "INFO", **kwargs: Any) -> io.StringIO:
        stream = kwargs.pop("stream", None) or io.StringIO()
        kwargs.setdefault("json", True)
        configure_logging(level, stream=stream, **kwargs)
        return stream

    yield configure
    structlog.contextvars.clear_contextvars()
    for handler in [h for h in root.handlers if h.name == HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _leaks(text: str, secrets: tuple[str, ...]) -> list[str]:
    found = []
    for secret in secrets:
        width = min(len(secret), 8)
        if any(secret[i : i + width] in text for i in range(len(secret) - width + 1)):
            found.append(secret)
    return found


def _bind_run() -> None:
    structlog.contextvars.bind_contextvars(
        run_id=RUN_ID, tenant="acme", agent="researcher", trace_id=TRACE_ID
    )


def test_event_is_one_json_line_with_run_context_and_no_pii(logs: Configure) -> None:
    stream = logs()
    _bind_run()
    structlog.get_logger().info(
        "tool call",
        step=3,
        tool="http.get",
        duration_ms=412,
        outcome="ok",
        stop_reason=None,
        result="reply to alice@example.com, card 4111 1111 1111 1111",
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "tool call" and event["level"] == "info"
    assert event["timestamp"].endswith("Z")
    assert (event["run_id"], event["tenant"], event["agent"], event["trace_id"]) == (
        RUN_ID,
        "acme",
        "researcher",
        TRACE_ID,
    )
    assert (event["step"], event["tool"], event["duration_ms"], event["outcome"]) == (
        3,
        "http.get",
        412,
        "ok",
    )
    assert "stop_reason" not in event  # null: left out
    assert event["result"] == "reply to [EMAIL], card [CARD]"
    assert "alice" not in lines[0] and "4111" not in lines[0]


def test_every_corpus_item_is_redacted_in_log_lines(logs: Configure) -> None:
    stream = logs()
    _bind_run()
    log = structlog.get_logger()
    for label, value, _ in PII_CASES:
        text = value if isinstance(value, str) else json.dumps(value)
        log.info("tool result", case=label, result=value, message=f"model said: {text}")
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(PII_CASES)
    for line, (label, _, secrets) in zip(lines, PII_CASES, strict=True):
        assert json.loads(line)["case"] == label
        assert _leaks(line, secrets) == [], label


def test_json_lines_leave_out_every_field_that_is_null(logs: Configure) -> None:
    stream = logs()
    structlog.get_logger().info("api started", port=8000, reason=None, detail={"inner": None})
    logging.getLogger("uvicorn").info("listening")
    events = _lines(stream)
    assert len(events) == 2
    for event in events:
        assert all(value is not None for value in event.values()), event
        assert not set(RUN_FIELDS) & set(event), event
    assert events[0]["port"] == 8000 and "reason" not in events[0]
    assert events[0]["detail"] == {"inner": None}  # only fields of the line itself are left out


def test_every_line_names_the_process_that_wrote_it(logs: Configure, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = logs(process="tool")
    structlog.get_logger().info("tool executed")
    logging.getLogger("celery.apps.worker").info("tool@host ready.")
    assert [e["process"] for e in _lines(stream)] == ["tool", "tool"]
    monkeypatch.setenv("FLEET_PROCESS", "agent")
    stream = logs()
    structlog.get_logger().info("run finished")
    assert _lines(stream)[0]["process"] == "agent"


def test_secret_named_keywords_are_redacted_whole(logs: Configure) -> None:
    stream = logs()
    structlog.get_logger().info(
        "login", password="hunter2", api_key="plain-text-key", headers={"Authorization": "Token abc"}
    )
    event = _lines(stream)[0]
    assert event["password"] == "[REDACTED]" and event["api_key"] == "[REDACTED]"
    assert event["headers"] == {"Authorization": "[REDACTED]"}


def test_objects_that_are_not_json_are_logged_as_redacted_text(logs: Configure) -> None:
    class Customer:
        def __str__(self) -> str:
            return "Customer(email=carol@example.org)"

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("cannot print")

    stream = logs()
    structlog.get_logger().info("loaded", customer=Customer(), tags={"vip", "eu"}, broken=Broken())
    event = _lines(stream)[0]
    assert event["customer"] == "Customer(email=[EMAIL])"
    assert sorted(event["tags"]) == ["eu", "vip"]
    assert event["broken"] == "<unprintable Broken>"


@pytest.mark.parametrize("redaction", [True, False])
def test_20_mb_field_gives_a_line_within_the_cap_marked_truncated(logs: Configure, redaction: bool) -> None:
    stream = logs(redaction=redaction, max_line_bytes=8192)
    _bind_run()
    structlog.get_logger().info("tool result", step=7, tool="http.get", result="A" * (20 * 1024 * 1024))
    raw = [line for line in stream.getvalue().splitlines() if "tool result" in line]
    assert len(raw) == 1
    assert len(raw[0].encode()) <= 8192
    event = json.loads(raw[0])
    assert event["truncated"] is True
    assert event["result"].startswith("AAAA")
    assert (event["run_id"], event["trace_id"], event["step"], event["tool"]) == (
        RUN_ID,
        TRACE_ID,
        7,
        "http.get",
    )


def test_huge_structures_give_a_line_within_the_cap(logs: Configure) -> None:
    stream = logs(max_line_bytes=4096)
    _bind_run()
    structlog.get_logger().info(
        "model message",
        messages=[{"role": "user", "content": "x" * 10_000}] * 5_000,
        ids=list(range(1_000_000)),
        **{f"field_{i}": "v" * 100 for i in range(2_000)},
    )
    line = stream.getvalue().splitlines()[0]
    assert len(line.encode()) <= 4096
    event = json.loads(line)
    assert event["truncated"] is True and event["event"] == "model message" and event["run_id"] == RUN_ID
    assert event["messages"][0]["role"] == "user"


def test_stdlib_logging_comes_out_as_json_through_the_same_chain(logs: Configure) -> None:
    stream = logs()
    _bind_run()
    logging.getLogger("celery").warning("connected to %s", "redis://:hunter2hunter2@redis:6379/0")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["logger"] == "celery" and event["level"] == "warning"
    assert event["event"] == "connected to redis://:[URL_PASSWORD]@redis:6379/0"
    assert event["run_id"] == RUN_ID and event["trace_id"] == TRACE_ID
    assert event["timestamp"].endswith("Z")


def test_stdlib_exception_traceback_is_redacted(logs: Configure) -> None:
    stream = logs()
    try:
        raise ValueError("bad payload for bob.smith+billing@mail.example.co.uk")
    except ValueError:
        logging.getLogger("uvicorn.error").exception("request failed for %s", "+1 415 555 2671")
    event = _lines(stream)[0]
    assert event["level"] == "error" and event["event"] == "request failed for [PHONE]"
    assert "ValueError: bad payload for [EMAIL]" in event["exception"]
    assert "bob.smith" not in json.dumps(event) and "555 2671" not in json.dumps(event)


def test_debug_is_dropped_at_info_and_kept_at_debug(logs: Configure) -> None:
    stream = logs("INFO")
    structlog.get_logger().debug("structlog debug")
    logging.getLogger("celery").debug("stdlib debug")
    structlog.get_logger().info("structlog info")
    assert [e["event"] for e in _lines(stream)] == ["structlog info"]

    stream = logs("DEBUG")
    structlog.get_logger().debug("structlog debug")
    logging.getLogger("celery").debug("stdlib debug")
    assert [e["event"] for e in _lines(stream)] == ["structlog debug", "stdlib debug"]


def test_warning_level_drops_info(logs: Configure) -> None:
    stream = logs("warning")
    structlog.get_logger().info("dropped")
    structlog.get_logger().warning("kept")
    assert [e["event"] for e in _lines(stream)] == ["kept"]


def test_unknown_level_is_refused_naming_the_setting(logs: Configure) -> None:
    with pytest.raises(ValueError, match="FLEET_LOG_LEVEL"):
        logs("LOUD")


def test_turning_redaction_off_logs_a_warning_at_configure_time(logs: Configure) -> None:
    stream = logs(redaction=False)
    first = _lines(stream)
    assert len(first) == 1
    assert first[0]["level"] == "warning" and first[0]["event"].startswith("redaction is off")
    structlog.get_logger().info("raw", email="alice@example.com")
    assert _lines(stream)[1]["email"] == "alice@example.com"  # really off


def test_redaction_on_logs_no_warning_at_configure_time(logs: Configure) -> None:
    assert logs().getvalue() == ""


def test_terminal_stream_gets_human_readable_lines(logs: Configure) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = logs(json=None, stream=Terminal())
    structlog.get_logger().info("run started", email="alice@example.com")
    text = stream.getvalue()
    assert "run started" in text and "[EMAIL]" in text and "alice" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_non_terminal_stream_gets_json_by_default(logs: Configure) -> None:
    stream = logs(json=None)
    structlog.get_logger().info("run started")
    assert _lines(stream)[0]["event"] == "run started"


ANSI = re.compile(r"\x1b\[[0-9;]*m")
CONSOLE_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \[(\w+)\s*\] (\w+)\s+(.*)$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_lines_show_time_level_process_event_and_only_the_fields_that_are_set(
    logs: Configure,
) -> None:
    stream = logs(json=None, stream=Terminal(), process="agent")
    _bind_run()
    structlog.get_logger().info("tool call", step=2, tool="echo", outcome="ok", stop_reason=None)
    logging.getLogger("celery.apps.worker").warning("agent@host ready.")
    lines = [ANSI.sub("", line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2, lines
    first, second = (CONSOLE_LINE.match(line) for line in lines)
    assert first and second, lines
    assert first.group(2, 3) == ("info", "agent") and first.group(4).startswith("tool call")
    assert second.group(2, 3) == ("warning", "agent") and second.group(4).startswith("agent@host ready.")
    assert f"run_id={RUN_ID}" in lines[0] and "tool=echo" in lines[0] and "step=2" in lines[0]
    assert "stop_reason" not in lines[0] and "None" not in "".join(lines) and "null" not in "".join(lines)
    assert "\x1b[" in stream.getvalue()  # a terminal gets colours


@pytest.mark.parametrize(
    ("log_format", "terminal", "as_json"),
    [("auto", True, False), ("auto", False, True), ("json", True, True), ("console", False, False)],
)
def test_log_format_picks_json_or_console_lines(
    logs: Configure, log_format: str, terminal: bool, as_json: bool
) -> None:
    stream = logs(
        json=None, log_format=log_format, stream=Terminal() if terminal else io.StringIO(), process="api"
    )
    structlog.get_logger().info("run started", tenant="acme")
    line = stream.getvalue().splitlines()[0]
    if as_json:
        assert json.loads(line)["tenant"] == "acme"
    else:
        assert CONSOLE_LINE.match(ANSI.sub("", line)) and "tenant=acme" in ANSI.sub("", line)
        assert ("\x1b[" in line) is terminal  # colours only on a terminal


def test_unknown_log_format_is_refused_naming_the_setting(logs: Configure) -> None:
    with pytest.raises(ValueError, match="FLEET_LOG_FORMAT"):
        logs(log_format="xml")


def test_every_corpus_item_is_redacted_in_console_lines(logs: Configure) -> None:
    stream = logs(json=None, log_format="console", process="tool")
    _bind_run()
    log = structlog.get_logger()
    for label, value, _ in PII_CASES:
        text = value if isinstance(value, str) else json.dumps(value)
        log.info("tool result", case=label, result=value, message=f"model said: {text}")
    lines = [line for line in stream.getvalue().splitlines() if CONSOLE_LINE.match(line)]
    assert len(lines) == len(PII_CASES)
    for line, (label, _, secrets) in zip(lines, PII_CASES, strict=True):
        assert f"case={label}" in line or f"case={json.dumps(label)}" in line, (label, line)
        assert _leaks(line, secrets) == [], label


def test_a_20_mb_field_gives_a_console_line_within_the_cap(logs: Configure) -> None:
    cap = 4096
    stream = logs(json=None, log_format="console", max_line_bytes=cap)
    structlog.get_logger().info("tool result", result="x" * 20_000_000, note="kept")
    text = stream.getvalue()
    assert len(text.encode()) <= cap + 200, len(text)  # the capped event plus the console's layout
    assert "truncated=true" in text and "tool result" in text


def test_a_traceback_on_a_console_line_is_redacted(logs: Configure) -> None:
    stream = logs(json=None, log_format="console")
    try:
        raise RuntimeError("login failed for alice@example.com with password=hunter2")
    except RuntimeError:
        structlog.get_logger().exception("request failed")
    text = stream.getvalue()
    assert "request failed" in text and "RuntimeError" in text
    assert "alice@example.com" not in text and "hunter2" not in text


def test_configuring_again_replaces_the_handler_and_stream(logs: Configure) -> None:
    first = logs()
    second = logs()
    assert [h.name for h in logging.getLogger().handlers].count(HANDLER_NAME) == 1
    logging.getLogger("celery").warning("only once")
    structlog.get_logger().warning("structlog once")
    assert first.getvalue() == ""
    assert [e["event"] for e in _lines(second)] == ["only once", "structlog once"]


def test_run_context_is_per_task(logs: Configure) -> None:
    stream = logs()

    async def run(run_id: str) -> None:
        structlog.contextvars.bind_contextvars(run_id=run_id, trace_id=run_id[::-1])
        await asyncio.sleep(0.01)
        structlog.get_logger().info("step", step=1)

    async def both() -> None:
        await asyncio.gather(run("a" * 32), run("b" * 32))

    asyncio.run(both())
    events = _lines(stream)
    assert sorted((e["run_id"], e["trace_id"]) for e in events) == [
        ("a" * 32, "a" * 32),
        ("b" * 32, "b" * 32),
    ]


def test_sampled_is_the_same_for_a_run_in_every_process() -> None:
    ids = [f"run-{i:05d}" for i in range(200)]
    here = [sampled(i, 0.3) for i in ids]
    assert here == [sampled(i, 0.3) for i in ids]
    code = (
        "import json, sys; from worker.obs.logs import sampled; "
        "print(json.dumps([sampled(i, 0.3) for i in json.loads(sys.argv[1])]))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code, json.dumps(ids)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(there.stdout) == here


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
def test_sampled_rate_over_10000_runs_is_within_2_percent(rate: float) -> None:
    hits = sum(sampled(f"{i:032x}", rate) for i in range(10_000))
    assert abs(hits / 10_000 - rate) <= 0.02


def test_sampled_rate_0_samples_nothing_and_1_everything() -> None:
    ids = [f"{i:032x}" for i in range(1_000)]
    assert not any(sampled(i, 0.0) for i in ids)
    assert all(sampled(i, 1.0) for i in ids)


@pytest.mark.parametrize("limit", [64, 256, 1024, 8192])
@pytest.mark.parametrize(
    "value",
    [
        "x" * 1_000_000,
        "é" * 100_000,
        '"quoted"\n' * 10_000,
        list(range(1_000_000)),
        {"status": 200, "body": "b" * 50_000, "headers": {"content-type": "text/html"}},
        [{"title": "t" * 500, "url": "https://example.com/" + "p" * 500}] * 1_000,
        {f"k{i}": "v" * 100 for i in range(10_000)},
        [[["deep" * 1_000] * 10] * 10] * 10,
    ],
    ids=["ascii", "unicode", "escapes", "ints", "response", "results", "wide_dict", "nested"],
)
def test_cap_bytes_bounds_the_json_size(value: Any, limit: int) -> None:
    capped = cap_bytes(value, limit)
    assert len(json.dumps(capped).encode()) <= limit


def test_cap_bytes_returns_small_values_unchanged_and_keeps_shape() -> None:
    small = {"status": 200, "body": "ok"}
    assert cap_bytes(small, 1024) is small
    capped = cap_bytes({"status": 200, "body": "b" * 50_000, "headers": {"x": "y"}}, 1024)
    assert capped["status"] == 200 and capped["headers"] == {"x": "y"}
    assert capped["body"].startswith("bbbb") and capped["body"].endswith("[...]")
    assert cap_bytes(list(range(100)), 64)[:3] == [0, 1, 2]


def test_a_run_logs_one_started_and_one_finished_line_and_no_celery_task_line(fleet: Fleet) -> None:
    run = fleet.submit(input={"plan": [{"final": "ok"}]})
    assert fleet.wait(run["id"])["status"] == "succeeded"
    worker = next(p for p in fleet.procs if p.name == "worker")
    wait_for(lambda: f'"run_id": "{run["id"]}"' in worker.text(), 10, "no line of the run")
    time.sleep(0.5)  # the pool's lines reach the log file through the main process
    events = [json.loads(line) for line in worker.text().splitlines() if line.startswith("{")]
    mine = [e["event"] for e in events if e.get("run_id") == run["id"]]
    assert mine == ["run started", "run finished"], mine
    # nor Celery's `Task fleet.run_agent[…] received` / `… succeeded` (observability.run_task_events
    # brings back the first: tests/worker/obs/test_run_events.py)
    assert not [e for e in events if e["event"].startswith("Task fleet.run_agent[")]
