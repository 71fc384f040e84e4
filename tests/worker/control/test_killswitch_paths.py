"""Kill switches hold on every path (CONTRACT.md "Additions (December)"): once `kill:writes`,
`kill:tool:<t>` or `kill:tool:llm` is on, no new request of that kind leaves the fleet: not a
retry, not a call that was queued, not a send after a rate-limit wait.

Real parts only: a redis-server, `fleet api`, a prefork `fleet worker`, `fleet tool-worker`
processes, a local HTTP server that records every request (tools) and `tests.fake_openai` (the
model). Each test flips a switch with a plain Redis client while a call is in one of the three
shapes, then counts the requests that reached the server after the flip: 0.

`kill:writes` is exercised with `http.post` (a write), `kill:tool:<t>` with `http.get`, and
`kill:tool:llm` with the `llm` agent's model calls. Both HTTP tools and the model are limited to
20/m (one call per 3 s), which gives the rate-limit shape a wait to flip the switch in.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from tests.harness import CountingServer, FakeOpenAI, Fleet, RedisServer, wait_for
from worker.keys import Keys, tool_queue

KEYS = Keys("fleet")
MODEL = "fake-model"
RATE = "20/m"
RATE_INTERVAL_S = 3.0
REASON = "incident 42"
KINDS = {  # switch kind -> (its key, the tool it refuses here)
    "writes": (KEYS.kill_writes(), "http.post"),
    "tool": (KEYS.kill_tool("http.get"), "http.get"),
    "llm": (KEYS.kill_tool("llm"), "llm"),
}


@pytest.fixture(scope="module")
def fleet(fake: FakeOpenAI) -> Iterator[Fleet]:
    """API, one agent worker of 4 processes, one tool worker; retries on, breaker out of the way."""
    config = {
        "runtime": {"env": {"AGENT_MAX_COST_USD": 10}},
        "agents": {
            "llm": {
                "base_url": f"{fake.url}/v1",
                "model": MODEL,
                "max_tokens_per_call": 50,
                "requests_per_minute": 20,
            },
        },
        "tools": {
            "allowlist": ["echo", "http.get", "http.post"],
            "timeouts_ms": {"default": 10000},
            "retries": {"max": 2, "backoff_ms": [50, 50]},
            "rate_limits": {"http.get": RATE, "http.post": RATE},
            "breaker": {"failure_threshold": 1000, "min_calls": 1000},
            "retry_budget": {"min_retries": 1000},
        },
    }
    server = RedisServer()
    f = Fleet(server, config, {"OPENAI_API_KEY": "sk-test-" + uuid.uuid4().hex, "OPENAI_BASE_URL": ""})
    try:
        f.start(workers=1, concurrency=4)
        yield f
    finally:
        f.close()
        server.close()


@pytest.fixture(autouse=True)
def clean_slate(fleet: Fleet) -> Iterator[None]:
    """Every test starts with its switches off and the rate limits' schedules empty."""
    yield
    for pattern in (KEYS.kill_pattern(), KEYS.rate_limit("*")):
        for key in list(fleet.r.scan_iter(match=pattern)):
            fleet.r.delete(key)


# -- helpers ---------------------------------------------------------------------------------------


class Shape:
    """One run of one switch kind: submits it, flips the switch, reads what reached the server."""

    def __init__(self, fleet: Fleet, http_server: CountingServer, fake: FakeOpenAI, kind: str) -> None:
        self.fleet, self.http, self.fake = fleet, http_server, fake
        self.switch, self.tool = KINDS[kind]
        self.tag = uuid.uuid4().hex
        self.flipped_at: float | None = None
        self.run_id = ""

    def submit_tool_run(self, paths: list[str]) -> None:
        """A scripted run: one call of the tool per path, then `final`."""
        plan: list[dict[str, Any]] = []
        for path in paths:
            url = self.http.url(f"{path}/{self.tag}")
            args = {"url": url, "json": {"n": 1}} if self.tool == "http.post" else {"url": url}
            plan.append({"tool": self.tool, "args": args})
        plan.append({"final": "done"})
        self.run_id = self.fleet.submit(input={"plan": plan})["id"]

    def submit_model_run(self, answers: list[dict[str, Any]]) -> None:
        """An llm run whose model answers come from the fake server's scenario for this run."""
        scenario = f"k{self.tag}"
        self.fake.load(scenario, answers)
        prompt = f"scenario:{scenario}:{self.tag}"
        self.run_id = self.fleet.submit(agent="llm", input={"prompt": prompt})["id"]

    def arrivals(self) -> list[float]:
        """When each request of this run reached its server (tool calls or model calls)."""
        if self.tool == "llm":
            return [float(r["t"]) for r in self.fake.requests(f"scenario:k{self.tag}:{self.tag}")]
        with self.http.lock:
            return [r["t"] for r in self.http.requests if self.tag in r["path"]]

    def flip(self) -> None:
        self.flipped_at = time.time()
        self.fleet.r.set(self.switch, REASON)

    def after_flip(self) -> int:
        assert self.flipped_at is not None
        return sum(1 for t in self.arrivals() if t >= self.flipped_at)

    def wait(self) -> dict[str, Any]:
        return self.fleet.wait(self.run_id, timeout=45)


