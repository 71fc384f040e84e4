"""Approval of tool calls by a human: the call waits, the run parks, a decision resumes it.

A tool needs approval when it is in `tools.approval.required` or in the agent's policy
`approve_tools`. The admission script (worker/gateway/checks.py) answers `approval` for such a
call until the call's decision, in the run's hash, is `approve`; only then does the call go on to
the quotas, budgets, rate limits and breaker, so those are checked when it is approved, not when
it was asked for. A call is asked for once:

- `request` (one script) records the pending approval in the run's hash (`approval`: call id,
  tool, redacted args, since, expires_at; `approval_since`), lists the run among its tenant's
  pending approvals (`Keys.approvals`), writes the `approval_requested` event and moves the run's
  reaper deadline past the approval's expiry;
- the run parks (worker/run/timers.py) until the approval expires, waiting on
  `Keys.approval_decided(call_id)` as it would on a tool's reply;
- `decide` (one script, from `POST /v1/runs/{id}/approvals/{call_id}`, or the run itself when the
  approval has expired) writes the decision once (`approval:<call_id>` in the run's hash), adds
  the time the run waited to its `paused_s`, which the run's deadline excludes (time waiting for
  a human does not count against max_seconds), drops the pending approval, pushes the decision
  to the list the parked run waits on, makes the parked run due, rings the schedulers' bell and
  writes the `approval_decided` event.

A run's deadline is `started_ts + max_seconds + paused_s`, and while it waits for a decision the
clock is stopped: the timers' claim adds the time since `approval_since`.

A denied or expired approval reaches the agent as `{"ok": false, "error": {"type": "denied",
"message": "approval denied: ..." | "approval expired"}}`. Kill switches and cancel end a run
that waits for approval like any parked run: at once.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from worker import lua
from worker.keys import Keys
from worker.run.events import EVENTS_MAX
from worker.run.store import iso, waiting_view

APPROVE, DENY, EXPIRED = "approve", "deny", "expired"
COMMENT_MAX = 2000

# KEYS: the run, its tenant's pending approvals, the deadlines zset, the run's events and their
# channel, then a webhook delivery's hash, due and born zsets (worker/webhooks/outbox.py).
# ARGV[1]: the named arguments, read as `a`: call_id, request (the request as the run's hash keeps
# it, JSON), since (unix s, as text: written as it is), run_id, reaper_deadline (the reaper's
# deadline while it waits, unix s, as text), events_max (the events' cap), run_ttl_s,
# delivery_id, tenant, shown (the request as the event and the webhook show it, JSON).
# Returns a RequestAnswer and its detail: {'pending', the call's request (this one, or the one
# asked before for the same call)}, {'decided', the decision} or {'ended', the run's status}.
_REQUEST = lua.load("worker/control/approval_request.lua")

# KEYS: the run, its tenant's pending approvals, the call's decided list, the timers zset, the
# schedulers' bell, the run's events and their channel. ARGV[1]: the named arguments, read as
# `a`: call_id, decision (JSON), now (unix s), run_id, tenant (who decides; '' for the run itself:
# an expiry), events_max (the events' cap), run_ttl_s.
# Returns a DecideAnswer: {'ok', decision}, {'decided', the decision taken before}, {'missing'}
# (no such run for this tenant), {'unknown'} (no such call waits for approval) or
# {'ended', status}.
_DECIDE = lua.load("worker/control/approval_decide.lua")


class RequestAnswer(StrEnum):
    """What the request script found when asked for a call's approval."""

    PENDING = "pending"  # the call waits: the request as recorded (the first for this call)
    DECIDED = "decided"  # the call was decided already: the decision (JSON)
    ENDED = "ended"  # the run no longer runs: its status


class DecideAnswer(StrEnum):
    """What the decide script did with a decision."""

    OK = "ok"  # taken: the decision (JSON)
    DECIDED = "decided"  # the call was decided before: that decision (JSON)
    MISSING = "missing"  # no such run for the tenant
    UNKNOWN = "unknown"  # the run's call waits for no approval
    ENDED = "ended"  # the run ended undecided: its status


