"""Unit tests of the one kill-switch check (worker/control/killswitch.py) on fakeredis with Lua: the Lua
function and the Python reader decide alike, every script that reads switches uses them, and
every Lua script takes the keys it touches from KEYS. Real processes:
tests/worker/control/test_killswitch_paths.py.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
import re
import threading
from typing import Any

import fakeredis
import pytest

import worker
from tests.unit_parts import KEYS, InlineDispatcher, gateway
from worker.control import killswitch
from worker.gateway.calls import ToolAttempt
from worker.run.guard import RunStopped
from worker.run.store import AdmissionRefused, Budgets, RunStore
from worker.settings import Settings

STATES = (None, "", "incident 42")  # off, on without a reason, on with one
RUN_KEYS = killswitch.run_switch_keys(KEYS, "t1", "scripted")
TOOL_KEYS = killswitch.tool_switch_keys(KEYS, "llm", writes=True, model="m1")  # tool, model, writes
CHECK = killswitch.LUA_KILL_REASON + "return kill_reason(KEYS)"
FAILURE = {"ok": False, "error": {"type": "http_error", "message": "HTTP 503", "status": 503}}


def _set(r: fakeredis.FakeRedis, keys: list[str], values: tuple[str | None, ...]) -> None:
    r.delete(*keys)
    for key, value in zip(keys, values, strict=True):
        if value is not None:
            r.set(key, value)


@pytest.mark.parametrize("keys", [RUN_KEYS, TOOL_KEYS], ids=["run", "tool"])
def test_the_lua_and_the_python_check_agree_on_every_combination(
    r: fakeredis.FakeRedis, keys: list[str]
) -> None:
    for values in itertools.product(STATES, repeat=len(keys)):
        _set(r, keys, values)
        expected = next((v or killswitch.DEFAULT_REASON for v in values if v is not None), None)
        assert killswitch.kill_reason(r, keys) == expected, values
        assert (r.eval(CHECK, len(keys), *keys) or None) == expected, values


def test_the_switch_keys_are_the_documented_ones() -> None:
    assert RUN_KEYS == ["fleet:kill:all", "fleet:kill:tenant:t1", "fleet:kill:agent:scripted"]
    assert TOOL_KEYS == ["fleet:kill:tool:llm", "fleet:kill:tool:llm:m1", "fleet:kill:writes"]
    assert killswitch.tool_switch_keys(KEYS, "echo", writes=False) == ["fleet:kill:tool:echo"]
    assert killswitch.kill_reason(fakeredis.FakeRedis(), []) is None


def test_run_creation_and_run_start_read_the_run_switches_with_the_one_check(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    budgets = Budgets(max_steps=5, max_tool_calls=5, max_seconds=30)
    for n, values in enumerate(itertools.product(STATES, repeat=3)):
        _set(r, RUN_KEYS, values)
        expected = killswitch.kill_reason(r, RUN_KEYS)
        run_id = f"r{n}"
        try:
            store.create(
                run_id, tenant="t1", agent="scripted", input={}, budgets=budgets, metadata={},
                admission=("agents", RUN_KEYS, -1),
            )  # fmt: skip
            refused = None
        except AdmissionRefused as refusal:
            refused = refusal.detail
        assert refused == expected, values
        if refused is not None:
            r.delete(*RUN_KEYS)
            store.create(run_id, tenant="t1", agent="scripted", input={}, budgets=budgets, metadata={})
            _set(r, RUN_KEYS, values)
        assert store.start(run_id, "host:1:a").checks == (expected, None), values


class FlippingDispatcher(InlineDispatcher):
    """Answers every attempt with a retryable failure, and turns a switch on after the first."""

    def __init__(self, r: fakeredis.FakeRedis, settings: Settings, switch: str) -> None:
        super().__init__(r, settings, replies=[FAILURE] * 5)
        self.switch = switch

    def send(self, sent: ToolAttempt) -> None:
        super().send(sent)
        self.r.set(self.switch, "flipped mid-call")


@pytest.mark.parametrize(
    ("tool", "args", "switch"),
    [
        ("echo", {}, KEYS.kill_tool("echo")),
        # an idempotent write (it sends an idempotency key): it would be retried
        ("http.post", {"url": "http://127.0.0.1:9/x", "json": {}}, KEYS.kill_writes()),
    ],
)
def test_a_retry_after_the_flip_is_not_sent(
    r: fakeredis.FakeRedis, store: RunStore, tool: str, args: dict[str, Any], switch: str
) -> None:
    settings = Settings(tools={"allowlist": [tool], "retries": {"max": 2, "backoff_ms": [10, 10]}})
    dispatcher = FlippingDispatcher(r, settings, switch)
    outcome = gateway(r, store, settings, dispatcher).call("r1:1:0", tool, args)
    assert outcome.result == {"ok": False, "error": {"type": "killed", "message": "flipped mid-call"}}
    assert outcome.decision["decision"] == "denied"
    assert dispatcher.sent == [("r1:1:0", 0, tool)]


def test_a_run_switch_flipped_during_the_backoff_stops_the_run_before_the_retry(
    r: fakeredis.FakeRedis, store: RunStore
) -> None:
    settings = Settings(tools={"allowlist": ["echo"], "retries": {"max": 2, "backoff_ms": [10, 10]}})
    dispatcher = FlippingDispatcher(r, settings, KEYS.kill_tenant("t1"))
    with pytest.raises(RunStopped) as stop:
        gateway(r, store, settings, dispatcher).call("r1:1:0", "echo", {})
    assert (stop.value.stop_reason, stop.value.message) == ("killed", "flipped mid-call")
    assert len(dispatcher.sent) == 1


@pytest.mark.parametrize("switch", [KEYS.kill_tool("echo"), KEYS.kill_all()])
def test_a_send_after_a_rate_limit_wait_is_not_sent_once_the_switch_is_on(
    r: fakeredis.FakeRedis, store: RunStore, switch: str
) -> None:
    settings = Settings(tools={"allowlist": ["echo"], "rate_limits": {"echo": "2/s"}})
    dispatcher = InlineDispatcher(r, settings)
    gw = gateway(r, store, settings, dispatcher)
    assert gw.call("r1:1:0", "echo", {}).result["ok"]  # takes the slot: the next call waits ~0.5 s
    flip = threading.Timer(0.2, lambda: r.set(switch, "flipped during the wait"))
    flip.start()
    try:
        if switch == KEYS.kill_all():
            with pytest.raises(RunStopped):
                gw.call("r1:2:0", "echo", {})
        else:
            outcome = gw.call("r1:2:0", "echo", {})
            assert outcome.result["error"] == {"type": "killed", "message": "flipped during the wait"}
    finally:
        flip.join()
    assert r.hget(KEYS.stats_tools(), "rate_limit_waits|echo") == "1"  # it did wait for the slot
    assert [sent[0] for sent in dispatcher.sent] == ["r1:1:0"]


# -- every Lua script takes its keys through KEYS ---------------------------------------------------

KEY_COMMANDS_ALL_ARGS = {"MGET", "DEL", "EXISTS", "UNLINK", "TOUCH"}  # every argument is a key
NO_KEY_COMMANDS = {"TIME", "PUBLISH"}  # no key (PUBLISH names a channel)


def _scripts() -> dict[str, str]:
    """Every Lua text in the worker package: module-level strings that call Redis. The history's
    Alembic migrations are scripts Alembic runs (importing env.py runs a migration), not modules."""
    found: dict[str, str] = {}
    for info in pkgutil.walk_packages(worker.__path__, "worker."):
        if info.name.startswith("worker.history.migrations"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, str) and "redis.call(" in value:
                found[f"{info.name}.{name}"] = value
    return found


def _call_args(text: str, start: int) -> list[str]:
    """The top-level, comma-separated arguments of the call whose '(' is at `start`."""
    args, depth, current, quote = [], 0, "", ""
    for ch in text[start + 1 :]:
        if quote:
            current += ch
            quote = "" if ch == quote else quote
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                args.append(current.strip())
                return args
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        current += ch
    raise AssertionError(f"unbalanced call at {start}")


def key_violations(script: str) -> list[str]:
    """Key arguments of redis.call that are built in the script (concatenation), come from ARGV,
    are literals, or are locals assigned from either."""
    built = {
        m.group(1)
        for m in re.finditer(r"(?:local\s+)?(\w+)\s*=\s*([^\n]*)", script)
        if ".." in m.group(2) or "ARGV" in m.group(2)
    }
    found = []
    for m in re.finditer(r"redis\.p?call\(", script):
        args = _call_args(script, m.end() - 1)
        command = args[0].strip("'\"").upper()
        if command in NO_KEY_COMMANDS:
            continue
        keys = args[1:] if command in KEY_COMMANDS_ALL_ARGS else args[1:2]
        for key in keys:
            if ".." in key or "ARGV" in key or key[:1] in "'\"" or key in built:
                found.append(f"{command} {key}")
    return found


def test_the_key_scan_finds_keys_built_inside_a_script() -> None:
    assert key_violations("redis.call('GET', ARGV[1] .. run_id .. ':lease')") == [
        "GET ARGV[1] .. run_id .. ':lease'"
    ]
    assert key_violations("local lease = ARGV[2] .. id\nredis.call('PTTL', lease)") == ["PTTL lease"]
    assert key_violations("redis.call('MGET', KEYS[1], ARGV[7] .. tenant)") == ["MGET ARGV[7] .. tenant"]
    assert key_violations("redis.call('HGET', KEYS[1], 'a' .. ARGV[1])") == []  # a field, not a key
    assert key_violations("redis.call('MGET', unpack(switch_keys))") == []


def test_every_lua_script_takes_the_keys_it_touches_from_keys() -> None:
    scripts = _scripts()
    assert {
        "worker.run.store._START",
        "worker.run.lease._REAP",
        "worker.gateway.checks.SCRIPT",
    } <= scripts.keys()
    assert {name: key_violations(text) for name, text in scripts.items() if key_violations(text)} == {}
