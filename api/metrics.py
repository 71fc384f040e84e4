"""Prometheus metrics computed fleet-wide from Redis at scrape time, so they survive any
worker's restart and are the same whichever API replica answers.

A scrape never SCANs the keyspace (the Redis is also the broker): breakers and kill switches are
read by name, in one pipeline, for every name the fleet knows (its tools, models, agents and
tenants). A switch on a name the fleet does not know (a typo, another deployment's tenant) covers
nothing and is not shown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from worker import tools
from worker.agents import agent_names
from worker.control.policy import Policy
from worker.history.queue import ArchiveQueue
from worker.keys import AGENT_QUEUE, ARCHIVE_QUEUE, TOOL_QUEUE, WEBHOOK_QUEUE, Keys, tool_queue
from worker.obs import histograms
from worker.obs.heartbeat import live_workers
from worker.obs.histograms import known_models as known_models  # the API builds the collector with them
from worker.tools import MODEL_TOOL
from worker.units import MICRO
from worker.webhooks.outbox import Outbox


def queue_names() -> list[str]:
    return [
        AGENT_QUEUE,
        TOOL_QUEUE,
        *(tool_queue(name) for name in tools.tool_names()),
        WEBHOOK_QUEUE,
        ARCHIVE_QUEUE,
    ]


def switch_scopes(tools: Iterable[str], models: Iterable[str], agents: Iterable[str],
                  tenants: Iterable[str]) -> list[str]:  # fmt: skip
    """The kill-switch scopes (`all`, `tool:echo`, ...) of every name the fleet knows."""
    return [
        "all",
        "writes",
        *(f"tool:{t}" for t in tools),
        *(f"tool:{MODEL_TOOL}:{m}" for m in models),
        *(f"agent:{a}" for a in agents),
        *(f"tenant:{t}" for t in tenants),
    ]


def oldest_age_s(r: redis.Redis, queue: str, now: float) -> float:
    """Age of the oldest message waiting in `queue` (kombu pushes left, pops right)."""
    raw = r.lindex(queue, -1)
    if raw is None:
        return 0.0
    try:
        sent_at = float(json.loads(raw)["headers"]["sent_at"])
    except (ValueError, KeyError, TypeError):
        return 0.0
    return max(0.0, now - sent_at)


def _daily_spend_limit(raw: str | None) -> float | None:
    """An agent's `max_spend_usd_per_day` from its stored policy (worker/control/policy.py), or None."""
    if not raw:
        return None
    try:
        return Policy.model_validate_json(raw, strict=True).max_spend_usd_per_day
    except ValueError:
        return None


