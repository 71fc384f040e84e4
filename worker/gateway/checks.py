"""The gateway's checks before an attempt of a tool call in one Lua script, and its bookkeeping
after the attempt in another: one round trip on each side of the subtask.

Each concern keeps its Lua in its own module (killswitch.py, policy.py, budget.py,
retrybudget.py, ratelimit.py, breaker.py). `ADMISSION` below declares the gateway's order, one
`Check` per step, and the admission script is generated from it: each check runs only at the
stages and for the kinds of call it names, and the first that answers decides, so a call costs
one round trip before it is sent instead of one per check. The README's "Tools and the tool
gateway" quotes this list; `admission_order()` prints it.

`stage` picks the part to run: `admit` (a call's first attempt), `retry` (after a backoff) or
`go` (after waiting for a reserved rate-limit slot). The script's arguments are one JSON table
(`AdmissionRequest.script_args`), read by name; its answer becomes an `Answer` whose `verdict`
is a `Verdict`.

After the attempt, `Admitter.settle` reports its outcome to the breaker and, when the call is
over, records its result (a resumed run replays it) and counts it in the tools' stats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import redis

from worker import lua
from worker.gateway.breaker import BreakerPolicy
from worker.gateway.ratelimit import Rate
from worker.gateway.retrybudget import RetryPolicy
from worker.units import MICRO

if TYPE_CHECKING:
    from worker.publish import Outgoing

# KEYS: 1-3 the run's switches (all, tenant, agent), 4 the run's cancel flag, 5-6 the tool's
# switches (killswitch.tool_switch_keys: the tool's, then `writes` or `llm:<model>`; 6 is read only
# when `second_switch`), 7 the agent's policy, 8-10 its quota keys (actions, today's spend, the
# call's decision), 11 the run's hash, 12 the call's hash, 13 the tool's retry budget, 14 its
# breaker, 15 the tools' stats hash, 16.. one rate-limit key per limit (`a.limits`, in order), then,
# when `a.send`, the attempt's queue.
# ARGV[1]: the request as a JSON table (AdmissionRequest.script_args), read as `a`; ARGV[2], when
# `a.send`: the attempt's task message, which go.lua pushes on that queue (admitted and sent in one
# round trip).
# Returns {verdict, quota decision ('' without quota), max actions, max spend micro, used, d1, d2,
# the approval's decision (JSON) when the call needed one and it was approved, else ''}.
_PRELUDE = lua.load("worker/gateway/admit/prelude.lua")

_GO = lua.load("worker/gateway/admit/go.lua")

ALL_STAGES = frozenset({"admit", "retry", "go"})


@dataclass(frozen=True)
class Check:
    """One step of the admission script: `lua` runs when the stage is in `stages` and the call's
    kind in `kinds`; it may `return answer(verdict, d1, d2)` to decide the call."""

    name: str
    what: str  # one line, as the README quotes it
    lua: str
    stages: frozenset[str] = ALL_STAGES
    kinds: frozenset[str] = frozenset({"tool", "model"})

    def guarded(self) -> str:
        conditions = []
        if self.stages != ALL_STAGES:
            conditions.append("(" + " or ".join(f"stage == '{s}'" for s in sorted(self.stages)) + ")")
        if self.kinds != frozenset({"tool", "model"}):
            conditions.append("(" + " or ".join(f"kind == '{k}'" for k in sorted(self.kinds)) + ")")
        body = f"-- {self.name}: {self.what}\n{self.lua.strip()}\n"
        if not conditions:
            return f"do\n{body}end\n"
        return f"if {' and '.join(conditions)} then\n{body}end\n"


def _admit_lua(name: str) -> str:
    """A check's Lua, from worker/gateway/admit/<name>.lua."""
    return lua.load(f"worker/gateway/admit/{name}.lua")


ADMIT = frozenset({"admit"})
TOOL = frozenset({"tool"})

