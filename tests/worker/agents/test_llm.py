"""The built-in `llm` agent against a fake OpenAI-compatible server (issue 4).

Real parts only: a redis-server, `fleet api`, a prefork `fleet worker`, a `fleet tool-worker` (which
makes the model calls) and `tests.fake_openai` as a process of its own, serving scripted answers:
tool calls, final answers, usage numbers, 429 with Retry-After, slow answers, malformed tool calls
and 500s. Each run's prompt carries a marker `scenario:<name>:<id>`, so the server answers each run
from its own script and the tests read exactly the requests that run made.
"""

from __future__ import annotations

import json
import secrets
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

import tests.plugins  # noqa: F401  (registers test.sleep, whose schema the model is offered)
from tests.harness import TERMINAL, FakeOpenAI, Fleet, running_fleet, wait_for
from worker.agents.llm import function_name
from worker.run.loop import estimate_prompt_tokens
from worker.tools import get_tool

API_KEY = "sk-test-" + secrets.token_hex(16)
ADMIN_KEY = "admin-" + secrets.token_hex(12)
MODEL = "fake-model"
MAX_TOKENS_PER_CALL = 100
PRICE_IN, PRICE_OUT = 1000.0, 2000.0  # USD per million tokens: big, so cost budgets are easy to reach
ALLOWLIST = ["echo", "http.get", "test.sleep"]
RETRIES = 2
MAX_INVALID_ANSWERS = 3  # the llm agent's default
LLM_TIMEOUT_MS = 3000
SLEEP_COST_USD = 0.3  # test.sleep's declared cost per call, charged to the run's max_cost_usd
RUN_IDS: list[str] = []  # every run of the module, for the key check at the end


@pytest.fixture(scope="module")
def fleet(fake: FakeOpenAI) -> Iterator[Fleet]:
    """One fleet for the module: an agent worker with 4 processes, the model at the fake server."""
    config = {
        "runtime": {"env": {"AGENT_MAX_COST_USD": 10}},
        "agents": {
            "llm": {
                "base_url": f"{fake.url}/v1",
                "model": MODEL,
                "max_tokens_per_call": MAX_TOKENS_PER_CALL,
                "prices_usd_per_1m_tokens": {"input": PRICE_IN, "output": PRICE_OUT},
            }
        },
        "tools": {
            "allowlist": ALLOWLIST,
            "timeouts_ms": {"llm": LLM_TIMEOUT_MS},
            "costs_usd": {"test.sleep": SLEEP_COST_USD},
            "retries": {"max": RETRIES, "backoff_ms": [50, 50]},
            # This module's failures must not open the model's circuit or spend its retry budget.
            "breaker": {"failure_threshold": 1000, "min_calls": 1000},
            "retry_budget": {"min_retries": 1000},
        },
        "observability": {"result_sample_rate": 1.0},
    }
    env = {
        "OPENAI_API_KEY": API_KEY,
        "FLEET_ADMIN_KEYS": ADMIN_KEY,
        "OPENAI_BASE_URL": "",
        "FLEET_LOG_LEVEL": "DEBUG",
    }
    with running_fleet(config=config, concurrency=4, env=env) as f:
        yield f


# -- helpers ----------------------------------------------------------------------------------------


def new_marker(scenario: str) -> str:
    return f"scenario:{scenario}:{uuid.uuid4().hex}"


def submit(fleet: Fleet, prompt: str, system: str | None = None, **budgets: Any) -> str:
    body: dict[str, Any] = {"budgets": budgets} if budgets else {}
    task: dict[str, Any] = {"prompt": prompt, **({"system": system} if system else {})}
    run_id = str(fleet.submit(agent="llm", input=task, **body)["id"])
    RUN_IDS.append(run_id)
    return run_id


def run_llm(fleet: Fleet, prompt: str, system: str | None = None, **budgets: Any) -> dict[str, Any]:
    """Submit an llm run and return it once it has ended, with its step log."""
    return fleet.wait(submit(fleet, prompt, system, **budgets), timeout=60)


def offered_tools() -> list[dict[str, Any]]:
    """The tool specs the model must be offered: the allowlist, with each tool's argument schema."""
    specs = []
    for name in ALLOWLIST:
        spec = get_tool(name)
        assert spec is not None
        specs.append(
            {
                "type": "function",
                "function": {
                    "name": function_name(name),
                    "description": spec.description,
                    "parameters": spec.args_model.model_json_schema(by_alias=True),
                },
            }
        )
    return specs