def assert_killed_and_went_on(shape: Shape, run: dict[str, Any], step: int) -> None:
    """The call at `step` answered `killed` with the switch's reason, and the run went on: a
    scripted run to its `final`; the llm agent ends a run whose model call failed."""
    entry = run["steps"][step - 1]
    assert (entry["tool"], entry["ok"], entry["error_type"]) == (shape.tool, False, "killed"), entry
    if shape.tool == "llm":
        assert run["status"] == "failed" and "killed" in run["error"]["message"], run
        assert REASON in run["error"]["message"], run
    else:
        assert (run["status"], run["output"]) == ("succeeded", "done"), run


def tool_workers(fleet: Fleet) -> list[Any]:
    return [p for p in fleet.procs if p.name == "tool-worker" and p.popen.poll() is None]


def stats(fleet: Fleet, field: str) -> int:
    return int(fleet.r.hget(KEYS.stats_tools(), field) or 0)


# -- (1) a retry after the flip ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_retry_after_the_flip_is_not_sent(
    fleet: Fleet, http_server: CountingServer, fake: FakeOpenAI, kind: str
) -> None:
    shape = Shape(fleet, http_server, fake, kind)
    if shape.tool == "llm":  # 503 with Retry-After: 2, so the retry comes >= 2 s later
        shape.submit_model_run([{"status": 503, "retry_after": "2"}, {"content": "never asked"}])
    else:
        shape.submit_tool_run(["/status/503"])  # the server adds Retry-After: 2
    wait_for(lambda: len(shape.arrivals()) >= 1, 20, f"the first attempt never arrived\n{fleet.logs()}")
    shape.flip()  # the first attempt is on the wire or answered; its retry has not been sent
    run = shape.wait()
    assert shape.after_flip() == 0
    assert len(shape.arrivals()) == 1
    assert_killed_and_went_on(shape, run, 1)


# -- (2) a call queued when the switch goes on ---------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_call_queued_before_the_flip_is_not_sent_by_the_tool_worker_that_takes_it(
    fleet: Fleet, http_server: CountingServer, fake: FakeOpenAI, kind: str
) -> None:
    for proc in tool_workers(fleet):
        fleet.stop_proc(proc)
    shape = Shape(fleet, http_server, fake, kind)
    if shape.tool == "llm":
        shape.submit_model_run([{"content": "never asked"}])
    else:
        shape.submit_tool_run(["/ok"])
    queue = tool_queue(shape.tool)
    wait_for(lambda: fleet.r.llen(queue) >= 1, 20, f"the call was never queued\n{fleet.logs()}")
    shape.flip()
    fleet.start_tool_worker()
    run = shape.wait()
    assert fleet.r.llen(queue) == 0  # the tool worker took the call, and answered it
    assert shape.after_flip() == 0
    assert shape.arrivals() == []
    assert_killed_and_went_on(shape, run, 1)


# -- (3) a send after a rate-limit wait ----------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_send_after_a_rate_limit_wait_is_not_made_once_the_switch_is_on(
    fleet: Fleet, http_server: CountingServer, fake: FakeOpenAI, kind: str
) -> None:
    shape = Shape(fleet, http_server, fake, kind)
    if shape.tool == "llm":
        waits = f"rate_limit_waits|llm:{MODEL}"
        before = stats(fleet, waits)
        echo = {"tool_calls": [{"name": "echo", "arguments": {"text": "x"}}]}
        shape.submit_model_run([echo, {"content": "never asked"}])  # two model calls, 3 s apart
        step = 3  # model call, echo, model call
    else:
        waits = f"rate_limit_waits|{shape.tool}"
        before = stats(fleet, waits)
        shape.submit_tool_run(["/ok/1", "/ok/2"])  # the second call waits ~3 s for its slot
        step = 2
    wait_for(lambda: stats(fleet, waits) > before, 20, f"no rate-limit wait began\n{fleet.logs()}")
    shape.flip()  # the second call waits for a slot it has already been given
    run = shape.wait()
    assert shape.after_flip() == 0
    assert len(shape.arrivals()) == 1
    assert_killed_and_went_on(shape, run, step)


# -- a tool worker refuses a call of no run ------------------------------------------------------------


def test_a_tool_worker_refuses_a_tool_call_whose_run_does_not_exist(
    fleet: Fleet, http_server: CountingServer
) -> None:
    """A `fleet.tool_call` sent by a plain Celery client (not by a run) runs nothing."""
    if not tool_workers(fleet):
        fleet.start_tool_worker()
    tag = uuid.uuid4().hex
    call_id = f"{tag}:1:0"
    client = Celery(broker=fleet.redis.url)
    try:
        args = {"url": http_server.url(f"/ok/{tag}")}
        client.send_task(
            "fleet.tool_call", args=[call_id, 0, "http.get", args, 3.0], queue=tool_queue("http.get")
        )
    finally:
        client.close()
    reply = fleet.r.blpop([KEYS.call_reply(call_id, 0)], timeout=20)
    assert reply is not None, fleet.logs()
    assert '"type": "denied"' in reply[1] and "does not exist" in reply[1], reply
    wait_for(lambda: "no such run" in "".join(p.text() for p in tool_workers(fleet)), 10, fleet.logs())
    with http_server.lock:
        assert [r for r in http_server.requests if tag in r["path"]] == []
