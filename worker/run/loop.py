"""The budgeted agent loop: one run, from its checkpoint to its end. No Celery in here.

Per step: check kill switches, cancel and deadline -> ask the agent whether it is done ->
check the step budget -> ask the agent for its next action (under a deadline alarm) -> act ->
checkpoint. Budget counters, the start time and the checkpoint live in the run's Redis hash, so
an attempt that resumes after a dead worker continues with what the run had already spent.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType
from typing import Any

import redis
import sentry_sdk
import structlog
from pydantic import BaseModel

from worker.agents import Agent, CallModel, CallTool, Fail, Finish, RunState, Sleep, get_agent_class
from worker.agents.llmconfig import llm_config
from worker.control.policy import Policy
from worker.control.rollout import version_config
from worker.gateway.calls import Dispatcher, FleetControls, ToolGateway
from worker.keys import Keys
from worker.obs.redact import redact_text
from worker.obs.tracing import RunTrace
from worker.run.budget import CALL_RECORD_TTL_S, ToolCallBudget
from worker.run.guard import BudgetExceeded, DeadlineExceeded, LeaseLost, Park, RunGuard, RunStopped
from worker.run.keeper import Held, RunKeeper
from worker.run.lease import Leases, holder_is_dead, new_token
from worker.run.spend import ModelCallCost, Prices, SpendBudget
from worker.run.store import CANCELLED, FAILED, STOPPED, SUCCEEDED, Budgets, RunStore
from worker.run.timers import ParkVerdict, Timers
from worker.settings import Settings
from worker.tools import MODEL_TOOL, get_tool
from worker.units import usd_from_micro

log = structlog.get_logger("agentfleet.run")
WATCHDOG_GRACE_S = 0.5  # past the deadline, the watchdog ends a run whose agent ignores the alarm
ERROR_MESSAGE_MAX = 500
_ACTION_NAMES: dict[type, str] = {
    CallTool: "tool",
    CallModel: "model",
    Sleep: "sleep",
    Finish: "final",
    Fail: "fail",
}


@dataclass(frozen=True)
class LoopDeps:
    """What the loop talks to; tests pass their own dispatcher and hard stop."""

    r: redis.Redis
    keys: Keys
    settings: Settings
    store: RunStore
    dispatcher: Dispatcher
    controls: FleetControls
    leases: Leases
    keeper: RunKeeper  # this process's lease renewals and watchdogs
    # Called by the watchdog after it has recorded max_seconds: ends the process (os._exit) in a
    # worker child, so the pool replaces it; None disables the watchdog.
    hard_stop: Callable[[], None] | None = None
    timers: Timers | None = None  # parks waiting runs (runtime.park_waits); None: waits hold the process


def execute_run(run_id: str, deps: LoopDeps, wake: str = "") -> str | None:
    """Run (or resume) `run_id` until it ends or parks; returns the final status, or None if
    not run here or parked. `wake`: the park a scheduler's resume delivery is for."""
    store = deps.store
    token = new_token()
    started = store.start(run_id, token, wake=wake)  # one round trip: lease, start, first check's reads
    if started.holder is not None and holder_is_dead(started.holder):
        started = store.start(run_id, token, takeover=started.holder, wake=wake)  # our host's dead child
    if started.raw is None:
        # missing, ended, or a live execution elsewhere holds it: this delivery is a duplicate
        return started.status if started.holder is None else None
    with deps.keeper.hold(run_id, token) as held, RunTrace(run_id, started.raw) as trace:
        attempt = _Attempt(held, trace)
        raw = started.raw
        attempts = int(raw.get("attempts", 1))
        if attempts > deps.settings.max_attempts:
            message = f"the run's worker died {attempts - 1} times; the run is not tried again"
            _finish(deps, attempt, FAILED, "error", error={"type": "worker_lost", "message": message})
            return FAILED
        return _execute(run_id, raw, started.checks, deps, attempt)


@dataclass
class _Attempt:
    """One execution of a run: its hold on the lease, and the step it has begun but not yet
    written to the run (the agent is choosing its action; see _choose)."""

    held: Held
    trace: RunTrace  # its spans (worker/obs/tracing.py)
    unwritten_step: int | None = None


