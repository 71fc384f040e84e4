"""How a tool worker executes one attempt of a call: fleet-wide slots, exactly-once writes, the tool.

The executor is async: a tool-worker process runs it on one event loop (worker/gateway/pool.py) and
holds thousands of attempts at once. The checks before a tool run in the thread that hands the
call to the loop (worker/gateway/pool.py); the write claims run in a small thread pool of their
own with the process's blocking client, never on the loop. The reply (`Replier`,
worker/gateway/reply.py) goes out on the loop itself through an asyncio client of the loop's own
(`attach_loop`): the same script as the blocking path, with no thread hop between a tool's end and
the run's reply. Plain tools run in a second pool (`tools.sync_threads`), so a hanging plain tool
cannot hold up replies.

- Right before a tool executes (one round trip, `BeforeTool`, which also takes the slot below):
  a call whose run does not exist is refused (`denied`, logged); one whose run has ended
  (stopped, cancelled) while it waited in the queue, or whose run-level or tool switch is on
  (killswitch.py: the same keys and rule as every other path), answers `killed` and sends
  nothing, nor is an attempt the run has moved on from made. The message names the run's tenant
  and agent (its `owner` header) so the script can name their switches; the script checks them
  against the run's own.
- Slots: at most `tools.max_concurrency.<tool>` attempts of one tool run at once in the whole
  fleet (toolslots.py), so a slow dependency cannot take every tool worker's capacity; an attempt
  over it is `rate_limited` at once and not reported to the breaker (the tool did not run).
- Writes: the first attempt claims the call in Redis before it runs; its result is recorded.
  A later attempt (a retry, a resumed run) gets the recorded result. If the claim is taken but
  no result exists (the earlier attempt hangs or its worker died), an idempotent write (one that
  sends the call id as its idempotency key) runs again, safely; any other write is not run
  again and answers `tool_error`.
- A tool worker that dies mid-call: its Celery message was acked when the call was handed to
  the loop, so Celery does not redeliver it. No reply comes; the run treats the attempt as a
  timeout after its timeout plus `REPLY_GRACE_S` and retries it under the gateway's rules (a
  non-idempotent write is refused by the claim above, a recorded result is replayed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import redis
import redis.asyncio
import structlog

from worker import lua, tools
from worker.control import killswitch
from worker.gateway.breaker import BreakerPolicy
from worker.gateway.calls import REPLY_GRACE_S, REPLY_TTL_S, is_failure, is_final, stats_field
from worker.gateway.reply import Replier, Reply
from worker.gateway.toolslots import ToolSlots, slot_life_ms, slot_member
from worker.keys import Keys
from worker.obs import histograms
from worker.obs.logs import cap_bytes
from worker.obs.tracing import call_span
from worker.redis_conn import write_durably
from worker.run.budget import CALL_RECORD_TTL_S
from worker.run.store import TERMINAL
from worker.settings import Settings
from worker.tools.base import ToolContext, error_result, is_retryable

EXEC_TTL_S = 2 * 86400
REDIS_THREADS = 16  # Redis round trips of one process at once (each well under a millisecond)
REPLY_RETRY_FIRST_S = 0.1  # a round trip that finds Redis down is tried again after this, then doubling
REPLY_RETRY_MAX_S = 1.0
log = structlog.get_logger("agentfleet.tools")
T = TypeVar("T")

# A write's claim: KEYS, the named arguments and the answer are in the script's header. Its answer's
# first part is a ClaimVerdict.
_CLAIM = lua.load("worker/gateway/exec_claim.lua")


class ClaimVerdict(StrEnum):
    """What a write's claim found (exec_claim.lua)."""

    RUN = "run"  # claimed now: this attempt runs the write
    DONE = "done"  # an earlier attempt's result is recorded (the detail)
    CLAIMED = "claimed"  # an earlier attempt claimed the write (the detail: which) and has no result


