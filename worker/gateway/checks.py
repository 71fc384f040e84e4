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

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
import redis.asyncio
from redis.commands.core import AsyncScript

from worker.breaker import LUA_ALLOW, LUA_RECORD, BreakerPolicy
from worker.budget import LUA_RESERVE as LUA_BUDGET
from worker.histograms import LUA_OBSERVE
from worker.killswitch import LUA_KILL_REASON
from worker.policy import LUA_POLICY, LUA_REFUND, LUA_RESERVE
from worker.ratelimit import LUA_GCRA, LUA_NOW, Rate
from worker.retrybudget import LUA_SPEND, RetryPolicy
from worker.units import MICRO

# KEYS: 1-3 the run's switches (all, tenant, agent), 4 the run's cancel flag, 5-6 the tool's
# switches (killswitch.tool_switch_keys: the tool's, then `writes` or `llm:<model>`; 6 is read only
# when `second_switch`), 7 the agent's policy, 8-10 its quota keys (actions, today's spend, the
# call's decision), 11 the run's hash, 12 the call's hash, 13 the tool's retry budget, 14 its
# breaker, 15 the tools' stats hash, 16.. one rate-limit key per limit (`a.limits`, in order).
# ARGV[1]: the request as a JSON table (AdmissionRequest.script_args), read as `a`.
# Returns {verdict, quota decision ('' without quota), max actions, max spend micro, used, d1, d2,
# the approval's decision (JSON) when the call needed one and it was approved, else ''}.
_PRELUDE = """
local a = cjson.decode(ARGV[1])
local stage, kind = a.stage, a.kind
local now = now_ms()
local now_int = math.floor(now)
local approved = ''  -- the human's decision, once the call has passed its approval
local quota, max_a, max_s, used = '', -1, -1, 0
local function answer(verdict, d1, d2)
  return {verdict, quota, max_a, max_s, used, d1 or '', d2 or '', approved}
end
"""

_GO = """
redis.call('HSET', KEYS[12], 'attempt', a.attempt)
redis.call('EXPIRE', KEYS[12], a.call_ttl_s)
return answer('go')
"""

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


ADMIT = frozenset({"admit"})
TOOL = frozenset({"tool"})