def _finish(
    deps: LoopDeps,
    attempt: _Attempt,
    status: str,
    stop_reason: str,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
) -> None:
    """End the run, count a begun step, and release the lease, in one round trip."""
    held = attempt.held
    deps.store.finish(
        held.run_id,
        status,
        stop_reason,
        output=output,
        error=error,
        lease_token=held.token,
        steps=attempt.unwritten_step,
    )
    held.released = True
    attempt.trace.finished(status, stop_reason)


def _execute(
    run_id: str, raw: dict[str, str], checks: tuple[str | None, str | None], deps: LoopDeps, attempt: _Attempt
) -> str | None:
    structlog.contextvars.clear_contextvars()  # a prefork child runs many tasks
    structlog.contextvars.bind_contextvars(
        run_id=run_id, tenant=raw["tenant"], agent=raw["agent"], trace_id=raw.get("trace_id")
    )
    if raw.get("pending"):
        log.debug("run resumed", attempt=int(raw.get("attempts", 1)), version=raw.get("version"))
    else:
        log.info("run started", attempt=int(raw.get("attempts", 1)), version=raw.get("version"))
        if int(raw.get("attempts", 1)) == 1:
            attempt.trace.queued(raw)
    budgets = Budgets.from_dict(json.loads(raw["budgets"]))
    deadline_ts = run_deadline(raw, budgets.max_seconds)
    guard = RunGuard(
        deps.r,
        deps.keys,
        run_id=run_id,
        tenant=raw["tenant"],
        agent=raw["agent"],
        deadline_ts=deadline_ts,
        lease_lost=attempt.held.lost,
        park_after_s=deps.settings.runtime.park_after_ms / 1000.0 if deps.timers is not None else None,
    )

    def record_deadline() -> None:
        _finish(deps, attempt, STOPPED, "max_seconds")

    if deps.hard_stop is not None:
        fire = _watchdog(record_deadline, deps.hard_stop)
        deps.keeper.watch(attempt.held, deadline_ts + WATCHDOG_GRACE_S, fire)
    try:
        return _steps(run_id, raw, budgets, guard, deps, attempt, checks)
    except LeaseLost:
        return None  # another execution took the run over; it reports the end
    except RunStopped as stop:
        if stop.stop_reason == "killed":
            log.warning("kill-switch hit", reason=stop.message)
        error = {"type": "killed", "message": stop.message} if stop.stop_reason == "killed" else None
        _finish(deps, attempt, stop.status, stop.stop_reason, error=error)
        return stop.status
    except DeadlineExceeded:
        record_deadline()
        return STOPPED
    except Exception as exc:
        if _is_soft_time_limit(exc):
            record_deadline()
            return STOPPED
        if isinstance(exc, redis.RedisError):
            raise  # the fleet's own state is unreachable: the lease expires and the run is reaped
        message = redact_text(f"{type(exc).__name__}: {exc}")[:ERROR_MESSAGE_MAX]
        log.error("agent raised", error=message)
        sentry_sdk.capture_exception(exc)  # no-op without SENTRY_DSN; redacted by before_send
        _finish(deps, attempt, FAILED, "error", error={"type": "agent_error", "message": message})
        return FAILED