class FleetCollector(Collector):
    """Reads the fleet's queues, counters, breakers, switches and heartbeats from Redis."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        tenants: Iterable[str] = (),
        models: Iterable[str] = (),
        max_seconds: float | None = None,
    ) -> None:
        self.r = r
        self.max_seconds = max_seconds  # the fleet's cap of a run's max_seconds (AGENT_MAX_SECONDS)
        self.keys = keys
        self.tenants = sorted(set(tenants))
        self.models = sorted(set(models))
        self.outbox = Outbox(r, keys)
        self.archive = ArchiveQueue(r, keys)

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        yield from self._queues(now)
        yield from self._ended_runs()
        yield from self._runs_in_flight()
        yield from self._tool_calls()
        yield from self._breakers_switches_and_tenant_queues()
        yield from self._versions()
        yield from self._histograms()
        yield from self._spend(now)
        yield from self._webhooks(now)
        yield from self._archive(now)
        yield from self._redis_memory()
        yield from self._workers()

    def _queues(self, now: float) -> Iterator[Metric]:
        """Each queue's depth and the age of its oldest message: the autoscaling signals."""
        depth = GaugeMetricFamily("fleet_queue_depth", "Messages waiting in a queue", labels=["queue"])
        age = GaugeMetricFamily(
            "fleet_queue_oldest_age_seconds",
            "Age of the oldest waiting message (autoscaling signal)",
            labels=["queue"],
        )
        for queue in queue_names():
            depth.add_metric([queue], self.r.llen(queue))
            age.add_metric([queue], oldest_age_s(self.r, queue, now))
        yield depth
        yield age

    def _ended_runs(self) -> Iterator[Metric]:
        """Ended runs by status and stop reason, and the budget they spent (`runs|<status>|<reason>`
        and `usage|<budget>` in the runs' stats hash)."""
        runs = CounterMetricFamily("fleet_runs", "Ended runs", labels=["status", "stop_reason"])
        usage = CounterMetricFamily("fleet_budget_usage", "Budget spent by ended runs", labels=["budget"])
        for field, value in self.r.hgetall(self.keys.stats_runs()).items():
            kind, _, rest = str(field).partition("|")
            if kind == "runs":
                status, _, reason = rest.partition("|")
                runs.add_metric([status, reason], float(value))
            elif kind == "usage":
                usage.add_metric([rest], float(value))
        yield runs
        yield usage

    def _runs_in_flight(self) -> Iterator[Metric]:
        """Runs started and not ended: executing (holding a lease) and waiting (parked on a timer),
        with the fleet's cap of a run's max_seconds when it is known."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(self.keys.leases())
        pipe.zcard(self.keys.timers())
        executing_n, waiting_n = pipe.execute()
        running = GaugeMetricFamily(
            "fleet_runs_running", "Runs started and not ended: executing plus waiting"
        )
        running.add_metric([], executing_n + waiting_n)
        yield running
        if self.max_seconds is not None:
            cap = GaugeMetricFamily(
                "fleet_run_max_seconds", "The fleet's cap of a run's max_seconds (AGENT_MAX_SECONDS)"
            )
            cap.add_metric([], self.max_seconds)
            yield cap
        executing = GaugeMetricFamily(
            "fleet_runs_executing", "Runs executing now in an agent worker (holding a lease)"
        )
        executing.add_metric([], executing_n)
        yield executing
        waiting = GaugeMetricFamily(
            "fleet_runs_waiting", "Runs parked in Redis, waiting for a reply or a timer (no process)"
        )
        waiting.add_metric([], waiting_n)
        yield waiting

    def _tool_calls(self) -> Iterator[Metric]:
        """Tool calls by outcome, and those that waited for a rate-limit slot (the tools' stats hash)."""
        calls = CounterMetricFamily("fleet_tool_calls", "Tool calls by outcome", labels=["tool", "outcome"])
        waits = CounterMetricFamily(
            "fleet_rate_limit_waits", "Tool calls that waited for a slot", labels=["tool"]
        )
        for field, value in self.r.hgetall(self.keys.stats_tools()).items():
            parts = str(field).split("|")
            if parts[0] == "calls" and len(parts) == 3:
                calls.add_metric(parts[1:], float(value))
            elif parts[0] == "rate_limit_waits" and len(parts) == 2:
                waits.add_metric(parts[1:], float(value))
        yield calls
        yield waits

    def _breakers_switches_and_tenant_queues(self) -> Iterator[Metric]:
        """Breakers, kill switches and each tenant's queued runs, read by name for every name the
        fleet knows, in one pipeline (no SCAN)."""
        tool_names = tools.tool_names()
        scopes = switch_scopes(tool_names, self.models, agent_names(), self.tenants)
        # a model call's breaker is per model (`llm:<model>`), a tool's per tool
        breaker_names = [*tool_names, *(f"{MODEL_TOOL}:{m}" for m in self.models)]
        pipe = self.r.pipeline(transaction=False)
        for tool in breaker_names:
            pipe.hget(self.keys.breaker(tool), "state")
        pipe.mget([self.keys.kill_switch(scope) for scope in scopes])
        for tenant in self.tenants:
            pipe.zlexcount(self.keys.queued_runs(), f"[{tenant}|", f"({tenant}}}")
        found: list[Any] = pipe.execute()

        breakers = GaugeMetricFamily(
            "fleet_breaker_open", "1 when a tool's circuit is open or half-open", labels=["tool", "state"]
        )
        for tool, state in zip(breaker_names, found[: len(breaker_names)], strict=True):
            if state is not None:  # no key: the breaker never saw a failure
                breakers.add_metric([tool, str(state)], 0.0 if state == "closed" else 1.0)
        yield breakers

        switches = GaugeMetricFamily("fleet_kill_switch_on", "Kill switches that are on", labels=["switch"])
        for scope, reason in zip(scopes, found[len(breaker_names)], strict=True):
            if reason is not None:
                switches.add_metric([scope], 1.0)
        yield switches

        queued = GaugeMetricFamily(
            "fleet_tenant_runs_queued", "Runs in status queued, per tenant", labels=["tenant"]
        )
        for tenant, count in zip(self.tenants, found[len(breaker_names) + 1 :], strict=True):
            queued.add_metric([tenant], float(count))
        yield queued

    def _versions(self) -> Iterator[Metric]:
        """Ended runs per agent version, and automatic canary rollbacks (worker/control/rollout.py)."""
        versions = CounterMetricFamily(
            "fleet_version_runs", "Ended runs per agent version (outcome: ok, error, stopped)",
            labels=["agent", "version", "outcome"],
        )  # fmt: skip
        rollbacks = CounterMetricFamily(
            "fleet_canary_rollbacks", "Automatic canary rollbacks", labels=["agent"]
        )
        for field, value in self.r.hgetall(self.keys.stats_versions()).items():
            parts = str(field).split("|")
            if parts[0] == "runs" and len(parts) == 4:
                versions.add_metric(parts[1:], float(value))
            elif parts[0] == "rollbacks" and len(parts) == 2:
                rollbacks.add_metric(parts[1:], float(value))
        yield versions
        yield rollbacks

    def _histograms(self) -> Iterator[Metric]:
        """The latency histograms (worker/obs/histograms.py), one HGETALL each in one pipeline. A label
        value the fleet does not know (an agent no longer registered, a model no longer in the
        config) is rendered as "other", so a scrape's series stay bounded by the fleet's names."""
        known: dict[str, list[str]] = {
            "agent": agent_names(),
            "tool": tools.tool_names(),
            "model": self.models,
        }
        pipe = self.r.pipeline(transaction=False)
        for name in histograms.FAMILIES:
            pipe.hgetall(self.keys.histogram(name))
        for raw, (name, help_text, labels) in zip(pipe.execute(), histograms.FAMILIES.values(), strict=True):
            merged: dict[tuple[str, ...], histograms.Series] = {}
            for values, one in histograms.parse(raw, len(labels)).items():
                shown = tuple(
                    histograms.label_or_other(v, known[n]) if n in known else v
                    for n, v in zip(labels, values, strict=True)
                )
                merged.setdefault(shown, histograms.Series()).add(one)
            found = HistogramMetricFamily(name, help_text, labels=list(labels))
            for shown, one in sorted(merged.items()):
                found.add_metric(list(shown), one.cumulative(), one.sum_s)
            yield found

    def _spend(self, now: float) -> Iterator[Metric]:
        """Model tokens and cost counted where they are charged (worker/run/spend.py), and each
        agent's spend today against its daily quota (policy `max_spend_usd_per_day`)."""
        names = agent_names()
        day = time.strftime("%Y%m%d", time.gmtime(now))
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.stats_spend())
        pipe.mget([self.keys.quota_spend(agent, day) for agent in names] or [self.keys.stats_spend()])
        for agent in names:
            pipe.get(self.keys.policy(agent))
        stats, spent, *policies = pipe.execute()
        tokens = CounterMetricFamily(
            "fleet_model_tokens", "Model tokens the models reported, by kind (input, output)",
            labels=["model", "kind"],
        )  # fmt: skip
        token_counts: dict[tuple[str, str], float] = {}
        # `cost|<agent>`, or `cost|<agent>|<tenant>` while settings.metrics.cost_by_tenant is on:
        # each charge counts in one of them, so their sum is the fleet's spend either way
        costs: dict[tuple[str, str], float] = {}
        for field, value in stats.items():
            parts = str(field).split("|")
            if parts[0] == "tokens" and len(parts) == 3:
                model = (histograms.label_or_other(parts[1], self.models), parts[2])
                token_counts[model] = token_counts.get(model, 0.0) + float(value)
            elif parts[0] == "cost" and len(parts) in (2, 3):
                who = (histograms.label_or_other(parts[1], names), parts[2] if len(parts) == 3 else "")
                costs[who] = costs.get(who, 0.0) + int(value) / MICRO
        for (model_name, kind), count in sorted(token_counts.items()):
            tokens.add_metric([model_name, kind], count)
        yield tokens
        cost = CounterMetricFamily(
            "fleet_cost_usd",
            "Model and tool spend charged to runs, in USD (tenant: with metrics.cost_by_tenant)",
            labels=["agent", "tenant"],
        )
        for (agent, tenant), usd in sorted(costs.items()):
            cost.add_metric([agent, tenant], usd)
        yield cost

        today = GaugeMetricFamily(
            "fleet_agent_spend_today_usd",
            "An agent's spend today (UTC) under its daily quota",
            labels=["agent"],
        )
        limit = GaugeMetricFamily(
            "fleet_agent_spend_limit_usd",
            "An agent's daily spend quota (max_spend_usd_per_day)",
            labels=["agent"],
        )
        for agent, used, raw in zip(names, spent, policies, strict=False):
            max_usd = _daily_spend_limit(raw)
            if max_usd is None:
                continue
            today.add_metric([agent], int(used or 0) / MICRO)
            limit.add_metric([agent], max_usd)
        yield today
        yield limit

    def _webhooks(self, now: float) -> Iterator[Metric]:
        """Webhook deliveries by outcome, and the pending ones (worker/webhooks/outbox.py)."""
        deliveries = CounterMetricFamily(
            "fleet_webhook_deliveries",
            "Webhook delivery attempts by outcome (failed: an attempt to be retried)",
            labels=["outcome"],
        )
        for outcome, count in self.outbox.counts().items():
            deliveries.add_metric([outcome], float(count))
        yield deliveries
        pending, oldest_age_s = self.outbox.backlog(now)
        undelivered = GaugeMetricFamily("fleet_webhook_undelivered", "Webhook deliveries not yet made")
        undelivered.add_metric([], pending)
        yield undelivered
        oldest = GaugeMetricFamily(
            "fleet_webhook_oldest_undelivered_seconds",
            "Age of the oldest undelivered webhook event (0: none)",
        )
        oldest.add_metric([], oldest_age_s)
        yield oldest

    def _archive(self, now: float) -> Iterator[Metric]:
        """Ended runs archived to the run history, and those still waiting (worker/history/queue.py)."""
        pending_n, lag_s = self.archive.backlog(now)
        pending = GaugeMetricFamily("fleet_archive_pending", "Ended runs not yet archived to the run history")
        pending.add_metric([], pending_n)
        yield pending
        lag = GaugeMetricFamily(
            "fleet_archive_lag_seconds", "Age of the oldest ended run not yet archived (0: none)"
        )
        lag.add_metric([], lag_s)
        yield lag
        counts = self.archive.counts()
        archived = CounterMetricFamily("fleet_runs_archived", "Runs written to the run history")
        archived.add_metric([], float(counts["archived"]))
        yield archived
        failed = CounterMetricFamily(
            "fleet_archive_failed_batches", "Archive batches the database refused (each retried)"
        )
        failed.add_metric([], float(counts["failed"]))
        yield failed

    def _redis_memory(self) -> Iterator[Metric]:
        """Redis memory in use and its cap (`maxmemory`; 0: no cap), from INFO memory."""
        info = self.r.info("memory")
        used = GaugeMetricFamily("fleet_redis_memory_used_bytes", "Memory Redis uses (used_memory)")
        used.add_metric([], float(info.get("used_memory", 0)))
        yield used
        cap = GaugeMetricFamily("fleet_redis_maxmemory_bytes", "Redis maxmemory (0: no cap)")
        cap.add_metric([], float(info.get("maxmemory", 0)))
        yield cap

    def _workers(self) -> Iterator[Metric]:
        """Agent and tool workers with a fresh heartbeat (worker/obs/heartbeat.py)."""
        workers = GaugeMetricFamily("fleet_workers_alive", "Workers with a fresh heartbeat", labels=["kind"])
        for kind, count in live_workers(self.r, self.keys).items():
            workers.add_metric([kind], count)
        yield workers