def worst_case_tokens(messages: list[dict[str, Any]]) -> int:
    """What the loop reserves for a call with these messages: prompt estimate + max_tokens."""
    return estimate_prompt_tokens(messages, offered_tools()) + MAX_TOKENS_PER_CALL


def cost_micro(prompt_tokens: int, completion_tokens: int) -> int:
    return round(prompt_tokens * PRICE_IN + completion_tokens * PRICE_OUT)


def tool_reply(request: dict[str, Any], call_id: str) -> dict[str, Any]:
    """The tool message answering `call_id` in a request the server received, parsed."""
    (message,) = [
        m for m in request["body"]["messages"] if m["role"] == "tool" and m["tool_call_id"] == call_id
    ]
    reply: dict[str, Any] = json.loads(message["content"])
    return reply


# -- a whole conversation ---------------------------------------------------------------------------


def test_two_tool_conversation_succeeds_with_final_text_and_sends_the_right_messages_and_tools(
    fleet: Fleet, fake: FakeOpenAI
) -> None:
    fake.load(
        "two_tools",
        [
            {"tool_calls": [{"name": "echo", "arguments": {"text": "hi"}}], "usage": {"prompt_tokens": 20}},
            {
                "tool_calls": [
                    {
                        "id": "call_web",
                        "name": "http__get",
                        "arguments": {"url": f"{fake.url}/page/hello-page"},
                    }
                ],
                "usage": {"prompt_tokens": 30, "completion_tokens": 7},
            },
            {"content": "all done", "usage": {"prompt_tokens": 40, "completion_tokens": 3}},
        ],
    )
    marker = new_marker("two_tools")
    done = run_llm(fleet, f"Look things up. {marker}", system="You are a test.")

    assert done["status"] == "succeeded", done
    assert done["stop_reason"] == "finish"
    assert done["output"] == "all done"
    assert done["usage"]["tool_calls"] == 2
    assert done["usage"]["tokens"] == (20 + 5) + (30 + 7) + (40 + 3)
    expected_cost = cost_micro(20 + 30 + 40, 5 + 7 + 3) / 1e6
    assert done["usage"]["cost_usd"] == pytest.approx(expected_cost)
    assert [(s["action"], s.get("tool")) for s in done["steps"]] == [
        ("model", "llm"),
        ("tool", "echo"),
        ("model", "llm"),
        ("tool", "http.get"),
        ("model", "llm"),
    ]
    assert all(s["ok"] for s in done["steps"]), done["steps"]

    first, second, third = fake.requests(marker)
    start = [
        {"role": "system", "content": "You are a test."},
        {"role": "user", "content": f"Look things up. {marker}"},
    ]
    for request in (first, second, third):
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"].get("Authorization") == f"Bearer {API_KEY}"
        assert request["body"]["model"] == MODEL
        assert request["body"]["max_tokens"] == MAX_TOKENS_PER_CALL
        assert request["body"]["tools"] == offered_tools()
        assert API_KEY not in json.dumps(request["body"])
    assert first["body"]["messages"] == start

    # The model's tool call goes back verbatim, followed by the tool's result envelope.
    assert second["body"]["messages"][: len(start)] == start
    assistant, tool = second["body"]["messages"][len(start) :]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "echo", "arguments": '{"text": "hi"}'}}
    ]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "call_1"
    assert json.loads(tool["content"]) == {"ok": True, "result": {"text": "hi"}}

    assert third["body"]["messages"][: len(start) + 2] == second["body"]["messages"]
    assistant, _ = third["body"]["messages"][len(start) + 2 :]
    assert assistant["tool_calls"][0]["function"]["name"] == "http__get"
    page = tool_reply(third, "call_web")
    assert page["ok"] is True and page["result"]["status"] == 200, page
    assert json.loads(page["result"]["body"]) == {"page": "hello-page"}


# -- token and cost budgets -------------------------------------------------------------------------