# The tool worker's checks right before a tool runs, and the attempt's slot, in one trip.
# KEYS: 1 the run's hash, 2 the call's hash, 3 the tool's slots, 4.. the switches
# (killswitch.run_switch_keys for `a.tenant` and `a.agent`, then tool_switch_keys).
# ARGV[1]: a JSON table `a`: tenant, agent (what the sender said; the run's own must match, or the
# switch keys are not the run's), attempt (text, as the call's `attempt`), member (the slot's),
# limit (the tool's), life_ms (the slot's), ended (the statuses of a run that has ended).
# Returns {'norun'}, {'other', tenant, agent} (the run's are not the sender's: call again with
# them), {'ended'}, {'killed', reason}, {'final', result}, {'stale', current attempt}, {'busy'} or
# {'go'}: a BeforeToolVerdict and its details. On 'go' the call's `taken` names the attempt: a tool
# worker has it (the run's side tells a timeout of the tool from one in the queue by it,
# settle.lua).
_BEFORE_TOOL = lua.load("worker/gateway/before_tool.lua")


class BeforeToolVerdict(StrEnum):
    """What the tool worker's checks before a tool decided (before_tool.lua)."""

    GO = "go"  # run the tool: the attempt's slot is taken
    NORUN = "norun"  # the call's run does not exist
    OTHER = "other"  # the sender named another owner than the run's (`owner`): check again
    ENDED = "ended"  # the run has ended
    KILLED = "killed"  # a run-level or tool switch is on (`reason`)
    FINAL = "final"  # the call has a result already (`result`)
    STALE = "stale"  # the run moved on to a later attempt (`current_attempt`)
    BUSY = "busy"  # the tool's slots are all taken


@dataclass(frozen=True)
class BeforeToolAnswer:
    """What the checks decided; the script's details are read through the properties that name
    them per verdict."""

    verdict: BeforeToolVerdict
    detail: str = ""
    detail2: str = ""

    @property
    def owner(self) -> tuple[str, str]:
        """`other`: the run's own tenant and agent."""
        return self.detail, self.detail2

    @property
    def reason(self) -> str:
        """`killed`: the switch's reason."""
        return self.detail

    @property
    def result(self) -> str:
        """`final`: the call's recorded result (JSON)."""
        return self.detail

    @property
    def current_attempt(self) -> str:
        """`stale`: the call's current attempt."""
        return self.detail


class BeforeTool:
    """The tool worker's side, before the tool: the run and its switches, the call, the slot."""

    def __init__(self, r: redis.Redis, ended: frozenset[str]) -> None:
        self._script = r.register_script(_BEFORE_TOOL)
        self._ended = sorted(ended)

    def __call__(
        self,
        *,
        run_key: str,
        call_key: str,
        slots_key: str,
        switch_keys: list[str],
        tenant: str,
        agent: str,
        attempt: int,
        member: str,
        limit: int,
        life_ms: int,
    ) -> BeforeToolAnswer:
        """The script's answer (see _BEFORE_TOOL); ValueError for a verdict it does not give."""
        args = lua.named(
            tenant=tenant,
            agent=agent,
            attempt=str(attempt),
            member=member,
            limit=limit,
            life_ms=life_ms,
            ended=self._ended,
        )
        answer = self._script(keys=[run_key, call_key, slots_key, *switch_keys], args=[args])
        return BeforeToolAnswer(BeforeToolVerdict(str(answer[0])), *(str(part) for part in answer[1:3]))


@dataclass(frozen=True)
class Admitted:
    """What `ToolExecutor.admit` decided: the envelope of an attempt that must not run, or the
    slot it took; `start_by` (monotonic) bounds waiting for a Redis that is down."""

    refused: dict[str, Any] | None
    slot: tuple[str, str] | None
    start_by: float


async def _until(trip: Callable[[], Awaitable[T]], give_up: float) -> T:
    """A Redis round trip that, while Redis is unreachable (a restart), is tried again until
    `give_up` (monotonic: when the run stops waiting for this attempt). A script retried after a
    lost answer may have run twice: the reply is then pushed twice (the run reads the first; the
    settle script records a call's result once), and a write's claim is found taken (an
    idempotent write runs, any other answers `tool_error`: never twice)."""
    pause_s = REPLY_RETRY_FIRST_S
    while True:
        try:
            return await trip()
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() + pause_s > give_up:
                raise
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, REPLY_RETRY_MAX_S)


