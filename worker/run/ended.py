"""What happens once a run has ended, in the process that ended it (RunStore's end hook): the
run's one `run finished` log line, and its end counted in its version's window, which may roll a
canary back (worker/control/rollout.py)."""

from __future__ import annotations

import logging
import time

import redis
import structlog

from worker.control.rollout import Rollouts
from worker.keys import Keys
from worker.run.store import EndHook
from worker.settings import Settings

events = structlog.get_logger("agentfleet.run")
rollout_log = logging.getLogger("agentfleet.rollout")


def end_recorder(r: redis.Redis, keys: Keys, settings: Settings) -> EndHook:
    """The RunStore hook that logs a run's end, counts a versioned run's end and may roll its
    canary back. It reads the run's agent and version itself only when the call that ended the
    run did not return them (a cancel of a queued run)."""
    rollouts = Rollouts(r, keys, settings)

    def on_end(run_id: str, status: str, stop_reason: str, ended: dict[str, str] | None) -> None:
        if ended is None:
            values = r.hmget(keys.run(run_id), ["agent", "version", "started_ts", "finished_ts"])
            names = ("agent", "version", "started_ts", "finished_ts")
            ended = {n: str(v) for n, v in zip(names, values, strict=True) if v is not None}
        agent, version = ended.get("agent"), ended.get("version")
        started, finished = ended.get("started_ts"), ended.get("finished_ts")
        duration_ms = round((float(finished) - float(started)) * 1000, 1) if started and finished else None
        events.info(
            "run finished", run_id=run_id, outcome=status, stop_reason=stop_reason, duration_ms=duration_ms
        )
        if agent and version and rollouts.record_end(agent, version, stop_reason, time.time()):
            rollout_log.warning("canary rolled back: error rate over the limit", extra={"agent": agent})

    return on_end