BUDGET_ANSWERS: list[dict[str, Any]] = [
    {
        "tool_calls": [{"name": "echo", "arguments": {"n": 1}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 20},
    },
    {"content": "never reached"},
]


def test_max_tokens_stops_before_a_model_call_the_remaining_tokens_cannot_cover(
    fleet: Fleet, fake: FakeOpenAI
) -> None:
    fake.load("tokens", BUDGET_ANSWERS)
    # The first call's worst case fits exactly; the second's cannot (60 tokens used, and its
    # prompt is longer than the first).
    marker = new_marker("tokens")
    prompt = f"Count tokens. {marker}"
    budget = worst_case_tokens([{"role": "user", "content": prompt}])
    done = run_llm(fleet, prompt, max_tokens=budget)

    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_tokens"
    (request,) = fake.requests(marker)
    assert worst_case_tokens(request["body"]["messages"]) == budget  # what was reserved is what was sent
    assert done["usage"]["tokens"] == 60 <= budget
    assert [s["action"] for s in done["steps"]] == ["model", "tool"]

    # One token less, and not even the first call starts.
    marker = new_marker("tokens")
    prompt = f"Count tokens. {marker}"
    budget = worst_case_tokens([{"role": "user", "content": prompt}]) - 1
    done = run_llm(fleet, prompt, max_tokens=budget)

    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_tokens"
    assert fake.requests(marker) == []
    assert done["usage"]["tokens"] == 0
    assert done["usage"]["cost_usd"] == 0


def test_max_cost_stops_before_a_model_call_the_remaining_money_cannot_cover(
    fleet: Fleet, fake: FakeOpenAI
) -> None:
    fake.load("cost", BUDGET_ANSWERS)
    marker = new_marker("cost")
    prompt = f"Count money. {marker}"
    prompt_estimate = worst_case_tokens([{"role": "user", "content": prompt}]) - MAX_TOKENS_PER_CALL
    worst_micro = cost_micro(prompt_estimate, MAX_TOKENS_PER_CALL)
    done = run_llm(fleet, prompt, max_cost_usd=worst_micro / 1e6)

    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_cost"
    assert len(fake.requests(marker)) == 1
    assert done["usage"]["cost_usd"] == pytest.approx(cost_micro(40, 20) / 1e6)
    assert done["usage"]["cost_usd"] <= worst_micro / 1e6

    marker = new_marker("cost")
    prompt = f"Count money. {marker}"
    done = run_llm(fleet, prompt, max_cost_usd=(worst_micro - 1) / 1e6)

    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_cost"
    assert fake.requests(marker) == []
    assert done["usage"]["cost_usd"] == 0


def _worst_micro(prompt: str) -> int:
    """The worst case a first model call with this prompt reserves, in micro-dollars."""
    estimate = worst_case_tokens([{"role": "user", "content": prompt}]) - MAX_TOKENS_PER_CALL
    return cost_micro(estimate, MAX_TOKENS_PER_CALL)


def test_every_retry_is_reserved_so_retries_cannot_overshoot_max_cost(fleet: Fleet, fake: FakeOpenAI) -> None:
    # The budget covers one attempt's worst case. The 500 is settled at the worst case (it may
    # have been billed), so no retry may start: one request, and the run stops at its budget.
    fake.load("overshoot", [{"status": 500}, {"status": 500}, {"content": "third time lucky"}])
    marker = new_marker("overshoot")
    prompt = f"Retry me. {marker}"
    worst_micro = _worst_micro(prompt)
    done = run_llm(fleet, prompt, max_cost_usd=worst_micro / 1e6)

    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_cost"
    assert len(fake.requests(marker)) == 1
    assert done["usage"]["cost_usd"] == pytest.approx(worst_micro / 1e6)


def test_a_request_refused_with_429_is_settled_at_zero_so_its_retry_fits(
    fleet: Fleet, fake: FakeOpenAI
) -> None:
    fake.load(
        "refused",
        [
            {"status": 429},
            {"content": "after the refusal", "usage": {"prompt_tokens": 40, "completion_tokens": 20}},
        ],
    )
    marker = new_marker("refused")
    prompt = f"Refuse me once. {marker}"
    done = run_llm(fleet, prompt, max_cost_usd=_worst_micro(prompt) / 1e6)  # one worst case

    assert done["status"] == "succeeded", done
    assert done["output"] == "after the refusal"
    assert len(fake.requests(marker)) == 2
    assert done["usage"]["tokens"] == 60
    assert done["usage"]["cost_usd"] == pytest.approx(cost_micro(40, 20) / 1e6)


def test_an_attempt_that_timed_out_is_settled_at_the_worst_case(fleet: Fleet, fake: FakeOpenAI) -> None:
    # Room for one and a half worst cases: the timed-out attempt keeps its whole reservation, so the
    # retry cannot be covered and is never sent.
    fake.load("timed_out", [{"content": "too late", "delay_s": 5}, {"content": "never asked"}])
    marker = new_marker("timed_out")
    prompt = f"Time out. {marker}"
    worst_micro = _worst_micro(prompt)
    done = run_llm(fleet, prompt, max_cost_usd=1.5 * worst_micro / 1e6)

    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_cost"
    assert len(fake.requests(marker)) == 1
    assert done["usage"]["cost_usd"] == pytest.approx(worst_micro / 1e6)
    assert done["usage"]["tokens"] == worst_case_tokens([{"role": "user", "content": prompt}])


def test_tool_costs_count_against_the_runs_max_cost(fleet: Fleet) -> None:
    # test.sleep costs $0.30 a call (tools.costs_usd): three fit in $1.00, the fourth is not made.
    plan = [{"tool": "test.sleep", "args": {"seconds": 0}} for _ in range(4)] + [{"final": "spent"}]
    run_id = str(fleet.submit(agent="scripted", input={"plan": plan}, budgets={"max_cost_usd": 1.0})["id"])
    RUN_IDS.append(run_id)
    done = fleet.wait(run_id, timeout=60)

    assert done["status"] == "stopped", done
    assert done["stop_reason"] == "max_cost"
    assert done["usage"]["tool_calls"] == 3
    assert done["usage"]["cost_usd"] == pytest.approx(3 * SLEEP_COST_USD)


# -- governance: max_spend_usd_per_day ----------------------------------------------------------------


@pytest.mark.parametrize("value", [1e303, 1_000_001])
def test_a_daily_spend_limit_over_the_cap_is_a_422_and_stores_nothing(fleet: Fleet, value: float) -> None:
    with httpx.Client(base_url=fleet.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        resp = admin.put("/v1/admin/policies/llm", json={"max_spend_usd_per_day": value})
        assert resp.status_code == 422, resp.text
        assert "max_spend_usd_per_day" in resp.json()["error"]["message"]
        stored = admin.get("/v1/admin/policies/llm").json()
    assert stored["max_spend_usd_per_day"] is None


def set_policy(fleet: Fleet, max_spend_usd_per_day: float | None) -> None:
    """The `llm` agent's daily spend limit, through the admin API (None: no limit)."""
    with httpx.Client(base_url=fleet.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        resp = admin.put("/v1/admin/policies/llm", json={"max_spend_usd_per_day": max_spend_usd_per_day})
    assert resp.status_code == 200, resp.text


def spent_today(fleet: Fleet, fake: FakeOpenAI) -> float:
    """What the `llm` agent has spent today as its policy counts it, read from the step log: the
    quota decision of a tool call shows what is left of a (huge, temporary) daily limit."""
    huge_usd = 1000.0
    fake.load(
        "probe",
        [
            {"tool_calls": [{"name": "echo", "arguments": {}}]},
            {"content": "probed", "usage": {"prompt_tokens": 0, "completion_tokens": 0}},
        ],
    )
    set_policy(fleet, huge_usd)
    try:
        probe = run_llm(fleet, f"Probe. {new_marker('probe')}")
    finally:
        set_policy(fleet, None)
    assert probe["status"] == "succeeded", probe
    (echo,) = [s for s in probe["steps"] if s["action"] == "tool"]
    return float(huge_usd - echo["decision"]["remaining"]["spend_usd_today"])


def test_ten_concurrent_runs_never_overshoot_the_agents_daily_spend_together(
    fleet: Fleet, fake: FakeOpenAI
) -> None:
    # Each call reserves its worst case (about $0.58) before it starts and costs $0.50: two fit in
    # the $1.20 left of the limit at once, and a third never may. Slow answers keep the calls in
    # flight together.
    usage = {"prompt_tokens": 300, "completion_tokens": 100}
    fake.load("spend", [{"content": "spent", "usage": usage, "delay_s": 1.0}])
    one_call = cost_micro(300, 100) / 1e6
    headroom_usd = 1.2
    limit_usd = round(max(0.0, spent_today(fleet, fake)) + headroom_usd, 6)
    set_policy(fleet, limit_usd)
    try:
        markers = [new_marker("spend") for _ in range(10)]
        with ThreadPoolExecutor(max_workers=10) as pool:
            run_ids = list(pool.map(lambda m: submit(fleet, f"Spend. {m}"), markers))
        runs = [fleet.wait(run_id, timeout=90) for run_id in run_ids]
    finally:
        set_policy(fleet, None)

    allowed = [r for r in runs if r["status"] == "succeeded"]
    refused = [r for r in runs if r["status"] != "succeeded"]
    total = sum(r["usage"]["cost_usd"] for r in runs)
    assert total <= headroom_usd + 1e-6, [(r["status"], r["usage"]) for r in runs]
    assert 1 <= len(allowed) <= 2, [(r["status"], r["usage"], r["error"]) for r in runs]
    assert len(refused) >= 8
    for run, marker in zip(runs, markers, strict=True):
        received = fake.requests(marker)
        if run["status"] == "succeeded":
            assert run["output"] == "spent"
            assert run["usage"]["cost_usd"] == pytest.approx(one_call)
            assert len(received) == 1
        else:
            assert run["status"] == "failed", run
            assert run["error"]["type"] == "model_error", run["error"]
            assert "max_spend_usd_per_day" in run["error"]["message"], run["error"]
            assert received == [], "a refused model call must never reach the model"


def test_model_spend_counts_toward_the_agents_daily_spend_policy(fleet: Fleet, fake: FakeOpenAI) -> None:
    limit_usd = 5.0
    fake.load(
        "counts",
        [
            {"tool_calls": [{"name": "echo", "arguments": {"n": 1}}], "usage": {"prompt_tokens": 30}},
            {"tool_calls": [{"name": "echo", "arguments": {"n": 2}}], "usage": {"prompt_tokens": 50}},
            {"content": "counted"},
        ],
    )
    # Model calls made while the agent had no policy: they must give it no extra room later.
    before = run_llm(fleet, f"Before the policy. {new_marker('counts')}")
    assert before["status"] == "succeeded", before
    set_policy(fleet, limit_usd)
    try:
        done = run_llm(fleet, f"Under the policy. {new_marker('counts')}")
    finally:
        set_policy(fleet, None)

    assert done["status"] == "succeeded", done
    echo_1, echo_2 = [s for s in done["steps"] if s["action"] == "tool"]
    left_1 = echo_1["decision"]["remaining"]["spend_usd_today"]
    left_2 = echo_2["decision"]["remaining"]["spend_usd_today"]
    # After the first model call, what is left of today's spend is at most the limit less its cost;
    # between the two echo calls, exactly the second model call's cost was spent.
    assert left_1 <= limit_usd - cost_micro(30, 5) / 1e6 + 1e-6, (left_1, done["steps"])
    assert left_1 - left_2 == pytest.approx(cost_micro(50, 5) / 1e6, abs=1e-6), done["steps"]


# -- resuming after a worker dies --------------------------------------------------------------------


def test_sigkilled_worker_resumes_without_asking_the_model_again_for_a_recorded_answer(
    fleet: Fleet, fake: FakeOpenAI
) -> None:
    fake.load(
        "resume",
        [
            {"tool_calls": [{"name": "test__sleep", "arguments": {"seconds": 3}}]},
            {"content": "resumed after the kill"},
        ],
    )
    marker = new_marker("resume")
    run_id = submit(fleet, f"Sleep a while. {marker}")

    def waiting_on_the_tool() -> bool:
        run = fleet.get(run_id)
        return bool(run["status"] == "running" and run["usage"]["tool_calls"] == 1)

    wait_for(waiting_on_the_tool, 30, f"the run never called test.sleep: {fleet.get(run_id)}")
    time.sleep(0.5)  # the tool call is on its way; the run waits for its reply
    assert len(fake.requests(marker)) == 1
    (worker,) = [p for p in fleet.procs if p.name == "worker"]
    children = fleet.pool_children(worker)
    assert children
    for child in children:  # only this run is in flight: the child that runs it is among them
        child.send_signal(signal.SIGKILL)
    for child in children:
        child.wait(timeout=10)

    done = fleet.wait(run_id, timeout=60)
    assert done["status"] == "succeeded", done
    assert done["output"] == "resumed after the kill"
    first, second = fake.requests(marker)  # the first answer was replayed, not asked for again
    assert first["body"]["messages"] == [{"role": "user", "content": f"Sleep a while. {marker}"}]
    assert tool_reply(second, "call_1") == {"ok": True, "result": {"slept": 3}}
    assert [(s["step"], s["action"]) for s in done["steps"]] == [(1, "model"), (2, "tool"), (3, "model")]
    assert done["usage"]["tool_calls"] == 1
    assert done["usage"]["tokens"] == 2 * (10 + 5)


# -- malformed answers --------------------------------------------------------------------------------


def test_malformed_answers_go_back_to_the_model_as_errors_and_the_agent_recovers(
    fleet: Fleet, fake: FakeOpenAI
) -> None:
    fake.load(
        "malformed",
        [
            {"tool_calls": [{"name": "echo", "arguments": "{not json"}]},
            {"tool_calls": [{"name": "rm_rf", "arguments": {}}]},
            {"choices": []},
            {"content": "recovered"},
        ],
    )
    marker = new_marker("malformed")
    done = run_llm(fleet, f"Misbehave. {marker}")

    assert done["status"] == "succeeded", done
    assert done["output"] == "recovered"
    assert done["usage"]["tool_calls"] == 0
    _, after_bad_json, after_unknown_tool, after_no_choice = fake.requests(marker)

    reply = tool_reply(after_bad_json, "call_1")
    assert reply["ok"] is False and reply["error"]["type"] == "invalid_args", reply
    assert "not valid JSON" in reply["error"]["message"]

    last = after_unknown_tool["body"]["messages"][-1]
    assert last["role"] == "tool" and last["tool_call_id"] == "call_1", last
    reply = json.loads(last["content"])
    assert reply["ok"] is False and "rm_rf" in reply["error"]["message"], reply
    assert "echo" in reply["error"]["message"]  # it names the tools the model may call

    last = after_no_choice["body"]["messages"][-1]
    assert last["role"] == "user" and "could not be used" in last["content"], last


def test_model_that_keeps_answering_malformed_output_fails_the_run_model_output_invalid(
    fleet: Fleet, fake: FakeOpenAI
) -> None:
    fake.load("always_bad", [{"tool_calls": [{"name": "echo", "arguments": "[1, 2]"}]}])
    marker = new_marker("always_bad")
    done = run_llm(fleet, f"Keep misbehaving. {marker}")

    assert done["status"] == "failed", done
    assert done["stop_reason"] == "error"
    assert done["error"]["type"] == "model_output_invalid", done["error"]
    assert len(fake.requests(marker)) == MAX_INVALID_ANSWERS + 1
    assert done["usage"]["tool_calls"] == 0


# -- the model service failing ------------------------------------------------------------------------


def test_429_with_retry_after_is_retried_no_sooner_than_it_says(fleet: Fleet, fake: FakeOpenAI) -> None:
    fake.load("rate_limited", [{"status": 429, "retry_after": "1"}, {"content": "after the 429"}])
    marker = new_marker("rate_limited")
    done = run_llm(fleet, f"Be patient. {marker}")

    assert done["status"] == "succeeded", done
    assert done["output"] == "after the 429"
    first, second = fake.requests(marker)
    assert second["t"] - first["t"] >= 1.0, second["t"] - first["t"]
    assert second["body"] == first["body"]


def test_persistent_500s_are_retried_then_fail_the_run_model_error(fleet: Fleet, fake: FakeOpenAI) -> None:
    fake.load("broken", [{"status": 500}])
    marker = new_marker("broken")
    done = run_llm(fleet, f"Break. {marker}")

    assert done["status"] == "failed", done
    assert done["stop_reason"] == "error"
    assert done["error"]["type"] == "model_error", done["error"]
    assert "500" in done["error"]["message"]
    requests = fake.requests(marker)
    assert len(requests) == 1 + RETRIES
    # A 5xx may come from a proxy whose upstream processed the request: each attempt is settled
    # at its worst case.
    worst_tokens = worst_case_tokens(requests[0]["body"]["messages"])
    worst_micro = cost_micro(worst_tokens - MAX_TOKENS_PER_CALL, MAX_TOKENS_PER_CALL)
    assert done["usage"]["tokens"] == (1 + RETRIES) * worst_tokens
    assert done["usage"]["cost_usd"] == pytest.approx((1 + RETRIES) * worst_micro / 1e6)


def test_slow_answer_past_the_timeout_is_retried_and_the_run_goes_on(fleet: Fleet, fake: FakeOpenAI) -> None:
    fake.load("slow", [{"content": "too late", "delay_s": 5}, {"content": "in time"}])
    marker = new_marker("slow")
    done = run_llm(fleet, f"Take your time. {marker}")

    assert done["status"] == "succeeded", done
    assert done["output"] == "in time"
    first, second = fake.requests(marker)
    assert second["t"] - first["t"] >= LLM_TIMEOUT_MS / 1000, second["t"] - first["t"]


def test_a_slow_model_answer_parks_the_run_and_its_attempt_is_settled_once(
    fleet: Fleet, fake: FakeOpenAI
) -> None:
    fake.load(
        "parked",
        [
            {
                "content": "after a while",
                "delay_s": 1.5,
                "usage": {"prompt_tokens": 30, "completion_tokens": 9},
            }
        ],
    )
    marker = new_marker("parked")
    run_id = submit(fleet, f"Think slowly. {marker}")
    wait_for(lambda: fleet.r.hget(f"fleet:run:{run_id}", "parked") == "1", 10, "the run did not park")
    done = fleet.wait(run_id, timeout=30)

    assert (done["status"], done["output"]) == ("succeeded", "after a while"), done
    assert len(fake.requests(marker)) == 1
    assert done["usage"]["tokens"] == 30 + 9  # settled at what it cost, once, by the resume
    assert done["usage"]["cost_usd"] == pytest.approx(cost_micro(30, 9) / 1e6)


@pytest.mark.parametrize("switch", ["llm", f"llm:{MODEL}"])
def test_kill_switch_on_the_model_refuses_the_call_before_it_reaches_the_server(
    fleet: Fleet, fake: FakeOpenAI, switch: str
) -> None:
    fake.load("killed", [{"content": "must not be asked"}])
    key = f"fleet:kill:tool:{switch}"
    fleet.r.set(key, "incident 7")
    try:
        marker = new_marker("killed")
        done = run_llm(fleet, f"Try. {marker}")
    finally:
        fleet.r.delete(key)

    assert done["status"] == "failed", done
    assert done["error"]["type"] == "model_error", done["error"]
    assert "incident 7" in done["error"]["message"]
    assert fake.requests(marker) == []
    assert done["usage"]["tokens"] == 0


def test_error_answer_quoting_the_key_does_not_carry_it_into_the_run(fleet: Fleet, fake: FakeOpenAI) -> None:
    fake.load("bad_key", [{"status": 401, "echo_auth": True}])
    marker = new_marker("bad_key")
    done = run_llm(fleet, f"Leak. {marker}")

    assert done["status"] == "failed", done
    assert done["error"]["type"] == "model_error", done["error"]
    assert len(fake.requests(marker)) == 1  # a 401 is not retried
    assert API_KEY not in json.dumps(done)


# -- the key ------------------------------------------------------------------------------------------


def redis_text(r: redis.Redis) -> Iterator[str]:
    """Every value in Redis, as text."""
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == "string":
            yield str(r.get(key))
        elif kind == "hash":
            yield json.dumps(r.hgetall(key))
        elif kind == "list":
            yield json.dumps(r.lrange(key, 0, -1))
        elif kind == "set":
            yield json.dumps(sorted(r.smembers(key)))
        elif kind == "zset":
            yield json.dumps(r.zrange(key, 0, -1))
        elif kind == "stream":
            yield json.dumps(r.xrange(key))


def test_api_key_is_sent_to_the_model_and_never_appears_in_runs_logs_or_redis(
    fleet: Fleet, fake: FakeOpenAI
) -> None:
    fake.load("key", [{"content": "keyless"}])
    done = run_llm(fleet, f"Anything. {new_marker('key')}")
    assert done["status"] == "succeeded", done

    received = fake.requests()
    assert received
    for request in received:  # the key went where it belongs, in the header, and only there
        assert request["headers"].get("Authorization") == f"Bearer {API_KEY}"
        assert API_KEY not in json.dumps(request["body"])
    assert len(RUN_IDS) >= 10
    with fleet.client() as api:
        for run_id in RUN_IDS:
            resp = api.get(f"/v1/runs/{run_id}", params={"steps": "true"})
            assert resp.status_code == 200 and resp.json()["status"] in TERMINAL, resp.text
            assert API_KEY not in resp.text, run_id
    for proc in fleet.procs:
        text = proc.text()
        assert text, f"{proc.name} logged nothing"
        assert API_KEY not in text, f"the key is in the log of {proc.name}"
    for value in redis_text(fleet.r):
        assert API_KEY not in value