class ToolExecutor:
    """Executes call attempts in one tool-worker process (`answer_async` on its event loop).

    `answer` and `execute` run one attempt to the end on a loop of their own, for callers without
    one (tests, scripts)."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        settings: Settings,
        sync_pool: concurrent.futures.Executor | None = None,
        async_redis: Callable[[], redis.asyncio.Redis] | None = None,
    ) -> None:
        self.r = r
        self.keys = keys
        self.settings = settings
        self._claim = r.register_script(_CLAIM)
        self._reply = Replier(r)
        self._slots = ToolSlots(r)
        self._before = BeforeTool(r, TERMINAL)
        self._breaker = BreakerPolicy(**settings.tools.breaker.model_dump())
        self._redis_pool = concurrent.futures.ThreadPoolExecutor(REDIS_THREADS, "tool-redis")
        self._sync_pool = sync_pool
        self._models = frozenset(histograms.known_models(settings))
        self._async_redis = async_redis
        self._async_client: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Push replies on `loop` (the tool pool's) through an asyncio client of its own, made by
        the `async_redis` factory given: no hop to a Redis thread between a tool's end and its
        reply. Without a factory, or on another loop, replies take the blocking client."""
        if self._async_redis is not None:
            self._async_client = (loop, self._async_redis())

    async def _redis(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking Redis round trip, off the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._redis_pool, fn, *args)

    def answer(
        self,
        call_id: str,
        attempt: int,
        tool: str,
        args: Any,
        timeout_s: float,
        trace_id: str | None = None,
        owner: tuple[str, str] | None = None,
    ) -> None:
        admitted = self.admit(call_id, attempt, tool, args, timeout_s, owner)
        asyncio.run(
            self._closing(self.answer_async(call_id, attempt, tool, args, timeout_s, trace_id, admitted))
        )

    def execute(
        self, call_id: str, attempt: int, tool: str, args: Any, timeout_s: float
    ) -> tuple[dict[str, Any], bool]:
        return asyncio.run(self._closing(self.execute_async(call_id, attempt, tool, args, timeout_s)))

    @staticmethod
    async def _closing(work: Awaitable[T]) -> T:
        from worker.tools.http_client import close_shared_client

        try:
            return await work
        finally:
            await close_shared_client()

    async def answer_async(
        self,
        call_id: str,
        attempt: int,
        tool: str,
        args: Any,
        timeout_s: float,
        trace_id: str | None = None,
        admitted: Admitted | None = None,
        traceparent: str | None = None,
    ) -> None:
        """Execute one attempt and push its reply for the waiting run (`admitted`: its checks and
        slot, taken already by the caller, off the loop: see `admit`). When the tool ran, the same
        script reports the outcome to the breaker and records a final result (the run's side
        would otherwise do it after the reply), so the run moves on as soon as it has the reply.
        The call's slot (tools.max_concurrency) is given back by the reply's own script.
        `traceparent`: the run's step, whose child the attempt's span is (worker/obs/tracing.py)."""
        started = time.monotonic()
        with call_span(traceparent, tool, args, call_id, attempt) as span:
            result, ran, slot = await self._attempt(call_id, attempt, tool, args, timeout_s, admitted)
            result = self._capped(result)
            span.done(result, ran)
        duration_s = time.monotonic() - started
        duration_ms = round(duration_s * 1000, 1)
        spec = tools.get_tool(tool)
        duration = self._histogram(tool, args, result, duration_s) if ran else None

        reply = Reply(
            reply_key=self.keys.call_reply(call_id, attempt),
            call_key=self.keys.call(call_id),
            breaker_key=self.keys.breaker(tool),
            stats_key=self.keys.stats_tools(),
            run_key=self.keys.run(call_id.split(":", 1)[0]),
            timers_key=self.keys.timers(),
            bell_key=self.keys.timers_bell(),
            run_id=call_id.split(":", 1)[0],
            envelope=json.dumps(result),
            reply_ttl_s=REPLY_TTL_S,
            attempt=attempt,
            # a model call's breaker and record belong to its model (`llm:<model>`): the run's side
            settle=ran and spec is not None and tool != tools.MODEL_TOOL,
            ok=not is_failure(result),
            breaker=self._breaker,
            final=spec is not None and is_final(spec, attempt, result, self.settings),
            call_ttl_s=CALL_RECORD_TTL_S,
            stats_field=stats_field(tool, result),
            slot=slot,
            duration=duration,
        )
        give_up = started + timeout_s + REPLY_GRACE_S
        client = self._loop_client()
        if client is not None:
            settled, before, after = await _until(lambda: self._reply.send_async(client, reply), give_up)
        else:
            settled, before, after = await self._redis_until(lambda: self._reply.send(reply), give_up)
        # after the reply: the run does not wait for this line
        outcome = "ok" if result.get("ok") else (result.get("error") or {}).get("type", "tool_error")
        log.info(
            "tool executed" if ran else "tool not run",
            run_id=call_id.split(":", 1)[0],
            trace_id=trace_id,
            tool=tool,
            attempt=attempt,
            outcome=outcome,
            duration_ms=duration_ms,
        )
        if settled and after != before:
            log.warning("breaker change", tool=tool, outcome=after, previous=before)

    def _histogram(
        self, tool: str, args: Any, result: dict[str, Any], duration_s: float
    ) -> tuple[str, str, float] | None:
        """Where the reply observes an attempt that ran: the tool's or the model's duration
        histogram, its series (a name the fleet does not know counts as "other"), the seconds."""
        if not self.settings.metrics.histograms:
            return None
        outcome = "ok" if result.get("ok") else str((result.get("error") or {}).get("type", "tool_error"))
        if tool == tools.MODEL_TOOL:
            model = args.get("model") if isinstance(args, dict) else None
            label = histograms.label_or_other(str(model), self._models)
            family = histograms.MODEL_CALL
        else:
            label = tool if tools.get_tool(tool) is not None else histograms.OTHER
            family = histograms.TOOL_CALL
        return self.keys.histogram(family), histograms.series(label, outcome), duration_s

    async def _redis_until(self, fn: Callable[[], T], give_up: float) -> T:
        """A blocking Redis round trip (off the loop), tried again while Redis is unreachable:
        see `_until`."""
        return await _until(lambda: self._redis(fn), give_up)

    def _loop_client(self) -> redis.asyncio.Redis | None:
        """The asyncio client of the running loop, if `attach_loop` made one for it."""
        attached = self._async_client
        if attached is None or attached[0] is not asyncio.get_running_loop():
            return None
        return attached[1]

    async def execute_async(
        self,
        call_id: str,
        attempt: int,
        tool: str,
        args: Any,
        timeout_s: float,
    ) -> tuple[dict[str, Any], bool]:
        """The envelope of one attempt, at most tools.max_result_bytes of JSON (never raises for a
        tool's failure), and whether the tool ran (False: the attempt was refused, stale, or
        answered from a record, and the dependency was not asked)."""
        envelope, ran, slot = await self._attempt(call_id, attempt, tool, args, timeout_s)
        await self._redis(self._release, slot)
        return self._capped(envelope), ran

    def _capped(self, envelope: dict[str, Any]) -> dict[str, Any]:
        limit = self.settings.tools.max_result_bytes
        if envelope.get("ok") and len(json.dumps(envelope["result"])) > limit:
            return {"ok": True, "result": cap_bytes(envelope["result"], limit), "truncated": True}
        return envelope

    def admit(
        self,
        call_id: str,
        attempt: int,
        tool: str,
        args: Any,
        timeout_s: float,
        owner: tuple[str, str] | None = None,
    ) -> Admitted:
        """The checks before the tool and the call's slot, in one round trip (blocking; a Redis
        that is down is waited for, no longer than the call's own time). `owner` is the run's
        tenant and agent as the sender said them (the message's headers): the script needs them
        to name the run's switches, and it refuses names that are not the run's own, so a wrong
        or missing `owner` costs one more round trip, never a wrong check. An attempt that must not
        run takes no slot. The tool worker's Celery thread calls this before it hands the call to
        the loop, so the loop's first step is the tool itself."""
        start_by = time.monotonic() + timeout_s
        pause_s = REPLY_RETRY_FIRST_S
        while True:
            try:
                return self._admit(call_id, attempt, tool, args, timeout_s, owner, start_by)
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() + pause_s > start_by:
                    raise
                time.sleep(pause_s)
                pause_s = min(pause_s * 2, REPLY_RETRY_MAX_S)

    def _admit(
        self,
        call_id: str,
        attempt: int,
        tool: str,
        args: Any,
        timeout_s: float,
        owner: tuple[str, str] | None,
        start_by: float,
    ) -> Admitted:
        run_id = call_id.split(":", 1)[0]
        spec = tools.get_tool(tool)
        model = args.get("model") if tool == tools.MODEL_TOOL and isinstance(args, dict) else None
        tool_switches = killswitch.tool_switch_keys(
            self.keys,
            tool,
            writes=spec is not None and spec.writes,
            model=model if isinstance(model, str) else None,
        )
        slot = (self.keys.tool_slots(tool), slot_member(call_id, attempt))
        limit = self.settings.tools.concurrency(tool)
        if owner is None:
            tenant, agent = self.r.hmget(self.keys.run(run_id), ["tenant", "agent"])
            owner = (str(tenant or ""), str(agent or ""))
        for _ in range(2):
            answer = self._before(
                run_key=self.keys.run(run_id),
                call_key=self.keys.call(call_id),
                slots_key=slot[0],
                switch_keys=[*killswitch.run_switch_keys(self.keys, *owner), *tool_switches],
                tenant=owner[0],
                agent=owner[1],
                attempt=attempt,
                member=slot[1],
                limit=limit,
                life_ms=slot_life_ms(timeout_s),
            )
            if answer.verdict is not BeforeToolVerdict.OTHER:
                break
            owner = answer.owner  # the sender named another run's owner: the run's own
        refused = self._refusal(answer, run_id, tool, attempt, limit)
        return Admitted(refused, None if refused is not None else slot, start_by)

    @staticmethod
    def _refusal(
        answer: BeforeToolAnswer, run_id: str, tool: str, attempt: int, limit: int
    ) -> dict[str, Any] | None:
        """The envelope of an attempt that must not run (BeforeTool's answer), else None."""
        verdict = answer.verdict
        if verdict is BeforeToolVerdict.GO:
            return None
        if verdict is BeforeToolVerdict.NORUN:
            # No run sent this (a forged or stray message, or a run long expired): nothing runs.
            log.warning("tool call refused: no such run", run_id=run_id, tool=tool, attempt=attempt)
            return error_result("denied", "the call's run does not exist")
        if verdict is BeforeToolVerdict.ENDED:
            # The run was stopped, cancelled or ended while this call waited in the queue: a call
            # nobody waits for is not made (a killed run's writes must not fire later).
            return error_result("killed", "the run ended before this call was made")
        if verdict is BeforeToolVerdict.KILLED:  # flipped while the call was queued: nothing leaves the fleet
            return error_result("killed", answer.reason)
        if verdict is BeforeToolVerdict.FINAL:
            return dict(json.loads(answer.result))  # the call is over; this is a late redelivery
        if verdict is BeforeToolVerdict.STALE:
            return error_result(
                "timeout", f"attempt {attempt} is stale: the run moved on to attempt {answer.current_attempt}"
            )
        if verdict is BeforeToolVerdict.BUSY:
            return error_result(
                "rate_limited", f"tool {tool!r} is busy: {limit} calls in flight in the fleet"
            )
        raise RuntimeError(f"the tool worker's checks answered {answer!r}")  # 'other' twice: a bug

    async def _attempt(
        self,
        call_id: str,
        attempt: int,
        tool: str,
        args: Any,
        timeout_s: float,
        admitted: Admitted | None = None,
    ) -> tuple[dict[str, Any], bool, tuple[str, str] | None]:
        """The attempt's envelope, whether the tool ran, and the slot it holds (key, member; to
        give back with `_release`), if it took one."""
        if admitted is None:
            admitted = await self._redis(self.admit, call_id, attempt, tool, args, timeout_s)
        if admitted.refused is not None:
            return admitted.refused, False, None
        spec = tools.get_tool(tool)
        try:
            envelope, ran = await self._run(call_id, attempt, tool, spec, args, timeout_s, admitted.start_by)
        except BaseException:
            await self._redis(self._release, admitted.slot)
            raise
        return envelope, ran, admitted.slot

    def _release(self, slot: tuple[str, str] | None) -> None:
        """Give a call's slot back (blocking); a slot that cannot be given back now lapses by
        itself after the call's timeout and grace."""
        if slot is None:
            return
        try:
            self._slots.release(*slot)
        except redis.RedisError as exc:
            log.warning("tool slot not released", tool=slot[0].rsplit(":", 1)[-1], error=type(exc).__name__)

    async def _run(
        self,
        call_id: str,
        attempt: int,
        tool: str,
        spec: tools.Tool | None,
        args: Any,
        timeout_s: float,
        start_by: float,
    ) -> tuple[dict[str, Any], bool]:
        """The attempt's envelope, and whether the tool ran for it (the checks have passed)."""
        ctx = ToolContext(call_id=call_id, timeout_s=timeout_s, settings=self.settings)
        if spec is None or not spec.writes:
            return await tools.execute_async(tool, args, ctx, self._sync_pool), spec is not None
        exec_key = self.keys.call_exec(call_id)
        claim, detail, durable = await self._redis_until(
            lambda: self._claim_durably(exec_key, attempt), start_by
        )
        if claim is ClaimVerdict.DONE:
            return dict(json.loads(detail)), False
        if claim is ClaimVerdict.CLAIMED and not spec.idempotent:
            refused_twice = f"an earlier attempt ({detail}) of this write may have run; it is not run twice"
            return error_result("tool_error", refused_twice), False
        if claim is ClaimVerdict.RUN and not durable:
            # A claim that a failover may lose would let a later attempt run the write again:
            # withdraw it and do not run the write. Retryable, and no failure of the tool's
            # dependency (its breaker is not told): `rate_limited`, like a busy tool worker.
            await self._redis_until(lambda: self.r.hdel(exec_key, "claimed_by"), start_by + REPLY_GRACE_S)
            log.warning("write not run: no replica confirmed its claim", tool=tool, call_id=call_id)
            unconfirmed = f"no replica confirmed the claim within {self.settings.redis.wait_timeout_ms} ms"
            return error_result(
                "rate_limited", f"the write was not run: {unconfirmed}", retry_after_s=1.0
            ), False
        result = await tools.execute_async(tool, args, ctx, self._sync_pool)
        if not (spec.idempotent and is_retryable(result)):
            # A retryable failure of an idempotent write stays open: its retry is sent again,
            # with the same idempotency key. Anything else is this write's one outcome.
            record = json.dumps(result)
            _, durable = await self._redis_until(
                lambda: write_durably(
                    self.r,
                    lambda pipe: pipe.hset(exec_key, "result", record),
                    self.settings.wait_replicas,
                    self.settings.redis.wait_timeout_ms,
                ),
                start_by + REPLY_GRACE_S,
            )
            if not durable:  # the claim is: a later attempt is refused, never run twice
                log.warning("write result not confirmed by a replica", tool=tool, call_id=call_id)
        return result, True

    def _claim_durably(self, exec_key: str, attempt: int) -> tuple[ClaimVerdict, str, bool]:
        """The claim script's answer (ValueError for a verdict it does not give), and whether
        `redis.wait_replicas` replicas have the claim."""
        claim = lua.named(claimed_by=f"attempt {attempt}", ttl_s=EXEC_TTL_S)
        results, durable = write_durably(
            self.r,
            lambda pipe: self._claim(keys=[exec_key], args=[claim], client=pipe),
            self.settings.wait_replicas,
            self.settings.redis.wait_timeout_ms,
        )
        verdict, detail = results[0]
        return ClaimVerdict(str(verdict)), str(detail), durable
