"""Latency histograms and spend counters, counted in Redis where the event happens.

Each histogram family is one Redis hash (Keys.histogram): a field `<labels>|<le>` per bucket an
observation fell in (not cumulative: one HINCRBY per observation) and `<labels>|sum`, where
`<labels>` is the label values joined by `|`. The increments run inside the Lua scripts and
pipelines that already run at those moments (a run's start and end, a step's checkpoint, the tool
worker's reply, a model attempt's settle), so recording costs no extra round trip. The API's
collector (api/metrics.py) renders them as Prometheus histograms (`_bucket`, `_sum`, `_count`),
the same from every replica, whatever the number of worker processes and hosts.

`observe` (Lua, for the scripts) and `observe_in` (Python, for the pipelines) are the one rule,
side by side: the bucket is the smallest bound >= the value, else `+Inf`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from worker import lua
from worker.settings import Settings

# Bucket bounds in seconds, from a cached tool answer (5 ms) to a long agent run (10 min): a
# run's max_seconds is 60 by default, a model call takes 0.5-30 s, a tool call 10 ms-8 s.
BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
INF = "+Inf"
LES: tuple[str, ...] = (*(repr(b) for b in BUCKETS_S), INF)  # as Prometheus writes them: 1.0, 0.005
OTHER = "other"  # the label value of a name the fleet does not know (bounded cardinality)

# family (the Redis hash's name) -> (metric name, help, label names)
RUN = "run_duration"
QUEUE_WAIT = "queue_wait"
STEP = "step_duration"
TOOL_CALL = "tool_call_duration"
MODEL_CALL = "model_call_duration"
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    RUN: ("fleet_run_duration_seconds", "Ended runs: first start to end", ("agent", "status")),
    QUEUE_WAIT: ("fleet_queue_wait_seconds", "Runs: created to first started", ("queue",)),
    STEP: ("fleet_step_duration_seconds", "Steps: the agent's choice and its action", ("agent", "action")),
    TOOL_CALL: (
        "fleet_tool_call_duration_seconds",
        "Tool call attempts a tool worker ran, as it measured them",
        ("tool", "outcome"),
    ),
    MODEL_CALL: (
        "fleet_model_call_duration_seconds",
        "Model call attempts a tool worker ran, as it measured them",
        ("model", "outcome"),
    ),
}

# observe(key, series, value) in Lua, for the scripts; its bucket bounds are BUCKETS_S and LES
# (tests/worker/test_lua_files.py holds them equal).
LUA_OBSERVE = lua.load("worker/obs/observe.lua")


def bucket_of(value_s: float) -> str:
    """The `le` of the bucket an observation of `value_s` seconds counts in."""
    for bound, le in zip(BUCKETS_S, LES, strict=False):
        if value_s <= bound:
            return le
    return INF


def series(*labels: str) -> str:
    """A series' label values as a hash field's prefix; '|' in a value would split it, so it is replaced."""
    return "|".join(label.replace("|", "_") for label in labels)


def observe_in(pipe: redis.client.Pipeline, key: str, labels: str, value_s: float) -> None:
    """Queue one observation on a pipeline that runs anyway (two commands, no round trip)."""
    value_s = max(0.0, value_s)
    pipe.hincrby(key, f"{labels}|{bucket_of(value_s)}", 1)
    pipe.hincrbyfloat(key, f"{labels}|sum", round(value_s, 6))


def known_models(settings: Settings) -> list[str]:
    """Every model named in the agents' config (and their versions), and the llm agent's default."""
    from worker.agents.llmconfig import LlmConfig  # it imports the run store, which records histograms

    found = {str(LlmConfig.model_fields["model"].default)}
    for config in settings.agents.values():
        variants = [config, *dict(config.get("versions") or {}).values()] if isinstance(config, dict) else []
        found.update(str(v["model"]) for v in variants if isinstance(v, dict) and v.get("model"))
    return sorted(found)


def label_or_other(name: str, known: Iterable[str]) -> str:
    """`name` if the fleet knows it (its config or registry), else "other"."""
    return name if name in known else OTHER


@dataclass
class Series:
    """One label set's buckets (not cumulative, by `le`) and sum."""

    counts: dict[str, float] = field(default_factory=dict)
    sum_s: float = 0.0

    def add(self, other: Series) -> None:
        for le, n in other.counts.items():
            self.counts[le] = self.counts.get(le, 0.0) + n
        self.sum_s += other.sum_s

    def cumulative(self) -> list[tuple[str, float]]:
        """The buckets as Prometheus wants them: cumulative, every `le`, `+Inf` last (= count)."""
        total, out = 0.0, []
        for le in LES:
            total += self.counts.get(le, 0.0)
            out.append((le, total))
        return out


def parse(raw: dict[Any, Any], n_labels: int) -> dict[tuple[str, ...], Series]:
    """A histogram hash's fields as series by label values; fields of another shape are skipped."""
    found: dict[tuple[str, ...], Series] = {}
    for name, value in raw.items():
        parts = str(name).split("|")
        if len(parts) != n_labels + 1:
            continue
        labels, last = tuple(parts[:-1]), parts[-1]
        one = found.setdefault(labels, Series())
        try:
            if last == "sum":
                one.sum_s += float(value)
            elif last in LES:
                one.counts[last] = one.counts.get(last, 0.0) + float(value)
        except ValueError:
            continue
    return found