@dataclass
class RunContext:
    """What one execution of a run steps with, built once from the run's hash (`build`): the
    agent, the gateway with the run's tool-call and spend budgets, the tools the agent is offered,
    the run's input, and the loop's position, which each step's checkpoint moves on."""

    run_id: str
    raw: dict[str, str]  # the run's hash, as the start script read it
    budgets: Budgets
    guard: RunGuard
    agent: Agent
    budget: ToolCallBudget
    gateway: ToolGateway
    offered: list[dict[str, Any]]
    input: Any
    cursor: int  # the last step done
    memory: dict[str, Any]
    last_result: Any
    # A parked step resumes with its action and where its wait left off (worker/run/timers.py).
    pending: dict[str, Any] | None
    resume: dict[str, Any] | None

    @classmethod
    def build(
        cls, run_id: str, raw: dict[str, str], budgets: Budgets, guard: RunGuard, deps: LoopDeps
    ) -> RunContext | None:
        """The run's context from its hash; None when the run names no known agent."""
        agent_cls = get_agent_class(raw["agent"])
        if agent_cls is None:
            return None
        agent = agent_cls(version_config(deps.settings.agents.get(raw["agent"], {}), raw.get("version")))
        budget = ToolCallBudget(
            deps.r,
            deps.keys,
            run_id,
            budgets.max_tool_calls,
            CALL_RECORD_TTL_S,
            used=int(raw.get("tool_calls", 0)),
        )
        spend = SpendBudget(
            deps.r,
            deps.keys,
            run_id,
            deps.settings.run_ttl_s,
            cost_by_tenant=deps.settings.metrics.cost_by_tenant,
        )
        gateway = ToolGateway(
            deps.r,
            deps.keys,
            deps.settings,
            guard=guard,
            budget=budget,
            dispatcher=deps.dispatcher,
            controls=deps.controls,
            tenant=raw["tenant"],
            agent=raw["agent"],
            run_id=run_id,
            spend=spend,
            max_cost_usd=budgets.max_cost_usd,
        )
        # The policy read costs a round trip per run; agents that never look at the tool list skip it.
        offered = []
        if agent_cls.reads_tools:
            offered = offered_tools(deps.settings, deps.controls.policies.get(raw["agent"]))
        return cls(
            run_id=run_id,
            raw=raw,
            budgets=budgets,
            guard=guard,
            agent=agent,
            budget=budget,
            gateway=gateway,
            offered=offered,
            input=json.loads(raw["input"]),
            cursor=int(raw.get("cursor", 0)),
            memory=json.loads(raw.get("memory") or "{}"),
            last_result=json.loads(raw.get("last_result") or "null"),
            pending=json.loads(raw["pending"]) if raw.get("pending") else None,
            resume=json.loads(raw["wait"]) if raw.get("wait") else None,
        )


@dataclass(frozen=True)
class _Step:
    """A step with its action chosen (or resumed from its park)."""

    number: int
    action: CallTool | CallModel | Sleep
    started_ts: float  # its duration_ms counts from here: the agent's choice + the action


def _steps(
    run_id: str,
    raw: dict[str, str],
    budgets: Budgets,
    guard: RunGuard,
    deps: LoopDeps,
    attempt: _Attempt,
    checks: tuple[str | None, str | None],
) -> str | None:
    """The run's steps until it ends (its status) or parks (None): per step, the run's check,
    then choose -> perform -> checkpoint."""
    ctx = RunContext.build(run_id, raw, budgets, guard, deps)
    if ctx is None:
        message = f"no agent {raw['agent']!r}"
        _finish(deps, attempt, FAILED, "error", error={"type": "unknown_agent", "message": message})
        return FAILED
    prefetched: tuple[str | None, str | None] | None = checks
    while True:
        guard.check(prefetched)  # values the start script or the last checkpoint read
        chosen = _choose(ctx, deps, attempt)
        if isinstance(chosen, Finish | Fail):
            return _end(deps, attempt, chosen)
        performed = _perform(ctx, chosen, deps, attempt)
        if performed is None:
            return None  # parked: a scheduler resumes the run when its wait is over
        prefetched = _checkpoint(ctx, chosen, *performed, deps, attempt)


def _choose(ctx: RunContext, deps: LoopDeps, attempt: _Attempt) -> _Step | Finish | Fail:
    """The next step: the parked one this execution resumes, or the agent's choice, written to
    the run as begun; a Finish or Fail when the agent is done. Raises BudgetExceeded past the
    run's max_steps and DeadlineExceeded when the agent's choice outlasts the run's time."""
    step = ctx.cursor + 1
    pending = ctx.pending
    if pending is not None and int(pending.get("step", 0)) == step:
        action = decode_action(pending)
        started_ts = float(pending["started_ts"])
        attempt.trace.begin_step(step, resumed=True)
        return _Step(step, action, started_ts)
    ctx.pending = ctx.resume = None
    state = RunState(
        run_id=ctx.run_id,
        tenant=ctx.raw["tenant"],
        agent=ctx.raw["agent"],
        input=ctx.input,
        step=step,
        tool_calls=ctx.budget.used,
        last_result=ctx.last_result,
        memory=ctx.memory,
        remaining_s=ctx.guard.remaining_s(),
        tools=ctx.offered,
    )
    done = ctx.agent.finished(state)
    if done is not None:
        return done
    if ctx.cursor >= ctx.budgets.max_steps:
        raise BudgetExceeded("max_steps")
    # The step has begun. It is written to the run before its action runs, or with the
    # run's end when the action ends the run (or the agent's choice does): one round trip
    # fewer for a run's last step. Either way a resumed step counts once.
    attempt.unwritten_step = step
    attempt.trace.begin_step(step)
    started_ts = time.time()
    with deadline_alarm(ctx.guard.deadline_ts):
        chosen = ctx.agent.next_action(state)
    if isinstance(chosen, Finish | Fail):
        return chosen
    if not isinstance(chosen, CallTool | CallModel | Sleep):
        raise TypeError(f"agent returned {type(chosen).__name__}, not an action")
    written = time.time()
    deps.store.begin_step(ctx.run_id, step)
    attempt.unwritten_step = None
    started_ts += time.time() - written  # duration_ms stays the agent's choice + the action
    return _Step(step, chosen, started_ts)


