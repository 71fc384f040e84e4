"""`GET /v1/runs/{id}/events`: a run's events (worker/run/events.py) as Server-Sent Events.

A stream holds no thread and no Redis connection of its own: it runs on the event loop, reads
with the API's asyncio client, and sleeps until the process's one pattern subscription
(api/waiter.py) sees its run's events channel or ended channel. Then it reads the entries after
the last one it sent (`XRANGE` from `(<id>`, with the run's status, in one MULTI), so a
notification says only "look": a lost one costs latency, never an event. It reads again at every
(re)subscription and every RECHECK_S while the subscription is down, sends a comment every
KEEPALIVE_S so proxies keep the connection, and holds a wait slot that the process renews with
every other stream's in one round trip (api/waitslots.py).

Each event is `id: <stream entry id>`, `event: <name>`, `data: <JSON>`. `Last-Event-ID` resumes
after that id: nothing lost, nothing repeated. `end` carries the run as `GET /v1/runs/{id}` shows
it and closes the stream. A run that has ended but whose stream is gone (expired, or the run is
older than the events) gets an `end` at once, with an id made from its end time; a reconnect
after the `end` gets `204 No Content`, which tells an EventSource to stop reconnecting.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.deps import AppState
from api.errors import ApiError, dump_json, error_response
from api.waiter import RECHECK_S
from api.waitslots import Slot
from worker.run.events import END
from worker.run.store import TERMINAL, public_view

KEEPALIVE_S = 15.0  # a comment line after this long without a write
READ_BATCH = 100  # entries per XRANGE; a longer backlog is read in several

EventId = tuple[int, int]  # (milliseconds, sequence), as Redis orders stream ids
_EVENT_ID_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_ID_PART_MAX = 2**64 - 1
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")
log = structlog.get_logger("agentfleet.api")


def parse_event_id(value: str | None) -> EventId | None:
    """A `Last-Event-ID` as (ms, seq); None when absent or empty (start from the first event).
    Anything but `<ms>-<seq>` (the ids this API sends) is a 422 naming the header."""
    if value is None or not value.strip():
        return None
    found = _EVENT_ID_RE.fullmatch(value.strip())
    if found is None or max(int(found[1]), int(found[2])) > _ID_PART_MAX:
        raise ApiError(422, "invalid_request", "Last-Event-ID: not an event id of this API (<ms>-<seq>)")
    return int(found[1]), int(found[2])


def format_event_id(event_id: EventId) -> str:
    return f"{event_id[0]}-{event_id[1]}"


def frame(event_id: str, name: str, data: str) -> bytes:
    """One SSE event. The data is JSON on one line; should it ever hold a line break, each line
    becomes a `data:` line, which a client joins back with newlines."""
    lines = "".join(f"data: {line}\n" for line in _LINE_BREAK_RE.split(data))
    return f"id: {event_id}\nevent: {name}\n{lines}\n".encode()


def end_id_for(last: EventId | None, finished_ts: float) -> EventId:
    """The id of an `end` the stream does not hold: after its last entry, else at the run's end."""
    at = (int(finished_ts * 1000), 0)
    return (last[0], last[1] + 1) if last is not None and last >= at else at


@dataclass
class Batch:
    """What one read found: events to send (SSE frames), whether the stream is over, whether more
    entries may follow at once (a full batch), and whether the run itself is gone."""

    frames: list[bytes] = field(default_factory=list)
    over: bool = False
    more: bool = False
    gone: bool = False


class RunEvents:
    """The reading side of one run's events, from a position on."""

    def __init__(self, state: AppState, run_id: str, after: EventId | None) -> None:
        self.state = state
        self.run_id = run_id
        self.after = after

    async def read(self) -> Batch:
        """The events after `after` (at most READ_BATCH), moving `after` past them."""
        ar, keys = self.state.ar, self.state.keys
        stream = keys.run_events(self.run_id)
        start = "-" if self.after is None else "(" + format_event_id(self.after)
        pipe = ar.pipeline(transaction=True)  # the entries and the status of one moment
        pipe.xrange(stream, min=start, max="+", count=READ_BATCH)
        pipe.hget(keys.run(self.run_id), "status")
        entries, status = await pipe.execute()
        batch = Batch(more=len(entries) == READ_BATCH)
        for entry_id, fields in entries:
            name = str(fields.get("event", ""))
            if name == END:
                raw = await self._run()
                if raw:
                    batch.frames.append(frame(entry_id, END, dump_json(public_view(raw))))
                batch.over, batch.more, batch.gone = True, False, not raw
                return batch
            batch.frames.append(frame(entry_id, name, str(fields.get("data", ""))))
            self.after = parse_event_id(entry_id)
        if batch.frames:
            return batch
        if status is None:
            return Batch(over=True, gone=True)
        if status not in TERMINAL:
            return batch
        return await self._ended()

    async def _run(self) -> dict[str, str]:
        raw = await self.state.ar.hgetall(self.state.keys.run(self.run_id))
        return {str(k): str(v) for k, v in raw.items()}

    async def _ended(self) -> Batch:
        """The run has ended and nothing follows `after`: the client has had the `end`, or the
        stream lacks one (it expired, or the run is older than the events): send it now."""
        last = await self.state.ar.xrevrange(self.state.keys.run_events(self.run_id), count=1)
        last_id = str(last[0][0]) if last else None
        if last and (last[0][1] or {}).get("event") == END:
            return Batch(over=True)  # at or before `after`: the MULTI above saw nothing after it
        raw = await self._run()
        if not raw:
            return Batch(over=True, gone=True)
        finished_ts = float(raw.get("finished_ts") or raw.get("created_ts") or 0)
        end_id = end_id_for(parse_event_id(last_id), finished_ts)
        if self.after is not None and self.after >= end_id:
            return Batch(over=True)
        self.after = end_id
        return Batch([frame(format_event_id(end_id), END, dump_json(public_view(raw)))], over=True)