# The gateway's order. A check that answers ends the script; `go` marks the attempt at the end.
ADMISSION: tuple[Check, ...] = (
    Check(
        "run switches",
        "the run's kill switches, then its cancel flag: the run stops",
        _admit_lua("run_switches"),
    ),
    Check(
        "tool switches",
        "the tool's switch (and `writes` or `llm:<model>`): `killed`",
        _admit_lua("tool_switches"),
    ),
    Check(
        "model record",
        "a model call an earlier attempt finished: its recorded answer",
        _admit_lua("model_record"),
        stages=ADMIT,
        kinds=frozenset({"model"}),
    ),
    Check(
        "allowlist",
        "the fleet's allowlist (decided in Python)",
        _admit_lua("allowlist"),
        stages=ADMIT,
        kinds=TOOL,
    ),
    Check(
        "policy",
        "the agent's `allowed_tools`",
        _admit_lua("policy"),
        stages=ADMIT,
        kinds=TOOL,
    ),
    Check(
        "arguments",
        "an unknown tool or bad arguments (decided in Python)",
        _admit_lua("arguments"),
        stages=ADMIT,
        kinds=TOOL,
    ),
    Check(
        "approval",
        "a tool that needs a human's approval: `approval` until the call's decision is `approve`",
        _admit_lua("approval"),
        stages=ADMIT,
        kinds=TOOL,
    ),
    Check(
        "quota",
        "the agent's quotas, reserved once per call id",
        _admit_lua("quota"),
        stages=ADMIT,
        kinds=TOOL,
    ),
    Check(
        "tool-call budget",
        "the run's `max_tool_calls` (a quota reservation is given back), or a recorded result",
        _admit_lua("tool_call_budget"),
        stages=ADMIT,
        kinds=TOOL,
    ),
    Check(
        "retry budget",
        "the tool's retry budget counts the call",
        _admit_lua("retry_budget"),
        stages=ADMIT,
    ),
    Check(
        "rate limits",
        "a slot of each rate limit within the run's remaining time (`wait`), or `rate_limited`",
        _admit_lua("rate_limits"),
        stages=frozenset({"admit", "retry"}),
    ),
    Check(
        "breaker",
        "the tool's (or model's) circuit breaker: `circuit_open`",
        _admit_lua("breaker"),
    ),
)


def admission_order() -> list[str]:
    """The checks in the gateway's order, one line each, with when each runs (the README quotes
    these lines; a test keeps them equal)."""
    lines = []
    for n, check in enumerate(ADMISSION, 1):
        when = {
            ALL_STAGES: "every attempt",
            ADMIT: "a call's first attempt",
            frozenset({"admit", "retry"}): "every attempt but the send after a wait",
        }[check.stages]
        if check.kinds != frozenset({"tool", "model"}):
            when += f", {'/'.join(sorted(check.kinds))} calls only"
        lines.append(f"{n}. {check.name} ({when}): {check.what}")
    return lines


# The prelude includes each concern's Lua functions (killswitch, policy, budget, retry budget,
# rate limit, breaker), then every check in ADMISSION's order, then go.lua.
SCRIPT = _PRELUDE + "".join(check.guarded() for check in ADMISSION) + _GO

SETTLE_SCRIPT = lua.load("worker/gateway/settle.lua")  # Admitter.settle


@dataclass(frozen=True)
class LimitSlot:
    """One rate limit a call takes a slot of: its key, rate and units."""

    key: str
    rate: Rate
    cost: int = 1


@dataclass(frozen=True)
class CallKeys:
    """The Redis keys one call's admission reads and writes."""

    run_switches: list[str]  # all, tenant, agent
    cancel: str
    tool_switch: str
    writes_switch: str  # the second tool switch: `writes`, or a model call's `llm:<model>`
    policy: str
    quota: list[str]  # actions, today's spend, the call's decision
    run: str
    call: str
    retry_budget: str
    breaker: str
    stats: str
    second_switch: bool = False  # whether the call reads `writes_switch`