def _end(deps: LoopDeps, attempt: _Attempt, end: Finish | Fail) -> str:
    """End the run as the agent chose: succeeded with its output, or failed with its error."""
    if isinstance(end, Finish):
        _finish(deps, attempt, SUCCEEDED, "finish", output=end.output)
        return SUCCEEDED
    message = redact_text(str(end.message))[:ERROR_MESSAGE_MAX]
    _finish(deps, attempt, FAILED, "error", error={"type": end.type, "message": message})
    return FAILED


def _perform(
    ctx: RunContext, step: _Step, deps: LoopDeps, attempt: _Attempt
) -> tuple[Any, dict[str, Any]] | None:
    """Run the step's action (or go on with it where its park left it): the result the agent
    sees next and the step's entry for the step log; None when the run parked instead (the
    park script released the lease: this execution ends)."""
    act = _ACT[type(step.action)]
    while True:
        entry: dict[str, Any] = {"step": step.number, "action": _ACTION_NAMES[type(step.action)]}
        try:
            return act(ctx, step.number, step.action, entry, deps), entry
        except Park as park:
            held = attempt.held
            parked = _park(ctx, held.token, park, step, deps)
            if parked is ParkVerdict.PARKED:
                held.released = True  # the park script released the lease
                attempt.trace.parked(_ACTION_NAMES[type(step.action)])
                return None
            ctx.resume = park.wait  # the reply came as the run was parking: go on here


def _checkpoint(
    ctx: RunContext, step: _Step, result: Any, entry: dict[str, Any], deps: LoopDeps, attempt: _Attempt
) -> tuple[str | None, str | None] | None:
    """Log the step and write the loop's position after it (one transaction); returns the run's
    switches and cancel flag for the next step's check, read in the same round trip."""
    entry["duration_ms"] = round((time.time() - step.started_ts) * 1000, 1)
    action = step.action
    outcome_name = "ok" if entry.get("ok", True) else entry.get("error_type")
    if isinstance(action, CallTool):  # one line per step: the call, with the gateway's decision
        log.info(
            "tool call", step=step.number, tool=action.tool, outcome=outcome_name,
            duration_ms=entry["duration_ms"], decision=entry["decision"].get("reason"),
        )  # fmt: skip
    else:
        log.info(
            "step", step=step.number, action=entry["action"], tool=entry.get("tool"), outcome=outcome_name,
            duration_ms=entry["duration_ms"],
        )  # fmt: skip
    ctx.cursor = step.number
    ctx.last_result = result
    ctx.pending = ctx.resume = None
    switches = deps.store.checkpoint(
        ctx.run_id,
        cursor=ctx.cursor,
        memory=ctx.memory,
        last_result=result,
        step_entry=entry,
        agent=ctx.raw["agent"],
        read=ctx.guard.switch_keys,  # the next step's check, in the same round trip
    )
    prefetched = ctx.guard.read(switches) if switches is not None else None
    attempt.trace.end_step(entry)
    return prefetched


