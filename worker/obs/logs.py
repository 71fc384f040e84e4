"""Structured logs: one event per line on a stream, built by a chain of small structlog processors.

Chain: contextvars (run_id, tenant, agent, trace_id bound per task) -> the process's kind -> fields
that are null left out -> level -> UTC ISO timestamp -> exception text -> member bound -> redaction
-> line cap -> a renderer: JSON lines, or console lines (time, level, process, event, the fields
that are set) for a person at a terminal. The stdlib `logging` (Celery, uvicorn) goes through the
same chain via a handler on the root logger, so every line of either format is redacted and capped
the same way, and in JSON mode every line is one JSON object of at most `max_line_bytes` bytes.

`sampled` decides per run whether its tool results and model messages are logged; `cap_bytes`
bounds such a value before it is logged.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from worker.obs.redact import MAX_DEPTH, redact
from worker.units import run_share

HANDLER_NAME = "fleet-logs"
# The kind of fleet process (api, agent, tool, flower, up), set by the `fleet` command before it
# starts or execs the process, and shown on every line.
PROCESS_ENV = "FLEET_PROCESS"
LogFormat = Literal["auto", "json", "console"]
MIN_LINE_BYTES = 1024
CUT_MARK = "[...]"
# Ids are never redacted. The line cap may cut kept keys (like any big value) but never drops them.
STRUCTURAL_KEYS = frozenset(
    {"timestamp", "level", "logger", "process", "run_id", "trace_id", "span_id", "step"}
)
RUN_FIELDS = (
    "run_id",
    "trace_id",
    "tenant",
    "agent",
    "step",
    "tool",
    "duration_ms",
    "outcome",
    "stop_reason",
)
_KEEP_KEYS = STRUCTURAL_KEYS | {"event", "exception", "truncated", *RUN_FIELDS}


def _dumps(value: Any) -> str:
    # json.dumps' defaults, as most readers write JSON; ASCII-only, so characters are bytes on any
    # stdout encoding.
    return json.dumps(value, default=str)


def _plain(value: Any, budget: list[int], depth: int = 0) -> Any:
    """`value` as JSON types (other objects become their str, so redaction sees them).

    `budget` is [bytes left, set when something was left out or will be cut, cost cap of one
    string]: a member costs its key, 2 bytes, and its string length up to the cap; members past
    the budget are left out, which bounds the work of redacting and measuring what is kept."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if depth >= MAX_DEPTH:
        return "[DEPTH]"
    if isinstance(value, dict | list | tuple | set | frozenset):
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        out: dict[str, Any] = {}
        for k, v in pairs:
            if budget[0] <= 0:
                budget[1] = 1
                break
            key = str(k)
            budget[0] -= 2 + (len(key) if isinstance(value, dict) else 0)
            if isinstance(v, str):
                budget[0] -= min(len(v), budget[2])
                budget[1] |= len(v) > budget[2]  # it will be cut
            out[key] = _plain(v, budget, depth + 1)
        return out if isinstance(value, dict) else list(out.values())
    try:
        return str(value)
    except Exception:  # a log call must not raise because an object cannot print itself
        return f"<unprintable {type(value).__name__}>"