class Verdict(StrEnum):
    """What the admission script decided (the first check that answered, else `go`)."""

    GO = "go"  # send the attempt
    STOP = "stop"  # the run's switch or cancel: the run ends (`stop_kind`, `stop_value`)
    KILLED = "killed"  # the tool's switch (`reason`)
    DENIED = "denied"  # allowlist, policy, unknown or invalid (`reason`)
    APPROVAL = "approval"  # waits for a human (`decided`: the decision's JSON, or '' if none yet)
    QUOTA = "quota"  # the agent's quota refused (`quota`)
    BUDGET = "budget"  # the run's max_tool_calls is spent
    RECORDED = "recorded"  # an earlier attempt's result (`recorded`)
    RATE_LIMITED = "rate_limited"  # no slot within the run's time (`wait_s`, `limit_index`)
    WAIT = "wait"  # a slot is reserved `wait_s` ahead
    CIRCUIT_OPEN = "circuit_open"  # the breaker (`breaker_state`, `retry_in_s`)


@dataclass(frozen=True)
class Answer:
    """What the script decided; `quota` is the reservation's 'verdict|actions|spent' or ''. The
    script's two detail strings are read through the properties that name them per verdict."""

    verdict: Verdict
    quota: str
    max_actions: int | None
    max_spend_usd: float | None
    used: int
    detail: str
    detail2: str
    approval: str = ""  # the human's decision (JSON) on a call that needed approval and got it
    sent: bool = False  # `go` with the request's `send`: the script pushed the attempt's message

    @property
    def reason(self) -> str:
        """`killed`: the switch's reason; `denied`: allowlist, policy, unknown or invalid."""
        return self.detail

    @property
    def stop_kind(self) -> str:
        """`stop`: `killed` or `cancelled`."""
        return self.detail

    @property
    def stop_value(self) -> str:
        """`stop`: the switch's reason or the cancel flag's value."""
        return self.detail2

    @property
    def recorded(self) -> str:
        """`recorded`: the call's result (JSON)."""
        return self.detail

    @property
    def decided(self) -> str:
        """`approval`: the call's decision (JSON), '' while none was made."""
        return self.detail

    @property
    def wait_s(self) -> float:
        """For `wait` and `rate_limited`: how far the slot is."""
        return math.ceil(float(self.detail)) / 1000.0

    @property
    def limit_index(self) -> int:
        """`rate_limited`: which of the call's limits had no slot."""
        return int(self.detail2)

    @property
    def breaker_state(self) -> str:
        """`circuit_open`: the breaker's state."""
        return self.detail

    @property
    def retry_in_s(self) -> float:
        """`circuit_open`: when the breaker lets a probe through."""
        return int(self.detail2) / 1000.0