def _sleep(ctx: RunContext, step: int, action: Sleep, entry: dict[str, Any], deps: LoopDeps) -> Any:
    """A Sleep step: a pause of the run (parked when it is long), checked like any wait."""
    if ctx.resume is None:
        ctx.guard.pause(max(0.0, float(action.seconds)), {"kind": "sleep", "at": "sleep"})
    else:
        ctx.guard.resume_pause(ctx.resume)
    return None


def _call_tool(ctx: RunContext, step: int, action: CallTool, entry: dict[str, Any], deps: LoopDeps) -> Any:
    """A tool call through the gateway; the entry keeps the gateway's decision."""
    outcome = ctx.gateway.call(f"{ctx.run_id}:{step}:0", action.tool, dict(action.args), resume=ctx.resume)
    entry["tool"] = action.tool
    entry["decision"] = outcome.decision
    if outcome.approval is not None:  # who decided, when, and the comment
        entry["approval"] = outcome.approval
    return _result(outcome.result, entry)


def _call_model_step(
    ctx: RunContext, step: int, action: CallModel, entry: dict[str, Any], deps: LoopDeps
) -> Any:
    """A model call through the gateway; the entry keeps the model, tokens and cost."""
    result = _call_model(f"{ctx.run_id}:{step}:0", action, ctx.budgets, ctx.gateway, deps, ctx.resume)
    entry["tool"] = MODEL_TOOL
    entry.update(model_usage(action, result))
    return _result(result, entry)


def _result(result: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A call's result, its outcome noted in the step's entry."""
    entry["ok"] = bool(result.get("ok"))
    if not entry["ok"]:
        entry["error_type"] = (result.get("error") or {}).get("type")
    return result


# How each kind of action is performed: (context, step, action, the step's entry, deps) -> the
# result the agent sees next. Raises Park to wait without a process.
_ACT: dict[type, Callable[[RunContext, int, Any, dict[str, Any], LoopDeps], Any]] = {
    Sleep: _sleep,
    CallTool: _call_tool,
    CallModel: _call_model_step,
}


def model_usage(action: CallModel, result: dict[str, Any]) -> dict[str, Any]:
    """A model step's model, tokens and cost (USD) for its step-log entry, from the answer's
    usage at the action's prices (the run history's usage per model sums these)."""
    usage = (result.get("result") or {}).get("usage") if result.get("ok") else None
    prompt = int((usage or {}).get("prompt_tokens") or 0)
    completion = int((usage or {}).get("completion_tokens") or 0)
    micro = action.prices.cost_micro(prompt, completion)
    return {"model": action.model, "tokens": prompt + completion, "cost_usd": usd_from_micro(micro)}


def _park(ctx: RunContext, token: str, park: Park, step: _Step, deps: LoopDeps) -> ParkVerdict:
    """Record the wait in the run and end this execution: `PARKED`, or `READY` when the reply it
    would wait for is already there. A cancel or a lost lease raise, as a check would."""
    assert deps.timers is not None  # a guard parks only with timers (LoopDeps.timers)
    pending = {**encode_action(step.action), "step": step.number, "started_ts": step.started_ts}
    outcome, detail = deps.timers.park(
        ctx.run_id,
        token,
        tenant=ctx.raw["tenant"],
        agent=ctx.raw["agent"],
        wake_ts=park.wake_ts,
        wait=json.dumps(park.wait),
        pending=json.dumps(pending),
        memory=json.dumps(ctx.memory),
        reply_key=park.reply_key,
    )
    if outcome is ParkVerdict.CANCELLED:
        raise RunStopped(CANCELLED, "cancelled", detail)
    if outcome in (ParkVerdict.LOST, ParkVerdict.ENDED):
        raise LeaseLost()  # another execution holds the run, or it has ended: it reports the end
    return outcome


def run_deadline(raw: dict[str, str], max_seconds: float, now: float | None = None) -> float:
    """When the run's time is up: its first start + max_seconds + the time it waited for humans
    (`paused_s`, and since `approval_since` while it still waits; worker/control/approvals.py)."""
    deadline = float(raw["started_ts"]) + max_seconds + float(raw.get("paused_s") or 0.0)
    if raw.get("approval_since"):
        deadline += max(0.0, (time.time() if now is None else now) - float(raw["approval_since"]))
    return deadline


def encode_action(action: CallTool | CallModel | Sleep) -> dict[str, Any]:
    """A step's action as JSON-safe data, kept in the run while it is parked."""
    return {"type": _ACTION_NAMES[type(action)], **dataclasses.asdict(action)}


