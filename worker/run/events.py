"""A run's events (`GET /v1/runs/{id}/events`): one Redis stream per run, written with the facts.

Each event is a stream entry with two fields, `event` (its name) and `data` (JSON text); the
entry's id (`<ms>-<seq>`, Redis' clock) is the event's SSE `id:`. The names:

- `status`: `{"status", "stop_reason"}`; written by the scripts that change a run's status:
  creation (`queued`), the start script (`running`, once: a resume or a new attempt of a running
  run is no new status), the end script and the cancel of a queued run (the terminal status).
  Parking and resuming change no status and write no event.
- `step`: a step's entry, the same JSON text that the run's step log holds (already redacted by
  the loop), written in the checkpoint's transaction.
- `approval_requested`, `approval_decided`: written by the approval scripts
  (worker/control/approvals.py) when a call asks for a human's approval and when it is decided or expires;
  their data is the approval and the decision.
- `end`: written right after the terminal status, in the same script; its stored data is empty,
  and the API sends the run as `GET /v1/runs/{id}` shows it (a run that has ended no longer
  changes). The stream closes after it.

Every write appends with `MAXLEN EVENTS_MAX`, sets the stream's TTL to the run's and, except at
creation (no client knows the run's id before its creation answers), PUBLISHes the event's name
on `Keys.run_events_channel` so the API wakes the streams of that run without polling. The end
script announces its events on the run's ended channel, which the streams listen to as well.

The writer is defined once per language, side by side: `LUA_EMIT` for the scripts, `emit_in` for
a pipeline.
"""

from __future__ import annotations

import json

import redis

from worker import lua
from worker.keys import Keys

STATUS = "status"
STEP = "step"
APPROVAL_REQUESTED = "approval_requested"
APPROVAL_DECIDED = "approval_decided"
END = "end"
NAMES = frozenset({STATUS, STEP, APPROVAL_REQUESTED, APPROVAL_DECIDED, END})

# Entries kept per run, oldest trimmed first: a whole step log (store.STEP_LOG_MAX, 200 entries)
# plus a run's status events and its end, with as much room again for approval events.
EVENTS_MAX = 512

# emit(stream, channel or false, max entries, ttl (s), name, data): append one event, keep the
# stream at most `maxlen` long and alive as long as the run, and announce it on `channel`.
LUA_EMIT = lua.load("worker/run/emit.lua")


def status_data(status: str, stop_reason: str | None = None) -> str:
    """The data of a `status` event."""
    return json.dumps({"status": status, "stop_reason": stop_reason})


def emit_in(pipe: redis.client.Pipeline, keys: Keys, run_id: str, name: str, data: str, ttl_s: int) -> None:
    """Queue one event on `pipe`, in the same transaction (and round trip) as the fact it reports;
    LUA_EMIT's twin."""
    pipe.xadd(keys.run_events(run_id), {"event": name, "data": data}, maxlen=EVENTS_MAX, approximate=False)
    pipe.expire(keys.run_events(run_id), ttl_s)
    pipe.publish(keys.run_events_channel(run_id), name)