# The gateway's order. A check that answers ends the script; `go` marks the attempt at the end.
ADMISSION: tuple[Check, ...] = (
    Check(
        "run switches",
        "the run's kill switches, then its cancel flag: the run stops",
        """
local run_switch = kill_reason({KEYS[1], KEYS[2], KEYS[3]})
if run_switch then return answer('stop', 'killed', run_switch) end
local cancel = redis.call('GET', KEYS[4])
if cancel then return answer('stop', 'cancelled', cancel) end
""",
    ),
    Check(
        "tool switches",
        "the tool's switch (and `writes` or `llm:<model>`): `killed`",
        """
local tool_switches = {KEYS[5]}
if a.second_switch then tool_switches[2] = KEYS[6] end
local tool_switch = kill_reason(tool_switches)
if tool_switch then return answer('killed', tool_switch) end
""",
    ),
    Check(
        "model record",
        "a model call an earlier attempt finished: its recorded answer",
        """
local recorded = redis.call('HGET', KEYS[12], 'result')
if recorded then return answer('recorded', recorded) end
""",
        stages=ADMIT,
        kinds=frozenset({"model"}),
    ),
    Check(
        "allowlist",
        "the fleet's allowlist (decided in Python)",
        "if a.verdict == 'allowlist' then return answer('denied', 'allowlist') end",
        stages=ADMIT,
        kinds=TOOL,
    ),
    Check(
        "policy",
        "the agent's `allowed_tools`",
        """
local tools
tools, max_a, max_s, a.approve_tools = policy_read(KEYS[7])
if tools and not tools[a.tool] then return answer('denied', 'policy') end
""",
        stages=ADMIT,
        kinds=TOOL,
    ),
    Check(
        "arguments",
        "an unknown tool or bad arguments (decided in Python)",
        "if a.verdict ~= '' then return answer('denied', a.verdict) end",
        stages=ADMIT,
        kinds=TOOL,
    ),
    Check(
        "approval",
        "a tool that needs a human's approval: `approval` until the call's decision is `approve`",
        """
if a.approval or (a.approve_tools and a.approve_tools[a.tool]) then
  local decided = redis.call('HGET', KEYS[11], 'approval:' .. a.call_id)
  local ok, d = false, nil
  if decided then ok, d = pcall(cjson.decode, decided) end
  if not (ok and type(d) == 'table' and d['decision'] == 'approve') then
    return answer('approval', decided or '')
  end
  approved = decided
end
""",
        stages=ADMIT,
        kinds=TOOL,
    ),
    Check(
        "quota",
        "the agent's quotas, reserved once per call id",
        """
if max_a >= 0 or max_s >= 0 then
  quota = quota_reserve(KEYS[8], KEYS[9], KEYS[10], a.call_id, max_a, max_s, a.cost_micro,
                        a.decision_ttl_s, now_int)
  if string.sub(quota, 1, 7) ~= 'allowed' then return answer('quota') end
end
""",
        stages=ADMIT,
        kinds=TOOL,
    ),
    Check(
        "tool-call budget",
        "the run's `max_tool_calls` (a quota reservation is given back), or a recorded result",
        """
local counted, recorded
counted, used, recorded = budget_reserve(KEYS[11], KEYS[12], a.max_tool_calls, a.call_ttl_s)
if counted == 0 then
  if quota ~= '' then quota_refund(KEYS[8], KEYS[9], KEYS[10], a.call_id, a.cost_micro) end
  return answer('budget')
end
if recorded then return answer('recorded', recorded) end
""",
        stages=ADMIT,
        kinds=TOOL,
    ),
    Check(
        "retry budget",
        "the tool's retry budget counts the call",
        "retry_budget(KEYS[13], 'call', a.retry.ratio, a.retry.min_retries, a.retry.window_ms, now_int)",
        stages=ADMIT,
    ),
    Check(
        "rate limits",
        "a slot of each rate limit within the run's remaining time (`wait`), or `rate_limited`",
        """
local wait = 0
for i, limit in ipairs(a.limits) do
  local allowed, w = gcra(KEYS[15 + i], limit.interval_ms, limit.burst, a.remaining_ms, limit.cost, now)
  if allowed == 0 then return answer('rate_limited', tostring(w), i - 1) end
  if w > wait then wait = w end
end
if wait > 0 then
  redis.call('HINCRBY', KEYS[15], a.wait_stat, 1)
  return answer('wait', tostring(wait))
end
""",
        stages=frozenset({"admit", "retry"}),
    ),
    Check(
        "breaker",
        "the tool's (or model's) circuit breaker: `circuit_open`",
        """
local allowed, state, retry_ms = breaker_allow(KEYS[14], a.breaker.cooldown_ms, a.breaker.probe_ms, now_int)
if allowed == 0 then return answer('circuit_open', state, retry_ms) end
""",
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


SCRIPT = (
    LUA_KILL_REASON
    + LUA_NOW
    + LUA_POLICY
    + LUA_RESERVE
    + LUA_REFUND
    + LUA_BUDGET
    + LUA_SPEND
    + LUA_GCRA
    + LUA_ALLOW
    + _PRELUDE
    + "".join(check.guarded() for check in ADMISSION)
    + _GO
)

# settle(call_key, breaker_key, stats_key, guard_attempt, ok, threshold, rate, min_calls, window_ms,
# final, result, ttl_s, stats_field, report) -> settled (0/1), breaker before, after, the call's
# result if it was already recorded. With `guard_attempt` (the tool worker's side) nothing happens
# unless that attempt is still the call's current one and the call has no result yet: the agent
# may have moved on (a retry) or given up (a timeout), and then it does the bookkeeping itself.
# `report` false leaves the breaker alone (before and after are then '').
LUA_SETTLE = """
local function settle(k_call, k_breaker, k_stats, guard_attempt, ok, threshold, rate, min_calls, window,
                      final, result, ttl, stats_field, report)
  if guard_attempt ~= '' then
    if redis.call('HGET', k_call, 'attempt') ~= guard_attempt then return 0, '', '', false end
    if redis.call('HEXISTS', k_call, 'result') == 1 then return 0, '', '', false end
  end
  local before, after = '', ''
  if report then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    before, after = breaker_record(k_breaker, ok, threshold, rate, min_calls, window, now)
  end
  if final then
    local existing = redis.call('HGET', k_call, 'result')
    if existing then return 1, before, after, existing end
    redis.call('HSET', k_call, 'state', 'done', 'result', result)
    redis.call('EXPIRE', k_call, ttl)
    redis.call('HINCRBY', k_stats, stats_field, 1)
  end
  return 1, before, after, false
end
"""

# KEYS: 1 the call's hash, 2 the breaker, 3 the tools' stats hash. ARGV: 1 ok (1/0), 2-5 the
# breaker's threshold, rate, min calls, window ms; 6 final (1/0), 7 the result, 8 its TTL,
# 9 the stats field, 10 the attempt when no reply came for it ('' otherwise), 11 the result to
# record instead of 7 if no tool worker took that attempt. An attempt no tool worker took (the
# call's `taken`, set by the tool worker's checks) timed out in the fleet's own queue: the
# dependency was never asked, so the breaker does not count it. Returns the breaker's states
# before and after, a result recorded already, and whether a tool worker took the attempt.
_SETTLE = """
local taken = ARGV[10] == '' or redis.call('HGET', KEYS[1], 'taken') == ARGV[10]
local result = ARGV[7]
if not taken then result = ARGV[11] end
local _, before, after, existing = settle(KEYS[1], KEYS[2], KEYS[3], '', ARGV[1] == '1', tonumber(ARGV[2]),
                                          tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
                                          ARGV[6] == '1', result, ARGV[8], ARGV[9], taken)
return {before, after, existing, taken and 1 or 0}
"""

# The tool worker's reply. KEYS: 1 the reply list, 2-4 as _SETTLE, 5 the run's hash, 6 the timers
# zset, 7 the schedulers' bell, 8 the tool's slots (toolslots.py). ARGV: 1 the envelope (JSON),
# 2 the reply's TTL, 3 the attempt, 4 settle here (1/0: only when this attempt ran the tool), 5-10
# as _SETTLE's 1-6, 11-12 as its 8-9 (the result is the envelope), 13 the run id, 14 the slot's
# member ('' when the attempt took none), 15 the series of the attempt's duration in the histogram
# KEYS[9] ('' for none: the tool did not run, or histograms are off), 16 that duration (s). The reply
# says whether the bookkeeping is done.
# A run parked on this reply (worker/run/timers.py) is made due and the bell rung: a scheduler resumes
# it at once. The attempt's slot is given back in the same trip.
_REPLY = """
local settled, before, after = 0, '', ''
if ARGV[4] == '1' then
  settled, before, after = settle(KEYS[2], KEYS[3], KEYS[4], ARGV[3], ARGV[5] == '1', tonumber(ARGV[6]),
                                  tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]),
                                  ARGV[10] == '1', ARGV[1], ARGV[11], ARGV[12], true)
end
redis.call('RPUSH', KEYS[1], '{"settled": ' .. (settled == 1 and 'true' or 'false') .. ', "envelope": ' ..
           ARGV[1] .. '}')
redis.call('EXPIRE', KEYS[1], ARGV[2])
local park = redis.call('HMGET', KEYS[5], 'parked', 'wait_reply')
if park[1] == '1' and park[2] == KEYS[1] then
  redis.call('ZADD', KEYS[6], 'XX', 0, ARGV[13])
  redis.call('LPUSH', KEYS[7], ARGV[13])
  redis.call('LTRIM', KEYS[7], 0, 63)
end
if ARGV[14] ~= '' then redis.call('ZREM', KEYS[8], ARGV[14]) end
if ARGV[15] ~= '' then observe(KEYS[9], ARGV[15], tonumber(ARGV[16])) end
return {settled, before, after}
"""

SETTLE_SCRIPT = LUA_RECORD + LUA_SETTLE + _SETTLE
REPLY_SCRIPT = LUA_RECORD + LUA_SETTLE + LUA_OBSERVE + _REPLY


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
        ]

    def script_args(self) -> list[Any]:
        """The script's ARGV: one JSON table, read by name (`a.stage`, `a.limits[i].burst`...); the
        second tool switch is read when the keys say so (`CallKeys.second_switch`)."""
        retry, breaker = self.retry, self.breaker
        table = {
            "stage": self.stage,
            "verdict": self.local_verdict,
            "tool": self.tool,
            "second_switch": self.keys.second_switch,
            "call_id": self.call_id,
            "cost_micro": self.cost_micro,
            "max_tool_calls": self.max_tool_calls,
            "call_ttl_s": self.call_ttl_s,
            "decision_ttl_s": self.decision_ttl_s,
            "retry": {
                "ratio": retry.ratio,
                "min_retries": retry.min_retries,
                "window_ms": int(retry.window_s * 1000),
            },
            "breaker": {
                "cooldown_ms": int(breaker.cooldown_s * 1000),
                "probe_ms": int(breaker.probe_timeout_s * 1000),
            },
            "remaining_ms": max(0.0, self.remaining_s) * 1000.0,
            "attempt": self.attempt,
            "wait_stat": self.wait_stat,
            "kind": self.kind,
            "approval": self.approval,
            "limits": [
                {"interval_ms": limit.rate.interval_ms, "burst": limit.rate.burst, "cost": max(1, limit.cost)}
                for limit in self.limits
            ],
        }
        return [json.dumps(table, separators=(",", ":"))]


class Admitter:
    """Runs the admission script."""

    def __init__(self, r: redis.Redis) -> None:
        self._script = r.register_script(SCRIPT)
        self._settle = r.register_script(SETTLE_SCRIPT)

    def __call__(self, request: AdmissionRequest) -> Answer:
        """Run the script for `request`, in one round trip."""
        script_keys, args = request.script_keys(), request.script_args()
        verdict, quota, max_a, max_s, used, d1, d2, approved = self._script(keys=script_keys, args=args)
        return Answer(
            verdict=Verdict(str(verdict)),
            quota=str(quota),
            max_actions=None if int(max_a) < 0 else int(max_a),
            max_spend_usd=None if int(max_s) < 0 else int(max_s) / MICRO,
            used=int(used),
            detail=str(d1),
            detail2=str(d2),
            approval=str(approved),
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
                "1" if ok else "0",
                *_breaker_args(breaker),
                "0" if final_result is None else "1",
                final_result or "",
                call_ttl_s,
                stats_field,
                "" if unheard_attempt is None else unheard_attempt,
                untaken_result or final_result or "",
            ],
        )
        return str(before), str(after), (str(existing) if existing else None), bool(taken)