def archived_end(record: dict[str, Any], after: EventId | None) -> Response:
    """The answer for a run that only the history holds (its events expired with its Redis
    keys): its `end` alone, with the id made from its end time; 204 when `after` is at or past
    it (the client has had it)."""
    finished = record.get("finished_at") or record.get("created_at") or ""
    try:
        finished_ts = datetime.fromisoformat(str(finished).replace("Z", "+00:00")).timestamp()
    except ValueError:
        finished_ts = 0.0
    end_id = end_id_for(None, finished_ts)
    if after is not None and after >= end_id:
        return Response(status_code=204)
    body = frame(format_event_id(end_id), END, dump_json(record))
    return Response(
        body, status_code=200, headers={"cache-control": "no-cache"}, media_type=EventStream.media_type
    )


class EventStream(Response):
    """The `text/event-stream` answer. It holds the caller's wait slot and frees it when the
    stream ends or the client disconnects, whichever comes first."""

    media_type = "text/event-stream"

    def __init__(self, state: AppState, run_id: str, after: EventId | None, slot: Slot) -> None:
        super().__init__(status_code=200)
        self.state = state
        self.run_id = run_id
        self.events = RunEvents(state, run_id, after)
        self.slot = slot
        self.started = False  # the 200 and its headers have gone out
        self.client_left = False
        self._wake: asyncio.Event | None = None  # the stream's watch event, while it is open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        serve = asyncio.ensure_future(self._serve(scope, receive, send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({serve, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # The flag and the wake-up end the loop even if the cancel is lost on its way: redis-py
            # can swallow one (seen in a slot renewal's script call, with 1,000 streams closing at
            # once). The slot is freed before waiting for the loop to end.
            self.client_left = gone.done()
            if self._wake is not None:
                self._wake.set()
            for task in (serve, gone):
                task.cancel()
            await self.slot.release()  # at once, also when the client left mid-stream
            await asyncio.gather(serve, gone, return_exceptions=True)
        failure = None if serve.cancelled() else serve.exception()
        if failure is not None and not self.client_left:
            raise failure

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the events as they come, until `end`, the server stops, or (by cancellation) the
        client leaves."""
        waiter, keys, loop = self.state.waiter, self.state.keys, asyncio.get_running_loop()
        channels = (keys.run_events_channel(self.run_id), keys.run_ended_channel(self.run_id))
        with waiter.watch(*channels) as wake:
            self._wake = wake
            # the first keep-alive at a random point of the interval: streams opened together
            # (clients reconnecting after a restart) do not write together for ever
            next_keepalive = loop.time() + KEEPALIVE_S * random.uniform(0.5, 1.0)
            must_read, checked = True, -1
            while not self.client_left:
                if must_read:
                    checked = waiter.generation
                    wake.clear()  # before the read: an event written during it wakes us again
                    try:
                        batch = await self.events.read()
                    except (redis.RedisError, OSError) as exc:
                        if not self.started:
                            await _unavailable(scope, receive, send)
                            return
                        log.warning("event stream read failed", run_id=self.run_id, error=type(exc).__name__)
                        batch, checked = Batch(), -1  # Redis is away: read again after RECHECK_S
                    if not self.started:
                        if batch.over and not batch.frames:
                            await self._answer_without_stream(scope, receive, send, batch.gone)
                            return
                        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
                        self.started = True
                        if not batch.frames:  # the headers go out now: the client knows it is connected
                            batch.frames.append(b": waiting for events\n\n")
                    if batch.frames:
                        await _write(send, b"".join(batch.frames))
                        next_keepalive = loop.time() + KEEPALIVE_S
                    if batch.over or self.state.closing.is_set():
                        break  # after `end`; or the server stops: the client resumes elsewhere
                    if batch.more:
                        continue
                if self.slot.lapsed:
                    break  # the slot lapsed while Redis was away: the client reconnects for one
                if loop.time() >= next_keepalive:
                    next_keepalive = loop.time() + KEEPALIVE_S
                    await _write(send, b": keep-alive\n\n")
                timeout_s = next_keepalive - loop.time()
                if not (waiter.subscribed and checked == waiter.generation):
                    timeout_s = min(timeout_s, RECHECK_S)
                await _woken_or_after(wake, timeout_s)
                if self.client_left:
                    return
                must_read = wake.is_set() or not waiter.subscribed or checked != waiter.generation
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _answer_without_stream(self, scope: Scope, receive: Receive, send: Send, gone: bool) -> None:
        """Nothing to stream: the run went away since the route read it (404), or the client has
        had its `end` (204: an EventSource stops reconnecting)."""
        if gone:
            await error_response(404, "not_found", f"no run {self.run_id}")(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _woken_or_after(wake: asyncio.Event, timeout_s: float) -> None:
    """Wait until `wake` is set or `timeout_s` passes; a cancel comes through as CancelledError
    (no TimeoutError to tell apart from it)."""
    woken = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({woken}, timeout=max(0.0, timeout_s))
    finally:
        woken.cancel()


async def _write(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _unavailable(scope: Scope, receive: Receive, send: Send) -> None:
    answer = error_response(503, "unavailable", "the fleet's store is unreachable; try again")
    await answer(scope, receive, send)


_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on, do not buffer the answer
]


async def _disconnected(receive: Receive) -> None:
    """Return when the client disconnects (a GET has no body: the next message is that)."""
    while (await receive())["type"] != "http.disconnect":
        pass
