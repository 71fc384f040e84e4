"""Unit tests of the gateway's admission script (worker/gateway/checks.py) on fakeredis with Lua: it runs
the checks of every concern in one round trip, so it must decide exactly as they do."""

from __future__ import annotations

import json
from dataclasses import astuple
from typing import Any

import fakeredis
import pytest

from tests.unit_parts import KEYS, CountingRedis, InlineDispatcher, gateway
from worker.control.policy import Policy, PolicyStore
from worker.gateway.calls import ToolAttempt
from worker.run.guard import BudgetExceeded, RunStopped
from worker.run.store import RunStore
from worker.settings import Settings
from worker.units import MICRO

POLICY_READ = """
local tools, max_a, max_s, approve = policy_read(KEYS[1])
local function sorted(set)
  local names = {}
  if set then
    for name in pairs(set) do table.insert(names, name) end
    table.sort(names)
  end
  return cjson.encode(names)
end
return {tools and 1 or 0, sorted(tools), max_a, max_s, approve and 1 or 0, sorted(approve)}
"""


@pytest.mark.parametrize(
    "raw",
    [
        Policy().model_dump_json(),
        Policy(allowed_tools=["echo", "http.get"]).model_dump_json(),
        Policy(allowed_tools=[], max_actions_per_hour=30).model_dump_json(),
        Policy(max_spend_usd_per_day=0.25).model_dump_json(),
        Policy(max_actions_per_hour=0, max_spend_usd_per_day=0).model_dump_json(),
        '{"allowed_tools": ["tool:v2", "a_b-c.d"]}',
        "{}",
        # not a valid policy: every tool is denied, in Lua as in Python
        "not json",
        "[]",
        '["echo"]',
        '{"allowed_tools": "echo"}',
        '{"allowed_tools": [1]}',
        '{"allowed_tools": ["bad tool"]}',
        '{"allowed_tools": ["' + "x" * 201 + '"]}',
        '{"max_actions_per_hour": -1}',
        '{"max_actions_per_hour": 1.5}',
        '{"max_actions_per_hour": "5"}',
        '{"max_actions_per_hour": true}',
        '{"max_spend_usd_per_day": -0.5}',
        '{"max_spend_usd_per_day": "1"}',
        '{"max_spend": 1}',
        '{"allowed_tools": {"echo": true}}',
        Policy(approve_tools=["test.write", "http.get"]).model_dump_json(),
        '{"allowed_tools": ["echo"], "approve_tools": []}',
        '{"approve_tools": "echo"}',
        '{"approve_tools": [1]}',
        '{"approve_tools": ["bad tool"]}',
    ],
)
def test_the_script_reads_a_policy_as_the_policy_store_does(r: fakeredis.FakeRedis, raw: str) -> None:
    from worker.control.policy import LUA_POLICY

    r.set(KEYS.policy("a"), raw)
    expected = PolicyStore(r, KEYS).get("a")
    has_tools, names, max_a, max_s, has_approve, approve = r.eval(
        LUA_POLICY + POLICY_READ, 1, KEYS.policy("a")
    )
    tools = sorted(json.loads(names)) if has_tools else None
    approve_tools = sorted(json.loads(approve)) if has_approve else None
    assert approve_tools == (None if expected.approve_tools is None else sorted(expected.approve_tools))
    assert tools == (None if expected.allowed_tools is None else sorted(expected.allowed_tools))
    assert max_a == (-1 if expected.max_actions_per_hour is None else expected.max_actions_per_hour)
    spend = expected.max_spend_usd_per_day
    assert max_s == (-1 if spend is None else round(spend * MICRO))


def test_a_plain_tool_call_costs_two_round_trips_besides_the_subtask() -> None:
    r = CountingRedis(decode_responses=True)
    settings = Settings(tools={"allowlist": ["echo"]})
    dispatcher = InlineDispatcher(r, settings)
    gw = gateway(r, RunStore(r, KEYS), settings, dispatcher)
    gw.call("r1:1:0", "echo", {"a": 0})  # registers the scripts (SCRIPT LOAD) once per process
    r.round_trips = 0
    assert gw.call("r1:2:0", "echo", {"a": 1}).result == {"ok": True, "result": {"a": 1}}
    # the admission script, the settle script; the inline dispatcher's RPUSH and the BLPOP are
    # the subtask's own round trips
    assert r.round_trips - 2 == 2