@dataclass(frozen=True)
class Reply:
    """One attempt's reply, as the reply script takes it: `slot` (the tool's slots key and the
    attempt's member) is given back in the same trip, and `duration` (a histogram's key, the
    series, seconds; worker/histograms.py) observed."""

    reply_key: str
    call_key: str
    breaker_key: str
    stats_key: str
    run_key: str
    timers_key: str
    bell_key: str
    run_id: str
    envelope: str
    reply_ttl_s: int
    attempt: int
    settle: bool
    ok: bool
    breaker: BreakerPolicy
    final: bool
    call_ttl_s: int
    stats_field: str
    slot: tuple[str, str] | None = None
    duration: tuple[str, str, float] | None = None

    def keys_args(self) -> tuple[list[str], list[Any]]:
        """The script's KEYS and ARGV. Without a slot, KEYS[8] is a key the script leaves alone;
        so is KEYS[9] without a duration."""
        slots_key, member = self.slot if self.slot is not None else (self.stats_key, "")
        hist_key, labels, seconds = self.duration if self.duration is not None else (self.stats_key, "", 0.0)
        keys = [
            self.reply_key,
            self.call_key,
            self.breaker_key,
            self.stats_key,
            self.run_key,
            self.timers_key,
            self.bell_key,
            slots_key,
            hist_key,
        ]
        args = [
            self.envelope,
            self.reply_ttl_s,
            self.attempt,
            "1" if self.settle else "0",
            "1" if self.ok else "0",
            *_breaker_args(self.breaker),
            "1" if self.final else "0",
            self.call_ttl_s,
            self.stats_field,
            self.run_id,
            member,
            labels,
            f"{seconds:.6f}",
        ]
        return keys, args


