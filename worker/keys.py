"""Every Redis key the fleet writes, built in one place with the prefix from settings."""

from __future__ import annotations

from dataclasses import dataclass

AGENT_QUEUE = "agents"
TOOL_QUEUE = "tools"
WEBHOOK_QUEUE = "webhooks"  # webhook deliveries, served by tool workers
ARCHIVE_QUEUE = "archive"  # batches of ended runs to write to the run history, served by tool workers


def tool_queue(tool: str) -> str:
    """Each tool has its own queue, so a slow tool's backlog never delays another tool's calls."""
    return f"{TOOL_QUEUE}.{tool}"


@dataclass(frozen=True)
class Keys:
    """Key builder for one prefix (``FLEET_KEY_PREFIX``, default ``fleet``)."""

    prefix: str = "fleet"

    # kill switches -------------------------------------------------------------------------------
    def kill_all(self) -> str:
        return f"{self.prefix}:kill:all"

    def kill_tenant(self, tenant: str) -> str:
        return f"{self.prefix}:kill:tenant:{tenant}"

    def kill_agent(self, agent: str) -> str:
        return f"{self.prefix}:kill:agent:{agent}"

    def kill_tool(self, tool: str) -> str:
        return f"{self.prefix}:kill:tool:{tool}"

    def kill_writes(self) -> str:
        return f"{self.prefix}:kill:writes"

    def kill_switch(self, scope: str) -> str:
        """A switch by its scope as /metrics names it (`all`, `writes`, `tool:<t>`, `agent:<a>`,
        `tenant:<t>`): the key kill_all, kill_tool, ... build for it."""
        return f"{self.prefix}:kill:{scope}"

    def kill_pattern(self) -> str:
        return f"{self.prefix}:kill:*"

    # runs ----------------------------------------------------------------------------------------
    def run(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    def run_steps(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:steps"

    def run_lease(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:lease"

    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def stats_runs(self) -> str:
        return f"{self.prefix}:stats:runs"

    def stats_tools(self) -> str:
        return f"{self.prefix}:stats:tools"

    def histogram(self, family: str) -> str:
        """A latency histogram's buckets and sums (worker/obs/histograms.py)."""
        return f"{self.prefix}:hist:{family}"

    def stats_spend(self) -> str:
        """Model tokens and cost counted fleet-wide (worker/obs/histograms.py, worker/run/spend.py)."""
        return f"{self.prefix}:stats:spend"

    def run_redelivery(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:redelivered"

    def leases(self) -> str:
        return f"{self.prefix}:leases"

    def deadlines(self) -> str:
        """Every started, unended run, scored by its deadline (unix seconds)."""
        return f"{self.prefix}:deadlines"

    def timers(self) -> str:
        """Parked runs (member: run id) scored by their wake-up time (unix s)."""
        return f"{self.prefix}:timers"

    def timers_bell(self) -> str:
        """A short list a reply pushes to, so a scheduler wakes its parked run at once."""
        return f"{self.prefix}:timers:bell"

    def parked_owners(self, kind: str) -> str:
        """Parked runs counted per tenant (`kind` tenant) or per agent (`kind` agent): the kill
        sweep reads these switches only."""
        return f"{self.prefix}:parked:{kind}"

    def run_cancel(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:cancel"

    def run_ended_channel(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:ended"

    def run_events(self, run_id: str) -> str:
        """A run's events (GET /v1/runs/{id}/events): a stream, capped and expiring with the run
        (worker/run/events.py)."""
        return f"{self.prefix}:run:{run_id}:events"

    def run_events_channel(self, run_id: str) -> str:
        """Where a write to the run's events stream is announced (a pub/sub channel, not a key)."""
        return f"{self.prefix}:run:{run_id}:events:new"

    def run_keys(self, run_id: str) -> list[str]:
        """Every key named after one run: its hash, step log, lease, cancel flag, redelivery claim
        and events (DELETE /v1/runs/{id} removes them all, worker/run/erase.py)."""
        return [
            self.run(run_id),
            self.run_steps(run_id),
            self.run_lease(run_id),
            self.run_cancel(run_id),
            self.run_redelivery(run_id),
            self.run_events(run_id),
        ]

    def run_call_patterns(self, run_id: str) -> list[str]:
        """Glob patterns of the keys of a run's tool and model calls: a call id is
        `<run id>:<step>:<n>` (worker/run/loop.py), so each call's keys start with one of these."""
        return [f"{self.prefix}:call:{run_id}:*", f"{self.prefix}:quota:call:{run_id}:*"]

    def queued_runs(self) -> str:
        """Every queued run as a member `<tenant>|<created_ts>|<run id>` of one zset (scores 0),
        so ZLEXCOUNT counts one tenant's queued runs in O(log n)."""
        return f"{self.prefix}:queued"

    def waiters(self, tenant: str) -> str:
        """A tenant's open `?wait` requests, fleet-wide, scored by when each slot expires."""
        return f"{self.prefix}:waiters:{tenant}"

    def approvals(self, tenant: str) -> str:
        """A tenant's runs waiting for an approval (member: run id), scored by when it was asked
        (worker/control/approvals.py); entries of runs no longer waiting are dropped when listed."""
        return f"{self.prefix}:approvals:{tenant}"

    def approval_decided(self, call_id: str) -> str:
        """A list that gets the decision on a call's approval: a run parked for it waits on this
        key like a tool reply, so a decision that comes while the run parks is not missed."""
        return f"{self.prefix}:call:{call_id}:decided"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:idem:{tenant}:{key}"

    # tool calls ----------------------------------------------------------------------------------
    def call(self, call_id: str) -> str:
        return f"{self.prefix}:call:{call_id}"

    def call_reply(self, call_id: str, attempt: int) -> str:
        return f"{self.prefix}:call:{call_id}:reply:{attempt}"

    # gateway state, shared by the fleet -----------------------------------------------------------
    def rate_limit(self, tool: str, tenant: str | None = None) -> str:
        if tenant is None:
            return f"{self.prefix}:ratelimit:{tool}"
        return f"{self.prefix}:ratelimit:{tool}:tenant:{tenant}"

    def tool_slots(self, tool: str) -> str:
        """A sorted set of the tool's calls in flight, fleet-wide, scored by expiry (ms)."""
        return f"{self.prefix}:toolslots:{tool}"

    def breaker(self, tool: str) -> str:
        return f"{self.prefix}:breaker:{tool}"

    def retry_budget(self, tool: str) -> str:
        return f"{self.prefix}:retrybudget:{tool}"

    def call_spend(self, call_id: str) -> str:
        """A tool call's charge of its declared cost against the run's `max_cost_usd`."""
        return f"{self.prefix}:call:{call_id}:spend"

    def attempt_spend(self, call_id: str, attempt: int) -> str:
        """One model attempt's token and cost reservation."""
        return f"{self.prefix}:call:{call_id}:spend:{attempt}"

    def call_exec(self, call_id: str) -> str:
        """The tool worker's claim on executing a call, and its result."""
        return f"{self.prefix}:call:{call_id}:exec"

    # webhooks (worker/webhooks/) -------------------------------------------------------------------
    def webhook(self, delivery_id: str) -> str:
        """One pending webhook delivery (a hash: run, tenant, url, event, data, first_ts, ...)."""
        return f"{self.prefix}:webhook:{delivery_id}"

    def webhooks_due(self) -> str:
        """Pending deliveries (member: delivery id) scored by when their next attempt is due (unix s)."""
        return f"{self.prefix}:webhooks:due"

    def webhooks_born(self) -> str:
        """Pending deliveries scored by when their event happened (unix s): the oldest's age."""
        return f"{self.prefix}:webhooks:born"

    def stats_webhooks(self) -> str:
        """Deliveries counted by outcome (`deliveries|<outcome>`), for /metrics."""
        return f"{self.prefix}:stats:webhooks"

    # the run history (worker/history/) -----------------------------------------------------------
    def archive_due(self) -> str:
        """Ended runs not yet archived (member: run id), scored by when a batch may next take
        them (unix s): their end, or a claim's or a retry's time."""
        return f"{self.prefix}:archive:due"

    def archive_ended(self) -> str:
        """The same runs scored by when they ended (unix s): the archive's lag is the oldest's age."""
        return f"{self.prefix}:archive:ended"

    def archive_failures(self) -> str:
        """Failed archive attempts per run id (a hash), for the retry's backoff."""
        return f"{self.prefix}:archive:failures"

    def stats_archive(self) -> str:
        """Archive counters (`archived`, `lost`, `failed`), for /metrics."""
        return f"{self.prefix}:stats:archive"

    def history_purge_lock(self) -> str:
        """Held (SET NX EX) by the agent worker that purges expired history this period."""
        return f"{self.prefix}:history:purge"

    # rollout ------------------------------------------------------------------------------------
    def rollout(self, agent: str) -> str:
        return f"{self.prefix}:rollout:{agent}"

    def rollout_window(self, agent: str, version: str) -> str:
        return f"{self.prefix}:rollout:{agent}:window:{version}"

    def stats_versions(self) -> str:
        return f"{self.prefix}:stats:versions"

    # governance ----------------------------------------------------------------------------------
    def policy(self, agent: str) -> str:
        return f"{self.prefix}:policy:{agent}"

    def quota_actions(self, agent: str) -> str:
        return f"{self.prefix}:quota:{agent}:actions"

    def quota_spend(self, agent: str, day: str) -> str:
        return f"{self.prefix}:quota:{agent}:spend:{day}"

    def quota_call(self, call_id: str) -> str:
        return f"{self.prefix}:quota:call:{call_id}"

    def quota_call_day(self, call_id: str) -> str:
        """The UTC day (YYYYMMDD) whose spend a call's quota reservation was charged to."""
        return f"{self.prefix}:quota:call:{call_id}:day"