def test_a_run_switch_stops_the_run_before_anything_is_reserved(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    settings = Settings(tools={"allowlist": ["echo"]})
    dispatcher = InlineDispatcher(r, settings)
    gw = gateway(r, store, settings, dispatcher)
    PolicyStore(r, KEYS).set("scripted", Policy(max_actions_per_hour=5))
    r.set(KEYS.kill_agent("scripted"), "agent paused")
    with pytest.raises(RunStopped) as stop:
        gw.call("r1:1:0", "echo", {})
    assert (stop.value.stop_reason, stop.value.message) == ("killed", "agent paused")
    r.delete(KEYS.kill_agent("scripted"))
    r.set(KEYS.run_cancel("r1"), "cancelled by request")
    with pytest.raises(RunStopped) as stop:
        gw.call("r1:1:0", "echo", {})
    assert stop.value.stop_reason == "cancelled"
    assert dispatcher.sent == []
    assert r.hget(KEYS.run("r1"), "tool_calls") == "0"
    assert r.zcard(KEYS.quota_actions("scripted")) == 0


def test_a_tool_switch_comes_before_the_allowlist_and_the_policy(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    settings = Settings(tools={"allowlist": ["echo", "http.post"]})
    gw = gateway(r, store, settings, InlineDispatcher(r, settings))
    PolicyStore(r, KEYS).set("scripted", Policy(allowed_tools=["http.post"]))
    r.set(KEYS.kill_writes(), "writes frozen")
    outcome = gw.call("r1:1:0", "http.post", {"url": "http://127.0.0.1:9/x", "json": {}})
    assert outcome.result["error"] == {"type": "killed", "message": "writes frozen"}
    r.set(KEYS.kill_tool("search.read"), "search is down")
    assert gw.call("r1:2:0", "search.read", {"q": "x"}).result["error"]["type"] == "killed"
    r.delete(KEYS.kill_tool("search.read"))
    denied = gw.call("r1:3:0", "search.read", {"q": "x"})
    assert denied.result["error"]["message"] == "tool 'search.read' is not on the fleet's allowlist"
    denied = gw.call("r1:4:0", "echo", {})
    assert denied.result["error"]["message"] == "tool 'echo' is not in agent 'scripted''s allowed_tools"
    assert denied.decision["decision"] == "denied"
    stats = r.hgetall(KEYS.stats_tools())
    assert stats == {
        "calls|http.post|killed": "1",
        "calls|search.read|killed": "1",
        "calls|search.read|denied": "1",
        "calls|echo|denied": "1",
    }


def test_a_call_over_the_tool_budget_gives_its_quota_back(r: fakeredis.FakeRedis, store: RunStore) -> None:
    settings = Settings(tools={"allowlist": ["echo"], "costs_usd": {"echo": 0.01}})
    gw = gateway(r, store, settings, InlineDispatcher(r, settings))  # max_tool_calls = 5
    PolicyStore(r, KEYS).set("scripted", Policy(max_actions_per_hour=100, max_spend_usd_per_day=1.0))
    for step in range(1, 6):
        outcome = gw.call(f"r1:{step}:0", "echo", {"n": step})
        assert outcome.decision["remaining"] == {
            "actions_this_hour": 100 - step,
            "spend_usd_today": round(1.0 - 0.01 * step, 6),
        }
    with pytest.raises(BudgetExceeded) as stop:
        gw.call("r1:6:0", "echo", {})
    assert stop.value.stop_reason == "max_tool_calls"
    assert r.zcard(KEYS.quota_actions("scripted")) == 5
    day_key = PolicyStore(r, KEYS).quota_keys("scripted", "r1:6:0")[1]
    assert r.get(day_key) == str(5 * 10_000)
    assert gw.budget.used == 5


def test_a_finished_call_is_replayed_from_its_record(r: fakeredis.FakeRedis, store: RunStore) -> None:
    settings = Settings(tools={"allowlist": ["echo"]})
    dispatcher = InlineDispatcher(r, settings)
    gw = gateway(r, store, settings, dispatcher)
    first = gw.call("r1:1:0", "echo", {"n": 1})
    again = gw.call("r1:1:0", "echo", {"n": 1})  # a resumed run asks for the same call
    assert again.result == first.result == {"ok": True, "result": {"n": 1}}
    assert len(dispatcher.sent) == 1
    assert r.hget(KEYS.run("r1"), "tool_calls") == "1"


def test_a_rate_limit_slot_past_the_deadline_is_refused_and_recorded(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    settings = Settings(tools={"allowlist": ["echo"], "rate_limits": {"echo": "1/m"}})
    dispatcher = InlineDispatcher(r, settings)
    gw = gateway(r, store, settings, dispatcher, deadline_s=5)
    assert gw.call("r1:1:0", "echo", {}).result["ok"]
    refused = gw.call("r1:2:0", "echo", {})
    assert refused.result["error"]["type"] == "rate_limited"
    assert "rate limit 1/m" in refused.result["error"]["message"]
    assert refused.decision["decision"] == "denied"
    assert len(dispatcher.sent) == 1
    assert json.loads(r.hget(KEYS.call("r1:2:0"), "result") or "{}") == refused.result


def test_an_open_breaker_answers_at_once(r: fakeredis.FakeRedis, store: RunStore) -> None:
    settings = Settings(
        tools={"allowlist": ["echo"], "retries": {"max": 0}, "breaker": {"failure_threshold": 2}}
    )
    failure = {"ok": False, "error": {"type": "http_error", "message": "HTTP 503", "status": 503}}
    dispatcher = InlineDispatcher(r, settings, replies=[failure, failure])
    gw = gateway(r, store, settings, dispatcher)
    gw.call("r1:1:0", "echo", {})
    gw.call("r1:2:0", "echo", {})
    for step in (3, 4):
        outcome = gw.call(f"r1:{step}:0", "echo", {})
        assert outcome.result["error"]["type"] == "circuit_open"
        assert outcome.result["error"]["retry_after_s"] > 0
    assert len(dispatcher.sent) == 2
    assert r.hget(KEYS.stats_tools(), "calls|echo|circuit_open") == "2"


class ToolWorkerDispatcher:
    """Runs the tool worker's own code (ToolExecutor.answer) inline, on its own client."""

    def __init__(self, r: fakeredis.FakeRedis, settings: Settings) -> None:
        from worker.gateway.executor import ToolExecutor

        self.executor = ToolExecutor(r, KEYS, settings)
        self.sent: list[tuple[str, int, str]] = []

    def outgoing(self, sent: ToolAttempt) -> None:
        """None: each attempt is sent with `send`, which runs it here."""
        return None

    def send(self, sent: ToolAttempt) -> None:
        call_id, attempt, tool, args, timeout_s, owner = astuple(sent)
        self.sent.append((call_id, attempt, tool))
        self.executor.answer(call_id, attempt, tool, args, timeout_s, owner=owner)


def test_the_tool_worker_settles_a_call_it_ran_so_the_run_needs_one_round_trip() -> None:
    server = fakeredis.FakeServer()
    r = CountingRedis(server=server, decode_responses=True)
    worker_side = fakeredis.FakeRedis(server=server, decode_responses=True)
    settings = Settings(tools={"allowlist": ["echo"]})
    gw = gateway(r, RunStore(r, KEYS), settings, ToolWorkerDispatcher(worker_side, settings))
    gw.call("r1:1:0", "echo", {"a": 0})  # registers the scripts once
    r.round_trips = 0
    assert gw.call("r1:2:0", "echo", {"a": 1}).result == {"ok": True, "result": {"a": 1}}
    assert r.round_trips == 2  # the admission script and the BLPOP of the reply
    assert json.loads(r.hget(KEYS.call("r1:2:0"), "result") or "null") == {"ok": True, "result": {"a": 1}}
    assert r.hget(KEYS.stats_tools(), "calls|echo|ok") == "2"  # counted once per call
    assert r.hget(KEYS.breaker("echo"), "win_calls") == "2"


def test_a_reply_for_a_stale_attempt_is_not_settled_by_the_tool_worker(r: fakeredis.FakeRedis) -> None:
    from worker.gateway.breaker import BreakerPolicy
    from worker.gateway.reply import Replier, Reply

    reply = Replier(r)
    r.hset(KEYS.call("c1"), mapping={"state": "started", "attempt": "1"})  # the run is on attempt 1
    common: dict[str, Any] = {
        "call_key": KEYS.call("c1"),
        "breaker_key": KEYS.breaker("echo"),
        "stats_key": KEYS.stats_tools(),
        "run_key": KEYS.run("c1"),
        "timers_key": KEYS.timers(),
        "bell_key": KEYS.timers_bell(),
        "run_id": "c1",
        "envelope": json.dumps({"ok": True, "result": 0}),
        "reply_ttl_s": 60,
        "settle": True,
        "ok": True,
        "breaker": BreakerPolicy(),
        "final": True,
        "call_ttl_s": 60,
        "stats_field": "calls|echo|ok",
    }
    settled, _, _ = reply.send(Reply(reply_key="reply:0", attempt=0, **common))
    assert not settled
    assert r.hget(KEYS.call("c1"), "result") is None and not r.exists(KEYS.breaker("echo"))
    assert json.loads(r.lpop("reply:0") or "{}") == {"settled": False, "envelope": {"ok": True, "result": 0}}
    settled, _, _ = reply.send(Reply(reply_key="reply:1", attempt=1, **common))
    assert settled and r.hget(KEYS.call("c1"), "result") == common["envelope"]
    assert json.loads(r.lpop("reply:1") or "{}")["settled"] is True
    # a second reply for the same attempt (a redelivery) settles nothing twice
    settled, _, _ = reply.send(Reply(reply_key="reply:1", attempt=1, **common))
    assert not settled and r.hget(KEYS.stats_tools(), "calls|echo|ok") == "1"


def test_a_timeout_on_the_run_side_keeps_a_result_the_tool_worker_recorded_first(
    r: fakeredis.FakeRedis,
) -> None:
    from worker.gateway.breaker import BreakerPolicy
    from worker.gateway.checks import Admitter, CallKeys

    keys = CallKeys(
        run_switches=[], cancel="", tool_switch="", writes_switch="", policy="", quota=[],
        run=KEYS.run("r1"), call=KEYS.call("c1"), retry_budget="", breaker=KEYS.breaker("echo"),
        stats=KEYS.stats_tools(),
    )  # fmt: skip
    recorded = json.dumps({"ok": True, "result": "late"})
    r.hset(KEYS.call("c1"), mapping={"attempt": "0", "state": "done", "result": recorded})
    timeout = json.dumps({"ok": False, "error": {"type": "timeout", "message": "no answer"}})
    _, _, existing, _ = Admitter(r).settle(
        keys, ok=False, breaker=BreakerPolicy(), final_result=timeout, call_ttl_s=60, stats_field="x"
    )
    assert existing == recorded
    assert r.hget(KEYS.call("c1"), "result") == recorded and r.hget(KEYS.stats_tools(), "x") is None


def test_the_tool_worker_runs_no_call_of_an_ended_or_missing_run(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    import tests.plugins  # noqa: F401  (registers test.write)
    from worker.gateway.executor import ToolExecutor

    settings = Settings(tools={"allowlist": ["echo", "test.write"]})
    executor = ToolExecutor(r, KEYS, settings)
    store.create("r1", tenant="t1", agent="scripted", input={}, budgets=_budgets(), metadata={})
    assert executor.execute("r1:1:0", 0, "echo", {"n": 1}, 3.0) == ({"ok": True, "result": {"n": 1}}, True)
    store.cancel("r1")  # the run ended while its calls waited in the queue
    ended = {"ok": False, "error": {"type": "killed", "message": "the run ended before this call was made"}}
    assert executor.execute("r1:2:0", 0, "echo", {"n": 1}, 3.0) == (ended, False)
    assert executor.execute("r1:3:0", 0, "test.write", {"n": 1}, 3.0) == (ended, False)
    missing = {"ok": False, "error": {"type": "denied", "message": "the call's run does not exist"}}
    assert executor.execute("nope:1:0", 0, "echo", {"n": 1}, 3.0) == (missing, False)
    assert executor.execute("nope:2:0", 0, "test.write", {"n": 1}, 3.0) == (missing, False)
    assert not r.exists(KEYS.call_exec("nope:2:0"))  # not even claimed


@pytest.mark.parametrize(
    ("switch", "tool", "args", "refused"),
    [
        (KEYS.kill_all(), "echo", {}, True),
        (KEYS.kill_tenant("t1"), "echo", {}, True),
        (KEYS.kill_tenant("t2"), "echo", {}, False),
        (KEYS.kill_agent("scripted"), "echo", {}, True),
        (KEYS.kill_tool("echo"), "echo", {}, True),
        (KEYS.kill_tool("test.write"), "echo", {}, False),
        (KEYS.kill_writes(), "echo", {}, False),
        (KEYS.kill_writes(), "test.write", {"n": 1}, True),
        (KEYS.kill_tool("test.write"), "test.write", {"n": 1}, True),
        (KEYS.kill_tool("llm"), "llm", {"model": "m1"}, True),
        (KEYS.kill_tool("llm:m1"), "llm", {"model": "m1"}, True),
        (KEYS.kill_tool("llm:m2"), "llm", {"model": "m1"}, False),
    ],
)
def test_the_tool_worker_checks_every_switch_right_before_a_tool_runs(
    r: fakeredis.FakeRedis, store: RunStore, switch: str, tool: str, args: dict[str, Any], refused: bool
) -> None:
    import tests.plugins  # noqa: F401  (registers test.write)
    from worker.gateway.executor import ToolExecutor

    # the model service is a closed loopback port: a model call that runs fails with a connection
    # error (`ran` all the same), one that is refused never tries
    settings = Settings(
        agents={"llm": {"base_url": "http://127.0.0.1:9/v1"}}, tools={"timeouts_ms": {"default": 500}}
    )
    executor = ToolExecutor(r, KEYS, settings)
    store.create("r1", tenant="t1", agent="scripted", input={}, budgets=_budgets(), metadata={})
    r.set(switch, "incident 42")
    if tool == "llm":
        args = {**args, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    envelope, ran = executor.execute("r1:1:0", 0, tool, args, 0.5)
    if refused:
        assert (envelope, ran) == (
            {"ok": False, "error": {"type": "killed", "message": "incident 42"}},
            False,
        )
    else:
        assert ran is True and (envelope.get("error") or {}).get("type") != "killed", envelope
    if tool == "test.write":
        assert r.exists(KEYS.call_exec("r1:1:0")) == (not refused)  # a refused write is not even claimed


def _budgets() -> Any:
    from worker.run.store import Budgets

    return Budgets(max_steps=5, max_tool_calls=5, max_seconds=30)


def test_a_call_that_needs_approval_runs_only_once_approved_and_keeps_the_decision(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    settings = Settings(tools={"allowlist": ["echo"], "approval": {"required": ["echo"]}})
    dispatcher = InlineDispatcher(r, settings)
    gw = gateway(r, store, settings, dispatcher)  # its guard does not park (runtime.park_waits off)
    undecided = gw.call("r1:1:0", "echo", {"a": 1})
    assert (
        undecided.result["error"]["type"] == "denied" and "park_waits" in undecided.result["error"]["message"]
    )
    assert dispatcher.sent == [] and r.hget(KEYS.run("r1"), "tool_calls") == "0"
    # a redelivered step whose approval was decided meanwhile: no park to resume, the decision stands
    approved = {"decision": "approve", "by": "t1", "at": "2026-12-02T10:00:00Z", "comment": "ok"}
    r.hset(KEYS.run("r1"), "approval:r1:2:0", json.dumps(approved))
    outcome = gw.call("r1:2:0", "echo", {"a": 2})
    assert outcome.result == {"ok": True, "result": {"a": 2}} and outcome.approval == approved
    denied = {"decision": "deny", "by": "t1", "at": "2026-12-02T10:00:00Z", "comment": "no"}
    r.hset(KEYS.run("r1"), "approval:r1:3:0", json.dumps(denied))
    refused = gw.call("r1:3:0", "echo", {"a": 3})
    assert refused.result["error"] == {"type": "denied", "message": "approval denied: no"}
    assert refused.approval == denied and len(dispatcher.sent) == 1


def test_an_admission_request_sends_the_scripts_keys_and_argv_in_their_documented_order(
    r: fakeredis.FakeRedis,
) -> None:
    """What the admission script gets for a sample call: KEYS in the order of the script's header,
    and one JSON table of named arguments."""

    from worker.gateway.breaker import BreakerPolicy
    from worker.gateway.checks import AdmissionRequest, Admitter, CallKeys, LimitSlot
    from worker.gateway.ratelimit import parse_rate
    from worker.gateway.retrybudget import RetryPolicy

    sent: dict[str, list[Any]] = {}

    def script(keys: list[str], args: list[Any]) -> list[Any]:
        sent["keys"], sent["args"] = keys, args
        return ["go", "", -1, 2_500_000, 1, "", "", ""]

    admitter = Admitter(r)
    admitter._script = script  # type: ignore[assignment]
    keys = CallKeys(
        run_switches=["k:all", "k:tenant:t1", "k:agent:a"],
        cancel="c:r1",
        tool_switch="k:tool:http.post",
        writes_switch="k:writes",
        policy="p:a",
        quota=["q:actions", "q:spend", "q:decision"],
        run="run:r1",
        call="call:r1:1:0",
        retry_budget="rb:http.post",
        breaker="br:http.post",
        stats="stats",
        second_switch=True,
    )
    answer = admitter(
        AdmissionRequest(
            "admit",
            keys,
            local_verdict="",
            tool="http.post",
            call_id="r1:1:0",
            cost_micro=2500,
            max_tool_calls=5,
            call_ttl_s=600,
            decision_ttl_s=7200,
            retry=RetryPolicy(ratio=0.2, min_retries=3, window_s=10.0),
            breaker=BreakerPolicy(cooldown_s=15.0, probe_timeout_s=2.5),
            remaining_s=12.3456,
            attempt=1,
            wait_stat="rate_limit_waits|http.post",
            limits=[
                LimitSlot("rl:http.post", parse_rate("10/s")),
                LimitSlot("rl:t1", parse_rate("100/m"), 0),
            ],
            kind="tool",
            approval=True,
        )
    )
    assert (answer.verdict, answer.max_actions, answer.max_spend_usd, answer.used) == ("go", None, 2.5, 1)
    assert sent["keys"] == [
        *("k:all", "k:tenant:t1", "k:agent:a", "c:r1", "k:tool:http.post", "k:writes", "p:a"),
        *("q:actions", "q:spend", "q:decision", "run:r1", "call:r1:1:0", "rb:http.post", "br:http.post"),
        *("stats", "rl:http.post", "rl:t1"),
    ]
    assert len(sent["args"]) == 1  # one JSON table, read by name in the script
    assert json.loads(sent["args"][0]) == {
        "stage": "admit",
        "verdict": "",
        "tool": "http.post",
        "second_switch": True,
        "call_id": "r1:1:0",
        "cost_micro": 2500,
        "max_tool_calls": 5,
        "call_ttl_s": 600,
        "decision_ttl_s": 7200,
        "retry": {"ratio": 0.2, "min_retries": 3, "window_ms": 10000},
        "breaker": {"cooldown_ms": 15000, "probe_ms": 2500},
        "remaining_ms": pytest.approx(12345.6),
        "attempt": 1,
        "wait_stat": "rate_limit_waits|http.post",
        "kind": "tool",
        "approval": True,
        "limits": [  # per limit: interval ms, burst, cost (at least 1)
            {"interval_ms": 100.0, "burst": 1, "cost": 1},
            {"interval_ms": 600.0, "burst": 1, "cost": 1},
        ],
        "send": False,
    }


def test_the_readme_quotes_the_declared_admission_order() -> None:
    """The README's list of the gateway's checks is printed from `ADMISSION`, not restated."""
    from tests.harness import ROOT
    from worker.gateway.checks import admission_order

    readme = (ROOT / "README.md").read_text()
    lines = admission_order()
    assert "\n".join(lines) in readme, "README: paste admission_order()'s lines"
    assert len(lines) == len({line.split(" (")[0] for line in lines})  # one line per check


def test_every_verdict_the_admission_script_can_answer_is_a_verdict() -> None:
    """The script's answers, read from its text, are exactly the Verdict enum's values."""
    import re

    from worker.gateway.checks import SCRIPT, Verdict

    answered = set(re.findall(r"answer\('([a-z_]+)'", SCRIPT))
    assert answered == {v.value for v in Verdict}


class QueueingDispatcher(InlineDispatcher):
    """Gives the admission script each attempt's message (`outgoing`), as the fleet's dispatcher
    does, and answers it as a tool worker would the moment it is built; `send` stays the way out
    when admission may not push the message itself."""

    def __init__(self, r: fakeredis.FakeRedis, settings: Settings) -> None:
        super().__init__(r, settings)
        self.built: list[str] = []

    def outgoing(self, sent: ToolAttempt) -> Any:  # type: ignore[override]
        from worker.publish import Outgoing

        message = json.dumps({"call_id": sent.call_id, "attempt": sent.attempt})
        self.built.append(message)
        reply = {"ok": True, "result": sent.args}  # echo's
        self.r.rpush(KEYS.call_reply(sent.call_id, sent.attempt), json.dumps(reply))
        return Outgoing(f"tools.{sent.tool}", message)


def test_an_admitted_attempt_is_pushed_by_the_admission_script_in_the_same_round_trip() -> None:
    r = CountingRedis(decode_responses=True)
    settings = Settings(tools={"allowlist": ["echo"]})
    dispatcher = QueueingDispatcher(r, settings)
    gw = gateway(r, RunStore(r, KEYS), settings, dispatcher)
    gw.call("r1:1:0", "echo", {"a": 0})  # registers the scripts once
    r.round_trips = 0
    assert gw.call("r1:2:0", "echo", {"a": 1}).result == {"ok": True, "result": {"a": 1}}
    # the admission script (which pushed it) and the settle script; the reply's RPUSH (made as
    # the message was built) and the BLPOP stand for the tool worker
    assert r.round_trips - 2 == 2
    assert dispatcher.sent == []  # never sent apart from its admission
    assert r.lrange("tools.echo", 0, -1) == list(reversed(dispatcher.built))  # LPUSH, as kombu's


def test_a_refused_attempt_pushes_nothing(r: fakeredis.FakeRedis, store: RunStore) -> None:
    settings = Settings(tools={"allowlist": ["echo"]})
    dispatcher = QueueingDispatcher(r, settings)
    gw = gateway(r, store, settings, dispatcher)
    r.set(KEYS.kill_tool("echo"), "echo is down")
    assert gw.call("r1:1:0", "echo", {}).result["error"]["type"] == "killed"
    assert r.llen("tools.echo") == 0 and dispatcher.sent == []


def test_a_tool_with_a_declared_cost_is_charged_before_its_first_attempt_is_sent(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    """The charge comes between admission and the send, so that attempt is sent on its own."""
    settings = Settings(tools={"allowlist": ["echo"], "costs_usd": {"echo": 0.01}})
    dispatcher = QueueingDispatcher(r, settings)
    gw = gateway(r, store, settings, dispatcher)
    assert gw.call("r1:1:0", "echo", {"a": 1}).result == {"ok": True, "result": {"a": 1}}
    assert dispatcher.sent == [("r1:1:0", 0, "echo")] and dispatcher.built == []
    assert r.llen("tools.echo") == 0


class SilentDispatcher(InlineDispatcher):
    """Records each attempt and answers none: the run parks on its reply."""

    def send(self, sent: ToolAttempt) -> None:
        self.sent.append((sent.call_id, sent.attempt, sent.tool))


def test_an_approved_call_that_parks_on_its_reply_keeps_the_decision_when_it_resumes(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    from worker.run.guard import Park

    settings = Settings(tools={"allowlist": ["echo"], "approval": {"required": ["echo"]}})
    dispatcher = SilentDispatcher(r, settings)
    gw = gateway(r, store, settings, dispatcher)
    gw.guard.park_after_s = 0.05  # the reply is not there within the stay: the run parks
    approved = {"decision": "approve", "by": "t1", "at": "2026-12-02T10:00:00Z", "comment": "ok"}
    r.hset(KEYS.run("r1"), "approval:r1:1:0", json.dumps(approved))
    with pytest.raises(Park) as parked:
        gw.call("r1:1:0", "echo", {"a": 1})
    assert dispatcher.sent == [("r1:1:0", 0, "echo")]
    wait = json.loads(json.dumps(parked.value.wait))  # as the run keeps it
    r.rpush(KEYS.call_reply("r1:1:0", 0), json.dumps({"ok": True, "result": {"a": 1}}))
    resumed = gw.call("r1:1:0", "echo", {"a": 1}, resume=wait)
    assert resumed.result == {"ok": True, "result": {"a": 1}}
    assert resumed.approval == approved  # the step log still says who approved it