class Replier:
    """The tool worker's side: push an attempt's reply, settling the call when the attempt ran
    the tool (and is still the call's current attempt), so the agent need not. `send` on the
    process's blocking client; `send_async` on the tool loop's asyncio client, so no thread
    stands between a tool's end and its reply."""

    def __init__(self, r: redis.Redis) -> None:
        self._reply = r.register_script(REPLY_SCRIPT)
        self._async: dict[int, AsyncScript] = {}  # by id() of the asyncio client it was made for

    def __call__(
        self,
        *,
        reply_key: str,
        call_key: str,
        breaker_key: str,
        stats_key: str,
        run_key: str,
        timers_key: str,
        bell_key: str,
        run_id: str,
        envelope: str,
        reply_ttl_s: int,
        attempt: int,
        settle: bool,
        ok: bool,
        breaker: BreakerPolicy,
        final: bool,
        call_ttl_s: int,
        stats_field: str,
        slot: tuple[str, str] | None = None,
        duration: tuple[str, str, float] | None = None,
    ) -> tuple[bool, str, str]:
        """`send` of a Reply of these fields."""
        return self.send(
            Reply(
                reply_key=reply_key,
                call_key=call_key,
                breaker_key=breaker_key,
                stats_key=stats_key,
                run_key=run_key,
                timers_key=timers_key,
                bell_key=bell_key,
                run_id=run_id,
                envelope=envelope,
                reply_ttl_s=reply_ttl_s,
                attempt=attempt,
                settle=settle,
                ok=ok,
                breaker=breaker,
                final=final,
                call_ttl_s=call_ttl_s,
                stats_field=stats_field,
                slot=slot,
                duration=duration,
            )
        )

    def send(self, reply: Reply) -> tuple[bool, str, str]:
        """Whether the call was settled here, and the breaker's states before and after."""
        keys, args = reply.keys_args()
        settled, before, after = self._reply(keys=keys, args=args)
        return bool(settled), str(before), str(after)

    async def send_async(self, ar: redis.asyncio.Redis, reply: Reply) -> tuple[bool, str, str]:
        """`send` on an asyncio client."""
        script = self._async.get(id(ar))
        if script is None:
            script = self._async[id(ar)] = ar.register_script(REPLY_SCRIPT)
        keys, args = reply.keys_args()
        settled, before, after = await script(keys=keys, args=args)
        return bool(settled), str(before), str(after)


def _breaker_args(breaker: BreakerPolicy) -> list[Any]:
    return [breaker.failure_threshold, breaker.failure_rate, breaker.min_calls, int(breaker.window_s * 1000)]
