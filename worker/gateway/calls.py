"""The tool gateway, on the agent's side: every tool call of a run passes here, in this order:

1. kill switches (`kill:tool:<tool>`, and `kill:writes` for a tool that writes) -> `killed`;
   again before every attempt (retry, send after a rate-limit wait), and on the tool worker
2. allowlist: the fleet's (deny by default), then the agent's policy `allowed_tools` -> `denied`
3. argument schema -> `invalid_args`, before any I/O
4. the agent's quotas (actions per hour, spend per day), reserved atomically -> `denied`
5. the run's tool-call budget (the call that would exceed is never made), or the recorded
   result of a call that an earlier attempt of this run already finished
   then the tool's declared cost, charged once to the run's `max_cost_usd` (worker/run/spend.py;
   the call that would overspend is never made: the run stops with `max_cost`)
6. per attempt: the fleet-wide rate limit (wait for the slot if it fits in the run's time, else
   `rate_limited`), the circuit breaker (`circuit_open` at once), then a Celery subtask on the
   tool's queue, waited for in slices of `SLICE_S` with the run's switches and deadline checked
7. retries of timeouts, connection failures, 5xx and 429 with the configured backoff and full
   jitter, honouring `Retry-After`, within the fleet's retry budget, never past the deadline;
   a write is retried only when it sends an idempotency key. Retries count as one call.

Every call leaves a decision (allowed or denied, why, what is left of the quotas) for the step log.

Steps 1-6 (and the per-attempt checks of 6) run in one Lua script, worker/gateway/checks.py, which
also pushes the admitted attempt's message (`Dispatcher.outgoing`), so a call is admitted and sent
in one round trip; a model attempt, and a first attempt whose declared cost is charged after
admission, are sent apart (`Dispatcher.send`). After the attempt the tool worker, in the script
that pushes the reply, reports the outcome to the breaker and records the final result; the run's
side does that bookkeeping only when the tool did not run or did not answer.

Model calls (`llm` agent) take the same path (`Call`, `_attempts`): the same script, with
`llm` and `llm:<model>` as the tool's switches, a recorded answer instead of the tool-call
budget, and the model's request and token rates and breaker; each attempt's worst case is
reserved from the run's token and cost budgets and the agent's spend quota right before it is
sent, and settled after its reply.

Any wait longer than the run's `park_after_s` (a reply, a backoff, a rate-limit slot) raises
Park: the state machine's position (`wait`: its state, attempt, give-up time and decision) is
kept in the run, and `resume` goes on from there in a later execution (worker/run/timers.py).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
import structlog
from pydantic import BaseModel

from worker.agents.llmconfig import llm_config
from worker.control import killswitch
from worker.control.approvals import APPROVE, Approvals, Pending, RequestAnswer, denial_message
from worker.control.policy import DECISION_TTL_S, NO_QUOTA, Decision, PolicyStore, decision
from worker.gateway.breaker import BreakerPolicy
from worker.gateway.checks import AdmissionRequest, Admitter, Answer, CallKeys, LimitSlot, Verdict
from worker.gateway.ratelimit import parse_rate
from worker.gateway.retrybudget import RetryBudget, RetryPolicy
from worker.keys import Keys, tool_queue
from worker.obs import histograms
from worker.obs.logs import cap_bytes, sampled
from worker.obs.redact import redact
from worker.publish import Outgoing
from worker.run.budget import ToolCallBudget
from worker.run.guard import SLICE_S, BudgetExceeded, LeaseLost, Park, RunGuard
from worker.run.spend import ModelCallCost, ReserveVerdict, SpendBudget, attempt_charge, reported_usage
from worker.settings import Settings
from worker.tools import MODEL_TOOL, Tool, ToolFailure, get_tool, validate_args
from worker.tools.base import ErrorType, error_result, is_retryable
from worker.units import MICRO, micro_from_usd

log = structlog.get_logger("agentfleet.gateway")
REPLY_GRACE_S = 1.0  # wait this long past a call's timeout for the tool worker's own answer
REPLY_TTL_S = 300


class BrokerUnavailable(redis.ConnectionError):
    """A tool call could not be sent: the broker is unreachable. A Redis error, so the loop
    treats it as the fleet's own failure (the run resumes elsewhere), not the agent's."""


@dataclass(frozen=True)
class ToolAttempt:
    """One attempt of a tool call, as a dispatcher sends it to a tool worker."""

    call_id: str
    attempt: int
    tool: str
    args: dict[str, Any]
    timeout_s: float
    owner: tuple[str, str]  # the run's tenant and agent: the tool worker names the run's switches


class Dispatcher(Protocol):
    """Sends one attempt of a tool call to a tool worker."""

    def send(self, attempt: ToolAttempt) -> None:
        """Send it now (raises BrokerUnavailable when the broker cannot take it)."""
        ...

    def outgoing(self, attempt: ToolAttempt) -> Outgoing | None:
        """The attempt as a task message that the admission script pushes itself when it admits
        the attempt (admitted and sent in one round trip); None: `send` sends it after admission."""
        ...


@dataclass(frozen=True)
class FleetControls:
    """The fleet-wide state the gateway consults; built once per process."""

    retry_budget: RetryBudget
    policies: PolicyStore
    admitter: Admitter
    approvals: Approvals

    @classmethod
    def build(cls, r: redis.Redis, keys: Keys, run_ttl_s: int = 7 * 86400) -> FleetControls:
        return cls(
            RetryBudget(r, keys),
            PolicyStore(r, keys),
            Admitter(r),
            Approvals(r, keys, run_ttl_s),
        )


@dataclass(frozen=True)
class Limit:
    """One rate limit on a call: the limiter's key, its rate, whose, and how many units it takes."""

    key: str
    rate: str
    cost: int = 1
    tenant: str | None = None