def _cut_str(s: str, limit: int) -> str:
    s = s[:limit]  # every character is at least one byte of JSON
    lo, hi = 0, len(s)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(_dumps(s[:mid] + CUT_MARK)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return s[:lo] + CUT_MARK if len(_dumps(CUT_MARK)) <= limit else ""


def _level(sizes: list[int], budget: int) -> int:
    """Water-filling: the largest `c` with sum(min(size, c)) <= budget."""
    for i, size in enumerate(sorted(sizes)):
        if size * (len(sizes) - i) > budget:
            return max(budget // (len(sizes) - i), 0)
        budget -= size
    return max(sizes, default=0)


def _fit(value: dict[str, Any] | list[Any], limit: int, keep: frozenset[str] = frozenset()) -> Any:
    """Fit a container in `limit` bytes: keep the leading members that fit at up to 64 bytes each
    (and all those in `keep`), cut every member above a common size, then drop trailing members
    while it still does not fit."""
    out: Any = dict(value) if isinstance(value, dict) else list(value)
    keys = list(out) if isinstance(out, dict) else list(range(len(out)))
    used, room = 2, 0
    for k in keys:
        used += (len(_dumps(k)) + 2 if isinstance(out, dict) else 0) + min(len(_dumps(out[k])), 64) + 2
        if used > limit:
            break
        room += 1
    droppable = [k for k in keys if k not in keep]
    while len(out) > max(room, 1) and droppable:
        del out[droppable.pop()]  # a list's indexes come off its end, so the others stay valid
    sizes = {k: len(_dumps(v)) for k, v in (out.items() if isinstance(out, dict) else enumerate(out))}
    cuttable = [k for k in sizes if isinstance(out[k], str | dict | list)]
    fixed = len(_dumps(out)) - sum(sizes[k] for k in cuttable)  # keys, punctuation, numbers
    level = _level([sizes[k] for k in cuttable], limit - fixed)
    for k in cuttable:
        if sizes[k] > level:
            out[k] = cap_bytes(out[k], level)
    while len(_dumps(out)) > limit and droppable:
        del out[droppable.pop()]
    return out


def cap_bytes(value: Any, limit: int) -> Any:
    """`value`, or a shortened copy whose `json.dumps` is at most `limit` bytes (ASCII-escaped).

    Strings are cut and end in `[...]`; dicts and lists keep their shape as far as the limit lets
    them (trailing members dropped, the biggest cut to a common size); other objects count as their
    str. The work is bounded by `limit`, not by the size of `value`. A `limit` below 8 may give "".
    """
    if isinstance(value, str):
        return value if len(value) <= limit and len(_dumps(value)) <= limit else _cut_str(value, limit)
    budget = [4 * limit, 0, limit]
    plain = _plain(value, budget)
    if not budget[1] and len(_dumps(plain)) <= limit:
        return value
    if isinstance(plain, dict | list):
        plain = _fit(plain, limit)
    return plain if len(_dumps(plain)) <= limit else _cut_str(_dumps(plain), limit)


def sampled(run_id: str, rate: float) -> bool:
    """Whether a run is sampled at `rate` (0..1): the same answer for a run id in every process."""
    return run_share(run_id) < rate


def drop_nulls(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: no field whose value is null; a line carries only what is set."""
    return {k: v for k, v in event_dict.items() if v is not None}


def add_process(process: str) -> Processor:
    """Processor: the kind of fleet process that wrote the line (`api`, `agent`, `tool`, ...)."""

    def processor(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("process", process)
        return event_dict

    return processor


def bound_event(max_line_bytes: int) -> Processor:
    """Processor: values as JSON types, and no more members than a few lines' worth (so redacting
    and measuring a huge value costs no more than that); a cut event gets truncated=true."""

    def processor(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        budget = [4 * max_line_bytes, 0, max_line_bytes]
        bounded = {k: _plain(v, budget, 1) for k, v in event_dict.items() if k in _KEEP_KEYS}
        bounded.update(_plain({k: v for k, v in event_dict.items() if k not in _KEEP_KEYS}, budget))
        if budget[1] or any(isinstance(v, str) and len(v) > max_line_bytes for v in bounded.values()):
            bounded["truncated"] = True
        return bounded

    return processor


def redact_event(max_chars: int) -> Processor:
    """Processor: every non-structural key through `redact` (secret-named keys become [REDACTED]);
    strings come out at most `max_chars` long (the line cap would cut them anyway)."""

    def processor(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        rest = {k: v for k, v in event_dict.items() if k not in STRUCTURAL_KEYS}
        kept = {k: v for k, v in event_dict.items() if k in STRUCTURAL_KEYS}
        return {**kept, **redact(rest, max_chars=max_chars)}

    return processor


def cap_line(max_line_bytes: int) -> Processor:
    """Processor: no rendered JSON line over `max_line_bytes` bytes; a cut event gets truncated=true."""
    room = max_line_bytes - len(', "truncated": true')

    def processor(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        for key, value in event_dict.items():  # cheap first: no string longer than a line
            if isinstance(value, str) and len(value) > max_line_bytes:
                event_dict[key] = value[:max_line_bytes]
        if len(_dumps(event_dict)) <= max_line_bytes:
            return event_dict
        fitted: EventDict = _fit(dict(event_dict), room, keep=_KEEP_KEYS)
        fitted["truncated"] = True
        if len(_dumps(fitted)) > max_line_bytes:  # only ids left and still too big
            fitted = {"event": "log line over cap", "level": event_dict.get("level"), "truncated": True}
        return fitted

    return processor


def render_json(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> str:
    """Processor: the event as one line of JSON, timestamp, level and event first."""
    head = {k: event_dict[k] for k in ("timestamp", "level", "event") if k in event_dict}
    return _dumps({**head, **event_dict})


_RESET, _DIM, _BRIGHT, _BLUE, _CYAN, _MAGENTA = (
    "\x1b[0m",
    "\x1b[2m",
    "\x1b[1m",
    "\x1b[34m",
    "\x1b[36m",
    "\x1b[35m",
)
_LEVEL_STYLES = {
    "critical": "\x1b[31;1m",
    "exception": "\x1b[31m",
    "error": "\x1b[31m",
    "warning": "\x1b[33m",
    "info": "\x1b[32m",
    "debug": "\x1b[34m",
    "notset": "",
}


def _short_time(value: object) -> str:
    """`2026-12-02T09:14:39.123456Z` as `09:14:39.123`: a console line is read the same day."""
    text = str(value)
    return text[11:23] if len(text) >= 23 and text[10] == "T" else text


def console_renderer(colors: bool) -> structlog.dev.ConsoleRenderer:
    """Console lines for a person: `time [level] process event key=value ...`, fields sorted."""
    dev = structlog.dev

    def style(code: str) -> str:
        return code if colors else ""

    def column(key: str, value_style: str, width: int = 0, repr_: Any = str) -> Any:
        return dev.Column(
            key,
            dev.KeyValueColumnFormatter(
                key_style=None,
                value_style=style(value_style),
                reset_style=style(_RESET),
                value_repr=repr_,
                width=width,
            ),
        )

    def value_repr(value: object) -> str:
        return value if isinstance(value, str) and value and " " not in value else _dumps(value)

    return dev.ConsoleRenderer(
        columns=[
            column("timestamp", _DIM, repr_=_short_time),
            dev.Column(
                "level",
                dev.LogLevelColumnFormatter(
                    {k: style(v) for k, v in _LEVEL_STYLES.items()} if colors else {}, style(_RESET)
                ),
            ),
            column("process", _BLUE, width=6),
            column("event", _BRIGHT, width=28),
            dev.Column(
                "",
                dev.KeyValueColumnFormatter(
                    key_style=style(_CYAN),
                    value_style=style(_MAGENTA),
                    reset_style=style(_RESET),
                    value_repr=value_repr,
                ),
            ),
        ],
        # The exception is already text (format_exc_info), redacted and capped like every field;
        # a traceback formatter of the renderer's own would show local variables.
        exception_formatter=dev.plain_traceback,
    )


def configure_logging(
    level: str,
    *,
    log_format: LogFormat = "auto",
    json: bool | None = None,
    redaction: bool = True,
    max_line_bytes: int = 8192,
    stream: TextIO | None = None,
    process: str | None = None,
) -> None:
    """Send structlog and stdlib logging from this process to `stream` (stdout) through one chain.

    `level` is a logging level name (DEBUG is the "full trace" mode: still redacted and capped).
    `log_format` is `json`, `console` or `auto` (console lines on a terminal, JSON otherwise);
    `json=True/False` overrides it. `process` (default: $FLEET_PROCESS) names the process on every
    line. `redaction=False` logs a warning. Calling it again replaces the previous configuration.
    """
    out = sys.stdout if stream is None else stream
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"FLEET_LOG_LEVEL: unknown log level {level!r}")
    if log_format not in ("auto", "json", "console"):
        raise ValueError(f"FLEET_LOG_FORMAT: use auto, json or console, not {log_format!r}")
    if max_line_bytes < MIN_LINE_BYTES:
        raise ValueError(f"max_line_bytes must be at least {MIN_LINE_BYTES}, got {max_line_bytes}")
    tty = bool(getattr(out, "isatty", lambda: False)())
    as_json = (log_format == "json" or (log_format == "auto" and not tty)) if json is None else json
    process = process or os.environ.get(PROCESS_ENV) or None
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        *([add_process(process)] if process else []),
        drop_nulls,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        bound_event(max_line_bytes),
        *([redact_event(max_line_bytes)] if redaction else []),
        cap_line(max_line_bytes),
    ]
    renderer: Processor = render_json if as_json else console_renderer(colors=tty)
    structlog.configure(
        processors=[*chain, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # Not cached: a logger made at import time follows a later configure_logging call.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.name = HANDLER_NAME
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *chain,
            ],
            processors=[renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.name == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    if not redaction:
        structlog.get_logger("worker.obs.logs").warning(
            "redaction is off: log lines may hold PII and secrets", setting="redaction"
        )