def decode_action(data: dict[str, Any]) -> CallTool | CallModel | Sleep:
    """The action `encode_action` wrote."""
    kind = data.get("type")
    if kind == "tool":
        return CallTool(tool=str(data["tool"]), args=dict(data.get("args") or {}))
    if kind == "sleep":
        return Sleep(seconds=float(data["seconds"]))
    if kind == "model":
        return CallModel(
            model=str(data["model"]),
            messages=list(data["messages"]),
            max_tokens=int(data["max_tokens"]),
            prices=Prices(**data["prices"]),
            tools=data.get("tools"),
            temperature=data.get("temperature"),
        )
    raise ValueError(f"a parked step holds no known action: {kind!r}")


def estimate_prompt_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """A deliberately high estimate of a request's prompt tokens (about 3 characters a token)."""
    text = json.dumps(messages) + (json.dumps(tools) if tools else "")
    return len(text) // 3 + 8 * len(messages) + 16


def _call_model(
    call_id: str,
    action: CallModel,
    budgets: Budgets,
    gateway: ToolGateway,
    deps: LoopDeps,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Call the model; the gateway reserves each attempt's worst case from the run's budgets
    first and settles it after (worker/run/spend.py)."""
    prompt = estimate_prompt_tokens(action.messages, action.tools)
    cost = ModelCallCost(
        worst_tokens=prompt + action.max_tokens,
        worst_micro=action.prices.cost_micro(prompt, action.max_tokens),
        prices=action.prices,
        max_tokens=budgets.max_tokens,
        max_cost_usd=budgets.max_cost_usd,
    )
    args: dict[str, Any] = {
        "model": action.model,
        "messages": action.messages,
        "max_tokens": action.max_tokens,
    }
    if action.tools:
        args["tools"] = action.tools
    if action.temperature is not None:
        args["temperature"] = action.temperature
    timeout_s = deps.settings.tools.timeout_s(MODEL_TOOL, llm_config(deps.settings).timeout_ms)
    outcome = gateway.call_model(
        call_id,
        args,
        model=action.model,
        cost=cost,
        timeout_s=timeout_s,
        resume=resume,
    )
    return outcome.result


@lru_cache(maxsize=256)
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(by_alias=True)


def offered_tools(settings: Settings, policy: Policy) -> list[dict[str, Any]]:
    """The tools a run may call, as OpenAI-style function specs with their argument schemas."""
    names = [n for n in settings.tools.allowlist if n != MODEL_TOOL]
    if policy.allowed_tools is not None:
        names = [n for n in names if n in policy.allowed_tools]
    specs = []
    for name in names:
        spec = get_tool(name)
        if spec is not None:
            schema = copy.deepcopy(_schema(spec.args_model))  # agents may change theirs
            specs.append({"name": name, "description": spec.description, "parameters": schema})
    return specs


def _is_soft_time_limit(exc: BaseException) -> bool:
    # Celery's SoftTimeLimitExceeded, matched by name so this module imports no Celery.
    return type(exc).__name__ == "SoftTimeLimitExceeded"


@contextmanager
def deadline_alarm(deadline_ts: float) -> Iterator[None]:
    """Raise DeadlineExceeded into the code in this block at `deadline_ts` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    remaining = deadline_ts - time.time()
    if remaining <= 0:
        raise DeadlineExceeded()

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise DeadlineExceeded()

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, remaining)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _watchdog(record: Callable[[], None], hard_stop: Callable[[], None]) -> Callable[[], None]:
    """Backs the alarm: called by the keeper if the run is still executing at its deadline plus
    WATCHDOG_GRACE_S, it records max_seconds and ends the process.

    Agent code that swallows DeadlineExceeded, or blocks in a call that releases the GIL, is
    ended here within WATCHDOG_GRACE_S of the deadline; Celery's hard time limit backs this up
    for code that holds the GIL.
    """

    def fire() -> None:
        try:
            record()
        finally:
            hard_stop()

    return fire


def exit_process() -> None:
    """The hard stop of a worker child: the pool sees it die, requeues the message, forks anew."""
    os._exit(75)
