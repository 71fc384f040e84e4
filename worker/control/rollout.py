"""Canary rollout per agent version, with automatic rollback on error rate.

An agent with `versions: {stable: {...}, canary: {...}}` in its config (`agents.<name>`) sends a
new run to the canary with probability `canary_percent` (the agent's own, else
`rollout.canary_percent`), decided by a hash of the run id, so a resumed run keeps its version.
Per agent and version, a sliding window in Redis counts ended runs, failed runs (stop_reason
`error`) and other stops (budgets, kills: shown, not errors). When the canary's error rate is over
`rollout.rollback_on_error_rate` with at least `rollout.min_runs` ended runs, the script that
records the run's end also rolls the canary back: its share becomes 0, new runs go to stable,
running canary runs finish. That state lives in Redis, so it holds across restarts and needs no
particular process to be alive. `fleet rollout` shows and changes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from worker import lua
from worker.keys import Keys
from worker.settings import Settings
from worker.units import run_share

log = logging.getLogger("agentfleet.rollout")
STABLE, CANARY = "stable", "canary"
ACTIVE, ROLLED_BACK, PROMOTED = "active", "rolled_back", "promoted"
BUCKET_S = 60

# KEYS[1] = window hash of (agent, version), KEYS[2] = rollout hash of the agent
# KEYS[3] = the fleet's per-version counters (for /metrics)
# ARGV[1]: the named arguments, read as `a`: outcome ('error' | 'ok' | 'stopped'), version,
# window_s, min_runs, max_error_rate (as text: the rollback's reason quotes it as Python wrote
# it), now_s (whole seconds), agent. Returns 1 when this end rolled the canary back, else 0.
_RECORD = lua.load("worker/control/rollout_record.lua")


@dataclass(frozen=True)
class Window:
    ended: int
    errors: int
    stopped: int


# Keys of `agents.<name>` that configure its rollout rather than the agent itself.
ROLLOUT_KEYS = ("versions", "canary_percent")


def check_rollout_config(agent: str, agent_config: dict[str, Any]) -> None:
    """Raise ValueError naming the key when the agent's rollout keys do not parse."""
    if "canary_percent" in agent_config:
        value = agent_config["canary_percent"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise ValueError(f"agents.{agent}.canary_percent: a number from 0 to 100, got {value!r}")
    versions = agent_config.get("versions")
    if versions is None:
        return
    if not isinstance(versions, dict) or set(versions) != {STABLE, CANARY}:
        raise ValueError(f"agents.{agent}.versions: a mapping with the keys {STABLE!r} and {CANARY!r} only")
    for name, settings in versions.items():
        if not isinstance(settings, dict):
            raise ValueError(f"agents.{agent}.versions.{name}: a mapping of the agent's settings")


def has_versions(agent_config: dict[str, Any]) -> bool:
    versions = agent_config.get("versions")
    return isinstance(versions, dict) and STABLE in versions and CANARY in versions


def version_config(agent_config: dict[str, Any], version: str | None) -> dict[str, Any]:
    """The agent's settings for `version`: its own settings over the agent's common ones."""
    base = {k: v for k, v in agent_config.items() if k not in ROLLOUT_KEYS}
    if version is None or not has_versions(agent_config):
        return base
    return {**base, **agent_config["versions"].get(version, {})}


def bucket_of(run_id: str) -> float:
    """A number in [0, 100) fixed by the run id: the run's place in the canary split."""
    return run_share(run_id) * 100


class Rollouts:
    """Rollout state and windows of every agent with versions."""

    def __init__(self, r: redis.Redis, keys: Keys, settings: Settings) -> None:
        self.r = r
        self.keys = keys
        self.settings = settings
        self._record = r.register_script(_RECORD)

    def agent_config(self, agent: str) -> dict[str, Any]:
        return dict(self.settings.agents.get(agent, {}))

    def state(self, agent: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(self.keys.rollout(agent)).items()}

    def percent(self, agent: str, state: dict[str, str] | None = None) -> float:
        """The canary's current share: 0 after a rollback, else the operator's or the config's."""
        state = self.state(agent) if state is None else state
        if state.get("state") == PROMOTED:
            return 100.0  # every new run gets the promoted canary
        if state.get("state") == ROLLED_BACK:
            return 0.0
        if "percent" in state:
            return float(state["percent"])
        return float(self.agent_config(agent).get("canary_percent", self.settings.rollout.canary_percent))

    def choose(self, agent: str, run_id: str) -> str | None:
        """The version a new run of `agent` gets (None: the agent has no versions)."""
        if not has_versions(self.agent_config(agent)):
            return None
        state = self.state(agent)
        if state.get("state") == PROMOTED:
            return CANARY  # the canary is the new stable until the config says otherwise
        return CANARY if bucket_of(run_id) < self.percent(agent, state) else STABLE

    def record_end(self, agent: str, version: str, stop_reason: str, now_s: float) -> bool:
        """Count an ended run; True when this end rolled the canary back."""
        outcome = "error" if stop_reason == "error" else ("ok" if stop_reason == "finish" else "stopped")
        rollout = self.settings.rollout
        rolled = self._record(
            keys=[
                self.keys.rollout_window(agent, version),
                self.keys.rollout(agent),
                self.keys.stats_versions(),
            ],
            args=[
                lua.named(
                    outcome=outcome,
                    version=version,
                    window_s=rollout.window_s,
                    min_runs=rollout.min_runs,
                    max_error_rate=repr(rollout.rollback_on_error_rate),
                    now_s=int(now_s),
                    agent=agent,
                )
            ],
        )
        return bool(rolled)

    def window(self, agent: str, version: str, now_s: float) -> Window:
        oldest = int(now_s // BUCKET_S) - int(self.settings.rollout.window_s // BUCKET_S) + 1
        counts = {"ended": 0, "error": 0, "stopped": 0}
        for field, value in self.r.hgetall(self.keys.rollout_window(agent, version)).items():
            bucket, _, kind = str(field).partition(":")
            if int(bucket) >= oldest and kind in counts:
                counts[kind] += int(value)
        return Window(counts["ended"], counts["error"], counts["stopped"])

    def set_percent(self, agent: str, percent: float) -> None:
        """Give the canary this share; a canary turned on again starts with an empty window."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.rollout(agent), mapping={"state": ACTIVE, "percent": percent})
        pipe.delete(self.keys.rollout_window(agent, CANARY))
        pipe.execute()

    def rollback(self, agent: str, reason: str, now_s: float) -> None:
        self.r.hset(
            self.keys.rollout(agent),
            mapping={"state": ROLLED_BACK, "percent": 0, "reason": reason, "changed_at": int(now_s)},
        )

    def promote(self, agent: str, now_s: float) -> None:
        self.r.hset(
            self.keys.rollout(agent),
            mapping={
                "state": PROMOTED,
                "percent": 0,
                "reason": "promoted by operator",
                "changed_at": int(now_s),
            },
        )

    def agents_with_versions(self) -> list[str]:
        return sorted(name for name, cfg in self.settings.agents.items() if has_versions(dict(cfg)))