@dataclass(frozen=True)
class AdmissionRequest:
    """One run of the admission script for a call: its `stage` (`admit`, `retry` or `go`), its
    keys, the Python verdict ('', 'allowlist', 'unknown', 'invalid'), what it may cost and use up,
    the policies its retries and breaker follow, and the rate limits it takes a slot of."""

    stage: str
    keys: CallKeys
    local_verdict: str
    tool: str
    call_id: str
    cost_micro: int
    max_tool_calls: int
    call_ttl_s: int  # the call record's
    decision_ttl_s: int  # the quota decision's
    retry: RetryPolicy
    breaker: BreakerPolicy
    remaining_s: float  # the run's time left
    attempt: int
    wait_stat: str  # the stats field a rate-limit wait counts in
    limits: list[LimitSlot]
    kind: str = "tool"  # or `model`: no allowlist, policy, quota or tool-call budget at admission
    approval: bool = False  # the fleet's config makes the tool need a human's approval
    send: Outgoing | None = None  # the attempt's message, pushed by the script if it answers `go`

    def script_keys(self) -> list[str]:
        """The script's KEYS, in the order the script's header gives."""
        keys = self.keys
        return [
            *keys.run_switches,
            keys.cancel,
            keys.tool_switch,
            keys.writes_switch,
            keys.policy,
            *keys.quota,
            keys.run,
            keys.call,
            keys.retry_budget,
            keys.breaker,
            keys.stats,
            *(limit.key for limit in self.limits),
            *((self.send.queue,) if self.send is not None else ()),
        ]

    def script_args(self) -> list[Any]:
        """The script's ARGV: one JSON table, read by name (`a.stage`, `a.limits[i].burst`...); the
        second tool switch is read when the keys say so (`CallKeys.second_switch`)."""
        retry, breaker = self.retry, self.breaker
        return [
            lua.named(
                stage=self.stage,
                verdict=self.local_verdict,
                tool=self.tool,
                second_switch=self.keys.second_switch,
                call_id=self.call_id,
                cost_micro=self.cost_micro,
                max_tool_calls=self.max_tool_calls,
                call_ttl_s=self.call_ttl_s,
                decision_ttl_s=self.decision_ttl_s,
                retry={
                    "ratio": retry.ratio,
                    "min_retries": retry.min_retries,
                    "window_ms": int(retry.window_s * 1000),
                },
                breaker={
                    "cooldown_ms": int(breaker.cooldown_s * 1000),
                    "probe_ms": int(breaker.probe_timeout_s * 1000),
                },
                remaining_ms=max(0.0, self.remaining_s) * 1000.0,
                attempt=self.attempt,
                wait_stat=self.wait_stat,
                kind=self.kind,
                approval=self.approval,
                limits=[
                    {"interval_ms": lim.rate.interval_ms, "burst": lim.rate.burst, "cost": max(1, lim.cost)}
                    for lim in self.limits
                ],
                send=self.send is not None,
            ),
            *((self.send.message,) if self.send is not None else ()),
        ]


class Admitter:
    """Runs the admission script."""

    def __init__(self, r: redis.Redis) -> None:
        self._script = r.register_script(SCRIPT)
        self._settle = r.register_script(SETTLE_SCRIPT)

    def __call__(self, request: AdmissionRequest) -> Answer:
        """Run the script for `request`, in one round trip."""
        script_keys, args = request.script_keys(), request.script_args()
        verdict, quota, max_a, max_s, used, d1, d2, approved = self._script(keys=script_keys, args=args)
        parsed = Verdict(str(verdict))
        return Answer(
            verdict=parsed,
            quota=str(quota),
            max_actions=None if int(max_a) < 0 else int(max_a),
            max_spend_usd=None if int(max_s) < 0 else int(max_s) / MICRO,
            used=int(used),
            detail=str(d1),
            detail2=str(d2),
            approval=str(approved),
            sent=parsed is Verdict.GO and request.send is not None,
        )

    def settle(
        self,
        keys: CallKeys,
        *,
        ok: bool,
        breaker: BreakerPolicy,
        final_result: str | None,
        call_ttl_s: int,
        stats_field: str,
        unheard_attempt: int | None = None,
        untaken_result: str | None = None,
    ) -> tuple[str, str, str | None, bool]:
        """Report an attempt's outcome to the breaker; with `final_result` (JSON), also record the
        call's result and count it, unless a result is recorded already (the tool worker's, just
        before a timeout here): that one is returned, and stands. `unheard_attempt`: the attempt
        when no reply came for it; if no tool worker took it, the breaker is not told and
        `untaken_result` (JSON) is recorded instead of `final_result`, when final. Returns the
        breaker's states before and after, that recorded result, and whether a tool worker took
        the attempt (always true without `unheard_attempt`)."""
        before, after, existing, taken = self._settle(
            keys=[keys.call, keys.breaker, keys.stats],
            args=[
                lua.named(
                    ok=ok,
                    breaker=breaker.record_fields(),
                    final=final_result is not None,
                    call_ttl_s=call_ttl_s,
                    stats_field=stats_field,
                    unheard_attempt="" if unheard_attempt is None else str(unheard_attempt),
                ),
                final_result or "",
                untaken_result or "",
            ],
        )
        return str(before), str(after), (str(existing) if existing else None), bool(taken)
