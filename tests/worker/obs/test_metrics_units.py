"""The latency histograms and spend counters (worker/obs/histograms.py) on fakeredis with Lua: where
each observation lands, that the Lua and Python rules agree, that the scripts which already run at
those moments record them (and nothing when histograms are off), and what the collector renders."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import FleetCollector
from tests.harness import RedisServer
from worker.agents import load_plugins
from worker.control.policy import Policy, PolicyStore
from worker.gateway.breaker import BreakerPolicy
from worker.gateway.reply import Replier, Reply
from worker.keys import Keys
from worker.obs import histograms
from worker.run.spend import SpendBudget
from worker.run.store import Budgets, RunStore
from worker.settings import MetricsSection, Settings

KEYS = Keys("fleet")
load_plugins([])  # the built-in agents, registered as the API registers them at start
BUDGETS = Budgets(max_steps=5, max_tool_calls=2, max_seconds=30)


def scrape(r: redis.Redis, **kwargs: Any) -> dict[str, Any]:
    """The collector's families by name, parsed back from the text Prometheus reads (a real Redis:
    the collector reads INFO, which fakeredis does not answer)."""
    registry = CollectorRegistry()
    registry.register(FleetCollector(r, KEYS, **kwargs))
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Any, suffix: str = "") -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == family.name + suffix
    }


@pytest.mark.parametrize(
    ("value_s", "le"),
    [(0.0, "0.005"), (0.005, "0.005"), (0.0051, "0.01"), (1.0, "1.0"), (1.01, "2.5"), (600.0, "600.0"),
     (600.5, "+Inf"), (86400.0, "+Inf")],
)  # fmt: skip
def test_an_observation_counts_in_the_smallest_bucket_at_or_above_it(value_s: float, le: str) -> None:
    assert histograms.bucket_of(value_s) == le


def test_the_buckets_span_5_ms_to_10_minutes_in_order() -> None:
    assert histograms.BUCKETS_S[0] == 0.005 and histograms.BUCKETS_S[-1] == 600.0
    assert list(histograms.BUCKETS_S) == sorted(set(histograms.BUCKETS_S))
    assert histograms.LES[-1] == "+Inf" and len(histograms.LES) == len(histograms.BUCKETS_S) + 1


def test_the_lua_and_python_rules_put_every_value_in_the_same_bucket(r: fakeredis.FakeRedis) -> None:
    script = r.register_script(histograms.LUA_OBSERVE + "observe(KEYS[1], ARGV[1], tonumber(ARGV[2]))")
    values = [0.0, 0.003, 0.005, 0.0050001, 0.07, 0.25, 0.2500001, 0.9, 4.2, 59.9, 60.0, 61.0, 600.0, 601.0]
    for value in values:
        script(keys=["lua"], args=["a|b", repr(value)])
        pipe = r.pipeline()
        histograms.observe_in(pipe, "py", "a|b", value)
        pipe.execute()
    lua, py = r.hgetall("lua"), r.hgetall("py")
    assert {k: v for k, v in lua.items() if not k.endswith("|sum")} == {
        k: v for k, v in py.items() if not k.endswith("|sum")
    }
    assert float(lua["a|b|sum"]) == pytest.approx(sum(values)) == pytest.approx(float(py["a|b|sum"]))
    assert sum(int(v) for k, v in lua.items() if not k.endswith("|sum")) == len(values)


def test_a_run_records_its_queue_wait_and_its_duration_in_the_scripts_it_runs(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    store.create("r1", tenant="t1", agent="scripted", input={}, budgets=BUDGETS, metadata={})
    created = float(r.hget(KEYS.run("r1"), "created_ts") or 0)
    time.sleep(0.02)
    store.start("r1", "host:1:a")
    store.start("r1", "host:1:a")  # the same attempt again: the run is no longer queued, no wait
    started = float(r.hget(KEYS.run("r1"), "started_ts") or 0)
    assert store.finish("r1", "succeeded", "finish")
    finished = float(r.hget(KEYS.run("r1"), "finished_ts") or 0)
    assert not store.finish("r1", "failed", "error")  # ended already: observed once

    wait = r.hgetall(KEYS.histogram(histograms.QUEUE_WAIT))
    assert wait == {
        f"agents|{histograms.bucket_of(started - created)}": "1",
        "agents|sum": wait["agents|sum"],
    }
    assert float(wait["agents|sum"]) == pytest.approx(started - created, abs=1e-5)
    run = r.hgetall(KEYS.histogram(histograms.RUN))
    assert run[f"scripted|succeeded|{histograms.bucket_of(finished - started)}"] == "1"
    assert float(run["scripted|succeeded|sum"]) == pytest.approx(finished - started, abs=1e-5)
    assert len(run) == 2


def test_a_run_cancelled_while_queued_has_no_duration(r: fakeredis.FakeRedis, store: RunStore) -> None:
    store.create("r1", tenant="t1", agent="scripted", input={}, budgets=BUDGETS, metadata={})
    assert store.cancel("r1") == "queued"
    assert not r.exists(KEYS.histogram(histograms.RUN), KEYS.histogram(histograms.QUEUE_WAIT))


def test_a_checkpoint_records_the_step_in_its_own_transaction(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    store.create("r1", tenant="t1", agent="scripted", input={}, budgets=BUDGETS, metadata={})
    entry = {"step": 1, "action": "tool", "tool": "echo", "duration_ms": 42.5}
    store.checkpoint("r1", cursor=1, memory={}, last_result=None, step_entry=entry, agent="scripted")
    assert r.hgetall(KEYS.histogram(histograms.STEP)) == {
        "scripted|tool|0.05": "1",
        "scripted|tool|sum": "0.0425",
    }


def test_with_histograms_off_nothing_is_recorded(r: fakeredis.FakeRedis) -> None:
    store = RunStore(r, KEYS, histograms=False)
    store.create("r1", tenant="t1", agent="scripted", input={}, budgets=BUDGETS, metadata={})
    store.start("r1", "host:1:a")
    entry = {"step": 1, "action": "tool", "duration_ms": 3.0}
    store.checkpoint("r1", cursor=1, memory={}, last_result=None, step_entry=entry, agent="scripted")
    assert store.finish("r1", "succeeded", "finish")
    assert r.hget(KEYS.run("r1"), "status") == "succeeded"
    assert not r.keys(KEYS.histogram("*"))
    assert Settings().metrics == MetricsSection(histograms=True, cost_by_tenant=False)  # on by default


def test_the_metrics_settings_come_from_the_environment_beside_the_metrics_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEET_METRICS__HISTOGRAMS", "false")
    monkeypatch.setenv("FLEET_METRICS__COST_BY_TENANT", "true")
    monkeypatch.setenv("FLEET_METRICS_TOKEN", "a-real-metrics-token")
    settings = Settings()
    assert settings.metrics == MetricsSection(histograms=False, cost_by_tenant=True)
    assert settings.metrics_token is not None


def reply_args(**extra: Any) -> dict[str, Any]:
    return {
        "reply_key": "reply:0",
        "call_key": KEYS.call("r1:1:0"),
        "breaker_key": KEYS.breaker("echo"),
        "stats_key": KEYS.stats_tools(),
        "run_key": KEYS.run("r1"),
        "timers_key": KEYS.timers(),
        "bell_key": KEYS.timers_bell(),
        "run_id": "r1",
        "envelope": json.dumps({"ok": True, "result": 1}),
        "reply_ttl_s": 60,
        "attempt": 0,
        "settle": False,
        "ok": True,
        "breaker": BreakerPolicy(),
        "final": True,
        "call_ttl_s": 60,
        "stats_field": "calls|echo|ok",
        **extra,
    }


def test_the_tool_workers_reply_records_the_attempts_duration(r: fakeredis.FakeRedis) -> None:
    reply = Replier(r)
    key = KEYS.histogram(histograms.TOOL_CALL)
    reply.send(Reply(**reply_args(duration=(key, "echo|ok", 0.012))))
    reply.send(Reply(**reply_args(duration=(key, "echo|timeout", 3.0))))
    reply.send(Reply(**reply_args()))  # an attempt that did not run the tool: no duration
    assert r.llen("reply:0") == 3
    assert r.hgetall(key) == {
        "echo|ok|0.025": "1",
        "echo|ok|sum": "0.012",
        "echo|timeout|5.0": "1",
        "echo|timeout|sum": "3",
    }


def test_a_settled_model_attempt_counts_its_tokens_and_cost_once(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    store.create("r1", tenant="t1", agent="llm", input={}, budgets=BUDGETS, metadata={})
    spend = SpendBudget(r, KEYS, "r1", ttl_s=60)
    assert spend.reserve("c1", 0, 100, 5_000, max_tokens=10_000, max_cost_usd=1.0) is None
    assert spend.settle("c1", 0, 30, 2_500, ("gpt-x", 20, 10))
    assert not spend.settle("c1", 0, 30, 2_500, ("gpt-x", 20, 10))  # once per attempt
    assert spend.charge_tool("c2", 1_000, 1.0) is None
    assert spend.charge_tool("c2", 1_000, 1.0) is None  # charged once per call
    assert r.hgetall(KEYS.stats_spend()) == {
        "tokens|gpt-x|input": "20",
        "tokens|gpt-x|output": "10",
        "cost|llm": "3500",
    }


def test_cost_by_tenant_adds_the_tenant_to_the_cost_counter(r: fakeredis.FakeRedis, store: RunStore) -> None:
    store.create("r1", tenant="t1", agent="llm", input={}, budgets=BUDGETS, metadata={})
    spend = SpendBudget(r, KEYS, "r1", ttl_s=60, cost_by_tenant=True)
    spend.reserve("c1", 0, 100, 5_000, max_tokens=10_000, max_cost_usd=1.0)
    spend.settle("c1", 0, 30, 2_500, ("gpt-x", 20, 10))
    assert r.hget(KEYS.stats_spend(), "cost|llm|t1") == "2500"
    assert r.hget(KEYS.stats_spend(), "cost|llm") is None


def test_the_collector_renders_cumulative_histograms_and_bounds_unknown_names(
    redis_server: RedisServer,
) -> None:
    r = redis_server.client()
    pipe = r.pipeline()
    run_key = KEYS.histogram(histograms.RUN)
    for value in (0.3, 0.3, 2.0, 700.0):
        histograms.observe_in(pipe, run_key, "scripted|succeeded", value)
    histograms.observe_in(pipe, run_key, "retired-agent|failed", 1.0)  # no longer registered
    histograms.observe_in(pipe, run_key, "gone-too|failed", 1.0)
    histograms.observe_in(pipe, KEYS.histogram(histograms.MODEL_CALL), "unknown-model|ok", 1.0)
    pipe.hset(KEYS.stats_spend(), mapping={"tokens|m1|input": 7, "cost|scripted": 1_500_000, "cost|x|t1": 1})
    pipe.execute()

    families = scrape(r, models=["m1"])
    run = families["fleet_run_duration_seconds"]
    assert run.type == "histogram"
    buckets = {
        s.labels["le"]: s.value
        for s in run.samples
        if s.name.endswith("_bucket") and s.labels["agent"] == "scripted"
    }
    assert [buckets[le] for le in ("0.25", "0.5", "1.0", "2.5", "600.0", "+Inf")] == [0, 2, 2, 3, 3, 4]
    assert samples(run, "_count")[(("agent", "scripted"), ("status", "succeeded"))] == 4
    assert samples(run, "_sum")[(("agent", "scripted"), ("status", "succeeded"))] == pytest.approx(702.6)
    # two unknown agents are one "other" series
    assert samples(run, "_count")[(("agent", "other"), ("status", "failed"))] == 2
    model = families["fleet_model_call_duration_seconds"]
    assert {s.labels["model"] for s in model.samples} == {"other"}
    assert samples(families["fleet_model_tokens"], "_total") == {(("kind", "input"), ("model", "m1")): 7}
    cost = samples(families["fleet_cost_usd"], "_total")
    assert cost[(("agent", "scripted"), ("tenant", ""))] == 1.5
    assert cost[(("agent", "other"), ("tenant", "t1"))] == 1e-6
    for name in (
        "fleet_queue_wait_seconds",
        "fleet_step_duration_seconds",
        "fleet_tool_call_duration_seconds",
    ):
        assert families[name].type == "histogram"  # present before anything was observed


def test_an_agents_spend_today_is_shown_beside_its_daily_quota(redis_server: RedisServer) -> None:
    r = redis_server.client()
    PolicyStore(r, KEYS).set("scripted", Policy(max_spend_usd_per_day=5.0))
    day = time.strftime("%Y%m%d", time.gmtime())
    r.set(KEYS.quota_spend("scripted", day), 4_600_000)
    r.set(KEYS.quota_spend("llm", day), 1)  # no quota: not shown
    families = scrape(r, max_seconds=60.0)
    assert samples(families["fleet_agent_spend_today_usd"]) == {(("agent", "scripted"),): 4.6}
    assert samples(families["fleet_agent_spend_limit_usd"]) == {(("agent", "scripted"),): 5.0}
    assert samples(families["fleet_run_max_seconds"]) == {(): 60.0}