class DecisionRefused(Exception):
    """A decision that cannot be taken: `reason` is `missing` (no such run for the tenant),
    `unknown` (the call waits for no approval), `decided` (`detail`: the decision taken before)
    or `ended` (`detail`: the run's status)."""

    def __init__(self, reason: DecideAnswer, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Pending:
    """An approval the run waits for (the run hash's `approval`), as the API shows it."""

    call_id: str
    tool: str
    args: Any
    since: float
    expires_ts: float

    def public(self) -> dict[str, Any]:
        """As the `approval_requested` event and webhook show it."""
        return {
            "call_id": self.call_id,
            "tool": self.tool,
            "args": self.args,
            "since": iso(self.since),
            "expires_at": iso(self.expires_ts),
        }

    def to_json(self) -> str:
        """As the run's hash keeps it."""
        return json.dumps({**self.public(), "since_ts": self.since, "expires_ts": self.expires_ts})

    @classmethod
    def from_json(cls, raw: str) -> Pending:
        data = json.loads(raw)
        since, expires = float(data["since_ts"]), float(data["expires_ts"])
        return cls(str(data["call_id"]), str(data["tool"]), data.get("args"), since, expires)


def decision_data(decision: str, *, by: str | None, comment: str | None, now: float) -> dict[str, Any]:
    """A decision as the run's hash, the step log and the `approval_decided` event keep it."""
    return {"decision": decision, "by": by, "at": iso(now), "comment": comment}


def denial_message(decision: dict[str, Any]) -> str:
    """The message the agent gets for a call that was not approved."""
    if decision.get("decision") == EXPIRED:
        return "approval expired"
    comment = decision.get("comment")
    return f"approval denied: {comment}" if comment else "approval denied"


class Approvals:
    """Asks for, decides and lists the approvals of one fleet (one key prefix)."""

    def __init__(self, r: redis.Redis, keys: Keys, run_ttl_s: int) -> None:
        self.r = r
        self.keys = keys
        self.run_ttl_s = run_ttl_s
        self._request = r.register_script(_REQUEST)
        self._decide = r.register_script(_DECIDE)

    def request(
        self, run_id: str, tenant: str, pending: Pending, reaper_deadline_ts: float
    ) -> tuple[RequestAnswer, str]:
        """Ask for the call's approval, once: returns (`pending`, the request as recorded: the
        first one for this call), (`decided`, the decision JSON) or (`ended`, the run's status).
        The first ask also writes the `approval_requested` event, and a webhook delivery when the
        run's webhook subscribes to it."""
        keys = self.keys
        delivery_id = uuid.uuid4().hex
        outcome, detail = self._request(
            keys=[
                keys.run(run_id),
                keys.approvals(tenant),
                keys.deadlines(),
                keys.run_events(run_id),
                keys.run_events_channel(run_id),
                keys.webhook(delivery_id),
                keys.webhooks_due(),
                keys.webhooks_born(),
            ],
            args=[
                lua.named(
                    call_id=pending.call_id,
                    request=pending.to_json(),
                    since=repr(pending.since),
                    run_id=run_id,
                    reaper_deadline=f"{reaper_deadline_ts:.6f}",
                    events_max=EVENTS_MAX,
                    run_ttl_s=self.run_ttl_s,
                    delivery_id=delivery_id,
                    tenant=tenant,
                    shown=json.dumps(pending.public()),
                )
            ],
        )
        return RequestAnswer(str(outcome)), str(detail)

    def decide(
        self,
        run_id: str,
        call_id: str,
        decision: str,
        *,
        tenant: str,
        comment: str | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Take a decision (`approve`, `deny`; `expired` with tenant '' by the run itself) on the
        call's approval, once. Returns the decision; raises DecisionRefused."""
        now = time.time() if now is None else now
        data = decision_data(decision, by=tenant or None, comment=comment, now=now)
        keys = self.keys
        outcome, *rest = self._decide(
            keys=[
                keys.run(run_id),
                keys.approvals(tenant) if tenant else keys.approvals(self._tenant(run_id)),
                keys.approval_decided(call_id),
                keys.timers(),
                keys.timers_bell(),
                keys.run_events(run_id),
                keys.run_events_channel(run_id),
            ],
            args=[
                lua.named(
                    call_id=call_id,
                    decision=json.dumps(data),
                    now=now,
                    run_id=run_id,
                    tenant=tenant,
                    events_max=EVENTS_MAX,
                    run_ttl_s=self.run_ttl_s,
                )
            ],
        )
        answer = DecideAnswer(str(outcome))
        if answer is not DecideAnswer.OK:
            raise DecisionRefused(answer, str(rest[0]) if rest else "")
        return dict(json.loads(rest[0]))

    def expire(self, run_id: str, call_id: str) -> dict[str, Any]:
        """Record that the call's approval expired, unless a decision came first: returns the
        decision that stands."""
        try:
            return self.decide(run_id, call_id, EXPIRED, tenant="")
        except DecisionRefused as refused:
            if refused.reason is DecideAnswer.DECIDED:
                return dict(json.loads(refused.detail))
            raise

    def pending(self, tenant: str, limit: int = 100) -> list[dict[str, Any]]:
        """The tenant's pending approvals, oldest first: each `{"run_id", "agent", "call_id",
        "tool", "args", "since", "expires_at"}`. Entries of runs that no longer wait (decided,
        ended, expired with the run) are dropped from the list on the way."""
        key = self.keys.approvals(tenant)
        run_ids = [str(x) for x in self.r.zrange(key, 0, max(0, limit - 1))]
        if not run_ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(self.keys.run(run_id), ["status", "agent", "approval"])
        found, stale = [], []
        for run_id, (status, agent, approval) in zip(run_ids, pipe.execute(), strict=True):
            view = waiting_view(approval) if status == "running" else None
            if view is None:
                stale.append(run_id)
                continue
            view.pop("type")
            found.append({"run_id": run_id, "agent": agent, **view})
        if stale:
            self.r.zrem(key, *stale)
        return found

    def _tenant(self, run_id: str) -> str:
        tenant = self.r.hget(self.keys.run(run_id), "tenant")
        return str(tenant) if tenant is not None else ""