@dataclass(frozen=True)
class CallOutcome:
    """The envelope the agent sees, and the decision the step log keeps."""

    result: dict[str, Any]
    decision: dict[str, Any] = field(default_factory=dict)
    approval: dict[str, Any] | None = None  # the human's decision, for a call that needed one


def is_failure(result: dict[str, Any]) -> bool:
    """Outcomes that count against a tool's breaker: the dependency did not work (a busy tool
    worker is no failure of the dependency)."""
    kind = (result.get("error") or {}).get("type")
    return kind != "rate_limited" and (is_retryable(result) or kind == "tool_error")


def _denied(type: ErrorType, message: str, reason: str | None = None) -> CallOutcome:
    return CallOutcome(error_result(type, message), Decision("denied", reason or message).to_dict())


APPROVAL_AT = "approval"  # the park's `at` of a call waiting for a human's decision


def _not_approved(decision: dict[str, Any]) -> CallOutcome:
    """The outcome of a call whose approval was denied or expired."""
    message = denial_message(decision)
    return CallOutcome(error_result("denied", message), Decision("denied", message).to_dict(), decision)


class ToolGateway:
    """Makes the tool calls of one run."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        settings: Settings,
        *,
        guard: RunGuard,
        budget: ToolCallBudget,
        dispatcher: Dispatcher,
        controls: FleetControls,
        tenant: str,
        agent: str,
        run_id: str = "",
        spend: SpendBudget | None = None,
        max_cost_usd: float | None = None,
    ) -> None:
        self.r = r
        self.keys = keys
        self.settings = settings
        self.guard = guard
        self.budget = budget
        self.dispatcher = dispatcher
        self.controls = controls
        self.tenant = tenant
        self.agent = agent
        self.run_id = run_id
        self.spend = spend or SpendBudget(
            r, keys, run_id, budget.ttl_s, cost_by_tenant=settings.metrics.cost_by_tenant
        )
        self.max_cost_usd = settings.max_cost_usd if max_cost_usd is None else max_cost_usd
        # the settings do not change in a process: built once per run, not per call
        self.breaker_policy = BreakerPolicy(**settings.tools.breaker.model_dump())
        self.retry_policy = RetryPolicy(**settings.tools.retry_budget.model_dump())
        self._slots: dict[str, list[LimitSlot]] = {}

    def call(
        self, call_id: str, tool: str, args: dict[str, Any], resume: dict[str, Any] | None = None
    ) -> CallOutcome:
        """One tool call. Raises RunStopped (kill, cancel, deadline, budget) to end the run, and
        Park when it would wait long; `resume` is that Park's wait, when the run resumes the call.
        The loop logs the call with its step (one `tool call` line per step)."""
        if resume is not None and resume.get("at") == APPROVAL_AT:
            # decided (or expired, or woken early): admission again, at this moment
            outcome = self._call(call_id, tool, args)
            if outcome.approval is None:  # refused before its approval was read (a switch)
                decided = self.r.hget(self.keys.run(self.run_id), f"approval:{call_id}")
                outcome = dataclasses.replace(outcome, approval=json.loads(decided) if decided else None)
        elif resume is not None:
            try:
                outcome = self._resume(self._tool_call(call_id, tool, args), resume)
            except Park as park:  # it waits again: the human's decision goes on with it
                if resume.get("approval"):
                    park.wait["approval"] = resume["approval"]
                raise
            if resume.get("approval"):  # the call passed its approval before it parked
                outcome = dataclasses.replace(outcome, approval=resume["approval"])
        else:
            outcome = self._call(call_id, tool, args)
        result = outcome.result
        if not result.get("ok") and (result.get("error") or {}).get("type") == "killed":
            log.warning("kill-switch hit", tool=tool, reason=(result.get("error") or {}).get("message"))
        self._log_result(tool, result)
        return outcome

    def call_model(
        self,
        call_id: str,
        args: dict[str, Any],
        *,
        model: str,
        cost: ModelCallCost,
        timeout_s: float,
        resume: dict[str, Any] | None = None,
    ) -> CallOutcome:
        """One model call of the `llm` agent, through the same admission script and attempts as
        a tool call: kill switches (`llm`, `llm:<model>`), a recorded answer, the retry budget, the
        model's fleet-wide request and token rates and its breaker (both scoped `llm:<model>`),
        retries. It is no tool call (no allowlist, policy or tool-call budget); instead each
        attempt's worst case is reserved from the run's budgets and the agent's spend quota before
        it is sent and settled after it (worker/run/spend.py); a reservation the run's budgets cannot
        cover stops the run. Parks like a tool call (`resume`: the Park's wait)."""
        call = self._model_call(call_id, args, model, cost, timeout_s)
        if resume is not None:
            return self._resume(call, resume)
        # A call resumed after its worker died goes on after the attempts that execution made:
        # they are reserved (or settled) already, and each attempt is reserved once.
        last = self.r.hget(call.keys.call, "attempt")
        attempt = 0 if last is None else int(last) + 1
        answer = self._admit("admit", call, attempt=attempt)
        if answer.verdict is Verdict.STOP:
            raise self.guard.stop(answer.stop_kind, answer.stop_value)
        if answer.verdict is Verdict.KILLED:
            outcome = _denied("killed", answer.reason, f"kill switch: {answer.reason}")
            self._record(call, outcome.result)
            return outcome
        if answer.verdict is Verdict.RECORDED:  # answered before this run's worker died: not asked again
            return CallOutcome(dict(json.loads(answer.recorded)), Decision("allowed", "recorded").to_dict())
        decided = Decision("allowed", NO_QUOTA).to_dict()
        return self._attempts(call, decided, attempt=attempt, answer=answer)

    def _log_result(self, tool: str, result: dict[str, Any]) -> None:
        """Tool results are logged only for sampled runs (a sampled run is whole), redacted, capped."""
        obs = self.settings.observability
        if obs.sampled_tool_results and sampled(self.run_id, obs.result_sample_rate):
            log.info("tool result", tool=tool, result=cap_bytes(redact(result), obs.result_max_bytes))

    def _tool_call(self, call_id: str, tool: str, args: dict[str, Any]) -> Call:
        spec = get_tool(tool)
        if spec is None:
            raise ValueError(f"a parked call of unknown tool {tool!r}")
        return Call(
            call_id=call_id,
            spec=spec,
            args=args,
            keys=self._call_keys(call_id, tool, spec.name, writes=spec.writes),
            scope=spec.name,
            limits=self._tool_slots(spec),
            timeout_s=self.settings.tools.timeout_s(spec.name, spec.timeout_ms),
        )

    def _model_call(
        self, call_id: str, args: dict[str, Any], model: str, cost: ModelCallCost, timeout_s: float
    ) -> Call:
        spec = get_tool(MODEL_TOOL)
        assert spec is not None
        config = llm_config(self.settings)
        scope = f"{MODEL_TOOL}:{model}"
        limits = []
        if config.requests_per_minute:
            limits.append(Limit(scope, f"{config.requests_per_minute}/m"))
        if config.tokens_per_minute:
            limits.append(Limit(f"{scope}:tokens", f"{config.tokens_per_minute}/m", cost.worst_tokens))
        return Call(
            call_id=call_id,
            spec=spec,
            args=args,
            keys=self._call_keys(call_id, MODEL_TOOL, scope, model=model),
            scope=scope,
            limits=[
                LimitSlot(self.keys.rate_limit(x.key, x.tenant), parse_rate(x.rate), x.cost) for x in limits
            ],
            timeout_s=timeout_s,
            rates=limits,
            cost=cost,
        )

    def _call(self, call_id: str, tool: str, args: dict[str, Any]) -> CallOutcome:
        """Admission (one script), then the attempts; every outcome is counted in the stats."""
        spec = get_tool(tool)
        local_verdict, invalid = "", None
        if tool not in self.settings.tools.allowlist:
            local_verdict = "allowlist"
        elif spec is None:
            local_verdict = "unknown"
        else:
            try:
                validate_args(spec, args)
            except ToolFailure as failure:
                local_verdict, invalid = "invalid", failure.envelope()
        if spec is None:  # nothing is called: only the run's and the tool's switches are read
            call = Call(call_id, _UNKNOWN, args, self._call_keys(call_id, tool, tool), tool, [], 0.0)
        else:
            call = self._tool_call(call_id, tool, args)
        self.guard.check_local()
        if spec is not None and not local_verdict:  # before the call is admitted and counted
            self._charge_tool_cost(call_id, spec, check_only=True)
        answer = self._admit("admit", call, attempt=0, local_verdict=local_verdict, tool=tool)
        if answer.verdict is Verdict.STOP:
            raise self.guard.stop(answer.stop_kind, answer.stop_value)
        quota = (
            decision(self.agent, answer.max_actions, answer.max_spend_usd, answer.quota)
            if answer.quota
            else Decision("allowed", NO_QUOTA)
        )
        outcome: CallOutcome | None = None
        if answer.verdict is Verdict.KILLED:
            outcome = _denied("killed", answer.reason, f"kill switch: {answer.reason}")
        elif answer.verdict is Verdict.DENIED:
            messages = {
                "allowlist": f"tool {tool!r} is not on the fleet's allowlist",
                "policy": f"tool {tool!r} is not in agent {self.agent!r}'s allowed_tools",
                "unknown": f"unknown tool {tool!r}",
            }
            if answer.reason == "invalid" and invalid is not None:
                outcome = CallOutcome(invalid, Decision("denied", "invalid_args").to_dict())
            else:
                outcome = _denied("denied", messages.get(answer.reason, answer.reason))
        elif answer.verdict is Verdict.QUOTA:
            outcome = CallOutcome(error_result("denied", quota.reason), quota.to_dict())
        elif answer.verdict is Verdict.BUDGET:
            self.budget.used = answer.used
            raise BudgetExceeded("max_tool_calls", f"max_tool_calls={self.budget.max_tool_calls} reached")
        elif answer.verdict is Verdict.RECORDED:
            self.budget.used = answer.used
            outcome = CallOutcome(dict(json.loads(answer.recorded)), quota.to_dict())
        elif answer.verdict is Verdict.APPROVAL:
            outcome = self._approval(call, answer.decided)
            if outcome is None:  # approved as it expired: admitted like any approved call
                return self._call(call_id, tool, args)
        # a call that passed its approval keeps the human's decision for the step log (also when a
        # redelivered step finds it decided already, without a park to resume)
        approval = json.loads(answer.approval) if answer.approval else None
        if outcome is not None:
            self.r.hincrby(self.keys.stats_tools(), stats_field(tool, outcome.result), 1)
            return outcome if approval is None else dataclasses.replace(outcome, approval=approval)
        assert spec is not None  # every verdict above that can pass has a spec
        self.budget.used = answer.used
        self._charge_tool_cost(call_id, spec)
        try:
            outcome = self._attempts(call, quota.to_dict(), attempt=0, answer=answer)
        except Park as park:  # the step log keeps the human's decision when the call resumes
            if approval is not None:
                park.wait["approval"] = approval
            raise
        return outcome if approval is None else dataclasses.replace(outcome, approval=approval)

    def _approval(self, call: Call, decided: str) -> CallOutcome | None:
        """A call that needs a human's approval (worker/control/approvals.py): the denial when it was
        denied or has expired, None when it was approved just now; else ask for the approval
        (once per call) and raise Park until it is decided or expires."""
        if decided:
            return _not_approved(json.loads(decided))
        tool = call.spec.name
        if self.guard.park_after_s is None:
            message = (
                f"tool {tool!r} needs a human's approval, and this fleet's runs cannot wait for one "
                "without holding a process (runtime.park_waits is off)"
            )
            return _denied("denied", message, "approval needs runtime.park_waits")
        now = time.time()
        timeout_s = self.settings.tools.approval.timeout_s
        asked = Pending(call.call_id, tool, redact(call.args), now, now + timeout_s)
        # the reaper's deadline while the clock is stopped: the approval's expiry + what is left
        reaper_deadline = asked.expires_ts + max(0.0, self.guard.remaining_s()) + 60.0
        outcome, detail = self.controls.approvals.request(self.run_id, self.tenant, asked, reaper_deadline)
        if outcome is RequestAnswer.ENDED:
            raise LeaseLost()  # the run was ended by a kill sweep or a cancel; that call reported it
        if outcome is RequestAnswer.DECIDED:
            decision = json.loads(detail)
            return None if decision.get("decision") == APPROVE else _not_approved(decision)
        pending = Pending.from_json(detail)
        if time.time() >= pending.expires_ts:
            decision = self.controls.approvals.expire(self.run_id, call.call_id)
            return None if decision.get("decision") == APPROVE else _not_approved(decision)
        wait = {"at": APPROVAL_AT, "call_id": call.call_id}
        raise Park(pending.expires_ts, wait, reply_key=self.keys.approval_decided(call.call_id))

    def _resume(self, call: Call, wait: dict[str, Any]) -> CallOutcome:
        """Go on with an admitted call where its park left it (admission, quotas, budget and
        cost were taken before the park, once)."""
        decided = dict(wait.get("decision") or Decision("allowed", NO_QUOTA).to_dict())
        return self._attempts(call, decided, attempt=int(wait["attempt"]), resume=wait)

    def _charge_tool_cost(self, call_id: str, spec: Tool, *, check_only: bool = False) -> None:
        """Charge an admitted call's declared cost to the run's `max_cost_usd` (once per call), or
        stop the run with `max_cost` before the call is made. A run makes one call at a time, so
        the check before admission still holds when the admitted call is charged."""
        cost_micro = micro_from_usd(self.settings.tools.costs_usd.get(spec.name, spec.cost_usd))
        if cost_micro <= 0:
            return
        if self.spend.charge_tool(call_id, cost_micro, self.max_cost_usd, check_only=check_only) is not None:
            raise BudgetExceeded(
                "max_cost", f"not enough money left for {spec.name!r} (${cost_micro / MICRO:g} a call)"
            )

    def _call_keys(
        self, call_id: str, tool: str, scope: str, *, writes: bool = False, model: str | None = None
    ) -> CallKeys:
        *run_switches, cancel = self.guard.switch_keys
        switches = killswitch.tool_switch_keys(self.keys, tool, writes=writes, model=model)
        return CallKeys(
            run_switches=run_switches,
            cancel=cancel,
            tool_switch=switches[0],
            writes_switch=switches[1] if len(switches) > 1 else self.keys.kill_writes(),
            second_switch=len(switches) > 1,
            policy=self.keys.policy(self.agent),
            quota=self.controls.policies.quota_keys(self.agent, call_id),
            run=self.budget.run_key,
            call=self.keys.call(call_id),
            retry_budget=self.keys.retry_budget(scope),
            breaker=self.keys.breaker(scope),
            stats=self.keys.stats_tools(),
        )

    def _admit(
        self, stage: str, call: Call, *, attempt: int, local_verdict: str = "", tool: str | None = None
    ) -> Answer:
        tools = self.settings.tools
        spec = call.spec
        cost_micro = micro_from_usd(tools.costs_usd.get(spec.name, spec.cost_usd)) if call.cost is None else 0
        send = None
        # A tool's attempt goes out with its admission, unless something happens in between: a
        # model attempt's reservation, or the charge of a first attempt's declared cost.
        first_charge = stage == "admit" and cost_micro > 0
        if call.cost is None and not local_verdict and spec is not _UNKNOWN and not first_charge:
            send = self.dispatcher.outgoing(
                ToolAttempt(
                    call.call_id, attempt, spec.name, call.args, call.timeout_s, (self.tenant, self.agent)
                )
            )
        return self.controls.admitter(
            AdmissionRequest(
                stage,
                call.keys,
                local_verdict=local_verdict,
                tool=tool or spec.name,
                call_id=call.call_id,
                cost_micro=cost_micro,
                max_tool_calls=self.budget.max_tool_calls,
                call_ttl_s=self.budget.ttl_s,
                decision_ttl_s=DECISION_TTL_S,
                retry=self.retry_policy,
                breaker=self.breaker_policy,
                remaining_s=self.guard.remaining_s(),
                attempt=attempt,
                wait_stat=f"rate_limit_waits|{call.scope}",
                limits=call.limits,
                kind="model" if call.cost is not None else "tool",
                approval=spec.name in self.settings.tools.approval.required,
                send=send,
            )
        )

    def _attempts(
        self,
        call: Call,
        decided: dict[str, Any],
        *,
        attempt: int,
        answer: Answer | None = None,
        resume: dict[str, Any] | None = None,
    ) -> CallOutcome:
        """The attempts of an admitted call, tool or model, as a state machine that can park
        between any two states and resume in a later execution (`resume`: the Park's wait).

        States: `verdict` (act on the admission script's answer), `go` (a reserved rate-limit
        slot is due: admit again without the limits), `retry` (a backoff is over: admit again),
        `reply` (an attempt is out: wait for its reply). A model attempt's worst case is reserved
        right before it is sent and settled after its reply. The final result is recorded and
        counted; the decision for the step log is the admission's (a tool's quota) or the last
        attempt's reservation (a model's)."""
        spec, keys = call.spec, call.keys
        state, give_up_ts = "verdict", 0.0
        if resume is not None:
            state = str(resume["at"])
            give_up_ts = float(resume.get("give_up_ts", 0.0))
        while True:
            if state in ("go", "retry"):
                if resume is not None:  # a parked pause: what is left of it
                    self.guard.resume_pause(resume)
                    resume = None
                self.guard.check_local()
                answer = self._admit(state, call, attempt=attempt)
                state = "verdict"
            if state == "verdict":
                assert answer is not None
                refused = self._refusal(call, answer)
                if refused is not None:
                    return CallOutcome(self._record(call, refused), refusal_decision(decided, refused))
                if answer.verdict is Verdict.WAIT:
                    rate = ", ".join(limit.rate for limit in self._rates(call))
                    wait_ms = round(answer.wait_s * 1000)
                    log.info("rate-limit wait", tool=call.scope, wait_ms=wait_ms, rate=rate)
                    self.guard.pause(answer.wait_s, {"decision": decided, "at": "go", "attempt": attempt})
                    state = "go"
                    continue
                if call.cost is not None:  # a model attempt: reserve its worst case first
                    quota = self._reserve_attempt(call.call_id, attempt, call.cost)
                    decided = quota.to_dict()
                    if not quota.allowed:
                        denied = error_result("denied", quota.reason)
                        return CallOutcome(self._record(call, denied), decided)
                if answer.sent:  # the admission script pushed it
                    give_up_ts = time.time() + call.timeout_s + REPLY_GRACE_S
                else:
                    give_up_ts = self._send(call.call_id, attempt, spec.name, call.args, call.timeout_s)
            wait = {"decision": decided, "at": "reply", "attempt": attempt, "give_up_ts": give_up_ts}
            if resume is not None and resume.get("resumed"):
                wait["resumed"] = True  # the reply's ring woke the run: no stay to learn from
            resume = None
            try:
                replied, settled = self._await_reply(call.call_id, attempt, spec.name, call.timeout_s, wait)
                heard = replied is not None
                result = (
                    replied
                    if replied is not None
                    else error_result("timeout", _unanswered(spec.name, call.timeout_s))
                )
            except Park:
                raise  # the attempt is still out: a model attempt's reservation stays until its reply
            except BaseException:  # the run stops while a model request is out: it may be billed
                if call.cost is not None:
                    worst = (call.cost.worst_tokens, call.cost.worst_micro)
                    self._settle_attempt(call.call_id, attempt, call.cost, worst, decided)
                raise
            if call.cost is not None:
                charge = attempt_charge(result, call.cost)
                usage = (model_label(call.args.get("model"), self.settings), *reported_usage(result))
                self._settle_attempt(call.call_id, attempt, call.cost, charge, decided, usage)
            final = is_final(spec, attempt, result, self.settings)
            if not settled:  # no reply, a model call, or the tool did not run: the bookkeeping is here
                before, after, recorded, taken = self.controls.admitter.settle(
                    keys,
                    ok=not is_failure(result),
                    breaker=self.breaker_policy,
                    final_result=json.dumps(result) if final else None,
                    call_ttl_s=self.budget.ttl_s,
                    stats_field=stats_field(spec.name, result),
                    unheard_attempt=None if heard else attempt,
                    untaken_result=None if heard else json.dumps(_queued_too_long(spec.name, call.timeout_s)),
                )
                if not taken:  # the breaker was not told: the tool was never asked
                    result = _queued_too_long(spec.name, call.timeout_s)
                if after != before:
                    log.warning("breaker change", tool=call.scope, outcome=after, previous=before)
                if recorded is not None:  # the tool worker's result came in as this side gave up
                    result = dict(json.loads(recorded))
            if final:
                return CallOutcome(result, refusal_decision(decided, result))
            delay_s = self._retry_delay(call.scope, attempt, result)
            if delay_s is None:
                return CallOutcome(self._record(call, result), refusal_decision(decided, result))
            attempt += 1
            self.guard.pause(delay_s, {"decision": decided, "at": "retry", "attempt": attempt})
            state = "retry"

    def _refusal(self, call: Call, answer: Answer) -> dict[str, Any] | None:
        """The result of an attempt the admission script refused, or None when it may go on
        (`go`, or `wait` for a slot); a switch or cancel on the run stops it."""
        if answer.verdict is Verdict.STOP:
            raise self.guard.stop(answer.stop_kind, answer.stop_value)
        if answer.verdict is Verdict.KILLED:  # flipped while this call backed off or waited
            return error_result("killed", answer.reason)
        if answer.verdict is Verdict.RATE_LIMITED:
            message = _rate_message(self._rates(call)[answer.limit_index], answer.wait_s)
            return error_result("rate_limited", message, retry_after_s=answer.wait_s)
        if answer.verdict is Verdict.CIRCUIT_OPEN:
            retry_in_s = answer.retry_in_s
            message = _circuit_message(call.scope, answer.breaker_state, retry_in_s)
            return error_result("circuit_open", message, retry_after_s=retry_in_s)
        return None

    def _rates(self, call: Call) -> list[Limit]:
        return call.rates if call.cost is not None else self._tool_limits(call.spec)

    def _retry_delay(self, scope: str, attempt: int, result: dict[str, Any]) -> float | None:
        """How long to wait before retrying a retryable failure, or None when it may not be
        retried: past the run's deadline, or over the fleet's retry budget for `scope`."""
        tools = self.settings.tools
        ceiling_ms = tools.retries.backoff_ms[min(attempt, len(tools.retries.backoff_ms) - 1)]
        delay_s = random.uniform(0, ceiling_ms / 1000.0)  # full jitter
        retry_after = (result.get("error") or {}).get("retry_after_s")
        if isinstance(retry_after, int | float):
            delay_s = max(delay_s, float(retry_after))
        if delay_s >= self.guard.remaining_s():
            return None  # the retry could not happen before the deadline
        if not self.controls.retry_budget.try_retry(scope, self.retry_policy):
            log.warning("retry budget spent", tool=scope)
            return None  # the fleet already retries this too much
        log.info(
            "tool retry",
            tool=scope,
            attempt=attempt + 1,
            delay_ms=round(delay_s * 1000),
            outcome=(result.get("error") or {}).get("type"),
        )
        return delay_s

    def _record(self, call: Call, result: dict[str, Any]) -> dict[str, Any]:
        """Record a call's final result (a resumed run replays it) and count it."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(call.keys.call, mapping={"state": "done", "result": json.dumps(result)})
        pipe.expire(call.keys.call, self.budget.ttl_s)
        pipe.hincrby(call.keys.stats, stats_field(call.spec.name, result), 1)
        pipe.execute()
        return result

    def _tool_slots(self, spec: Tool) -> list[LimitSlot]:
        """The rate-limit slots a call of `spec` takes, as the admission script wants them."""
        if spec.name not in self._slots:
            self._slots[spec.name] = [
                LimitSlot(self.keys.rate_limit(limit.key, limit.tenant), parse_rate(limit.rate), limit.cost)
                for limit in self._tool_limits(spec)
            ]
        return self._slots[spec.name]

    def _tool_limits(self, spec: Tool) -> list[Limit]:
        tools = self.settings.tools
        limits = []
        text = tools.rate_limits.get(spec.name) or spec.rate_limit
        if text:
            limits.append(Limit(spec.name, text))
        if spec.name in tools.tenant_rate_limits:
            limits.append(Limit(spec.name, tools.tenant_rate_limits[spec.name], tenant=self.tenant))
        return limits

    def _reserve_attempt(self, call_id: str, attempt: int, cost: ModelCallCost) -> Decision:
        """Reserve one model attempt's worst case from the run's budgets (else stop the run with
        `max_tokens` or `max_cost`) and from the agent's spend quota (else a denied Decision)."""
        refused = self.spend.reserve(
            call_id, attempt, cost.worst_tokens, cost.worst_micro, cost.max_tokens, cost.max_cost_usd
        )
        if refused is not None:
            left = "tokens" if refused is ReserveVerdict.MAX_TOKENS else "money"
            raise BudgetExceeded(
                refused, f"not enough {left} left for a model call of {cost.worst_tokens} tokens"
            )
        policy = self.controls.policies.get(self.agent)
        quota = self.controls.policies.reserve(
            self.agent, _attempt_id(call_id, attempt), policy, cost.worst_micro / MICRO, count_action=False
        )
        if not quota.allowed:
            self.spend.settle(call_id, attempt, 0, 0)  # not sent
        return quota

    def _settle_attempt(
        self,
        call_id: str,
        attempt: int,
        cost: ModelCallCost,
        charge: tuple[int, int],
        quota: dict[str, Any],
        usage: tuple[str, int, int] = ("", 0, 0),
    ) -> None:
        """Settle one attempt at `charge` (tokens, micro-dollars) in the run and the agent's quota;
        `usage` (the model's label, its reported input and output tokens) counts in the fleet's."""
        tokens, micro = charge
        self.spend.settle(call_id, attempt, tokens, micro, usage)
        if quota.get("reason") == NO_QUOTA:  # nothing was reserved from a daily limit
            return
        # Only an attempt charged under a spend quota is corrected, once (a Lua script keyed by it).
        self.controls.policies.adjust_spend(
            self.agent, _attempt_id(call_id, attempt), (micro - cost.worst_micro) / MICRO
        )

    def _send(self, call_id: str, attempt: int, tool: str, args: dict[str, Any], timeout_s: float) -> float:
        """Send one (marked) attempt; returns when the run gives up on its reply (unix s)."""
        self.dispatcher.send(ToolAttempt(call_id, attempt, tool, args, timeout_s, (self.tenant, self.agent)))
        return time.time() + timeout_s + REPLY_GRACE_S

    def _await_reply(
        self, call_id: str, attempt: int, tool: str, timeout_s: float, wait: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, bool]:
        """Wait for an attempt's reply until `wait["give_up_ts"]` (None: none came), checking the run between
        slices: in this process for up to the run's park_after_s (none when the tool is known
        slow), then Park until the reply rings or the give-up time. Returns the envelope, and
        whether the tool worker settled the call (worker/gateway/reply.py)."""
        reply_key = self.keys.call_reply(call_id, attempt)
        give_up_ts = float(wait["give_up_ts"])
        parking = self.guard.park_after_s is not None
        first_wait = "resumed" not in wait  # a resume comes for the reply: no stay to learn from
        stay_s = _stay_s(tool, self.guard.park_after_s) if first_wait else (self.guard.park_after_s or 0.0)
        stay_until = time.time() + stay_s
        while True:
            now = time.time()
            left = give_up_ts - now
            if left <= 0:
                return None, False
            if parking and now >= stay_until:
                if first_wait:
                    _note_stay(tool, answered=False)
                # The park script parks only if the reply is not there yet; if it is, the run
                # goes on here, `resumed`: with a stay, so the reply is taken at once.
                raise Park(min(give_up_ts, self.guard.deadline_ts), {**wait, "resumed": True}, reply_key)
            window = min(SLICE_S, left, max(self.guard.remaining_s(), 0.01))
            if parking:
                window = min(window, stay_until - now)
            reply = self.r.blpop([reply_key], timeout=max(window, 0.001))
            if reply is not None:  # BLPOP took the one reply; a late duplicate expires with the key
                if parking and first_wait:
                    _note_stay(tool, answered=True)
                return _reply_envelope(reply[1])
            self.guard.check()


@dataclass(frozen=True)
class Call:
    """One call the gateway makes: a tool's, or a model's (`cost` set)."""

    call_id: str
    spec: Tool
    args: dict[str, Any]
    keys: CallKeys
    scope: str  # its breaker's and retry budget's name: the tool, or `llm:<model>`
    limits: list[LimitSlot]
    timeout_s: float
    rates: list[Limit] = field(default_factory=list)  # a model call's limits, for messages
    cost: ModelCallCost | None = None  # a model call's worst case per attempt


def _unknown_tool(args: Any, ctx: Any) -> dict[str, Any]:
    raise AssertionError("an unknown tool is never called")


_UNKNOWN = Tool(name="unknown", fn=_unknown_tool, args_model=BaseModel, description="")


# Per tool, how many times in a row this process waited its in-process stay for a reply in vain.
# A tool that keeps answering slower than that stay parks its callers at once; one call at most
# every PROBE_EVERY_S still waits, so a tool that became fast is noticed. A burst of calls to a
# slow tool does not cost each run park_after_s of a pool child (a probe per number of calls did:
# in a burst of a thousand, every 20th call held a child 50 ms).
_missed: dict[str, int] = {}
_probed: dict[str, float] = {}  # per tool, when (monotonic) a call last waited as a probe
SLOW_AFTER_MISSES = 3
PROBE_EVERY_S = 1.0


def _stay_s(tool: str, park_after_s: float | None) -> float:
    """How long to wait here for a reply before parking."""
    if park_after_s is None:
        return 0.0
    if _missed.get(tool, 0) < SLOW_AFTER_MISSES:
        return park_after_s
    now = time.monotonic()
    if now - _probed.get(tool, 0.0) < PROBE_EVERY_S:
        return 0.0
    _probed[tool] = now
    return park_after_s


def _note_stay(tool: str, answered: bool) -> None:
    _missed[tool] = 0 if answered else _missed.get(tool, 0) + 1


def _unanswered(tool: str, timeout_s: float) -> str:
    return f"tool {tool!r} did not answer within {timeout_s:g} s"


def _queued_too_long(tool: str, timeout_s: float) -> dict[str, Any]:
    """The result of an attempt no tool worker took before its run gave up on it."""
    message = (
        f"{_unanswered(tool, timeout_s)}: no tool worker took the call "
        f"(its queue {tool_queue(tool)} is backed up, or no tool worker consumes it)"
    )
    return error_result("timeout", message)


def _reply_envelope(raw: Any) -> tuple[dict[str, Any], bool]:
    """The envelope of a reply, and whether the tool worker settled the call."""
    data = json.loads(raw)
    if isinstance(data, dict) and "envelope" in data:
        return dict(data["envelope"]), bool(data.get("settled"))
    return dict(data), False


def refusal_decision(decision_dict: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The decision record of a call whose attempts the gateway refused after admission (a kill
    switch flipped, a rate limit or an open breaker): denied, with the refusal as its reason."""
    kind = None if result.get("ok") else (result.get("error") or {}).get("type")
    if kind not in ("rate_limited", "circuit_open", "killed"):
        return decision_dict
    reason = str(result["error"]["message"])
    return {
        **decision_dict,
        "decision": "denied",
        "reason": f"kill switch: {reason}" if kind == "killed" else reason,
    }


def _attempt_id(call_id: str, attempt: int) -> str:
    """The id a model attempt's quota reservation is kept under."""
    return f"{call_id}#{attempt}"


def is_final(spec: Tool, attempt: int, result: dict[str, Any], settings: Settings) -> bool:
    """Whether an attempt's result ends its call: not retryable, out of retries, or a write that
    sends no idempotency key (never retried). The agent may still give up a retry (deadline,
    retry budget); the tool worker uses the same rule to settle a call it ran."""
    may_retry = not spec.writes or spec.idempotent
    return not (may_retry and attempt < settings.tools.retries.max and is_retryable(result))


def model_label(model: Any, settings: Settings) -> str:
    """A model's label in /metrics: its name when the fleet's config names it, else "other"."""
    return histograms.label_or_other(str(model), histograms.known_models(settings))


def stats_field(tool: str, result: dict[str, Any]) -> str:
    """The tools' stats field a call's outcome counts in (fleet-wide, for /metrics)."""
    label = tool if get_tool(tool) is not None else "unknown"  # agents may ask for any name
    kind = "ok" if result.get("ok") else (result.get("error") or {}).get("type", "tool_error")
    return f"calls|{label}|{kind}"


def _rate_message(limit: Limit, wait_s: float) -> str:
    who = f" for tenant {limit.tenant!r}" if limit.tenant else ""
    return f"rate limit {limit.rate}{who}: next slot in {wait_s:.2f} s, past the run's deadline"


def _circuit_message(scope: str, state: str, retry_in_s: float) -> str:
    return f"{scope!r} is failing: circuit {state}, next try in {retry_in_s:.1f} s"
