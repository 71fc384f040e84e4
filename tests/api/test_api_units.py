"""Unit tests of the API's pure helpers and of its Redis logic on fakeredis (Lua and pub/sub):
wait slots, the end waiter, the metrics' switch scopes. The HTTP behaviour is tested against
real `fleet api` processes in tests/api/test_api_limits.py."""

from __future__ import annotations

import asyncio
import time

import fakeredis
import pytest

from api.metrics import known_models, switch_scopes
from api.routes.runs import _not_found
from api.waiter import EndWaiter
from api.waitslots import KEPT_HOLD_S, WaitersFull, WaitSlots
from worker.keys import Keys
from worker.obs.heartbeat import count_kinds
from worker.settings import Settings

KEYS = Keys("fleet")


def test_switch_scopes_name_every_known_tool_model_agent_and_tenant() -> None:
    scopes = switch_scopes(["echo", "llm"], ["gpt-x"], ["scripted"], ["acme"])
    assert scopes == [
        "all",
        "writes",
        "tool:echo",
        "tool:llm",
        "tool:llm:gpt-x",
        "agent:scripted",
        "tenant:acme",
    ]


def test_known_models_come_from_agents_and_their_versions() -> None:
    settings = Settings(agents={"llm": {"model": "m-1", "versions": {"v2": {"model": "m-2"}}}, "other": {}})
    models = known_models(settings)
    assert {"m-1", "m-2"} <= set(models)
    assert "gpt-4o-mini" in models  # the llm agent's default


def test_count_kinds_counts_workers_by_kind() -> None:
    assert count_kinds(["agent:a@h", "tool:t@h", "agent:b@h"]) == {"agent": 2, "tool": 1}
    assert count_kinds([]) == {"agent": 0, "tool": 0}


def test_not_found_echoes_a_well_formed_id_only() -> None:
    good = "0123456789abcdef" * 2
    assert good in _not_found(good).message
    hostile = "<script>" + "x" * 100
    assert hostile not in _not_found(hostile).message


def test_wait_slots_cap_a_tenant_and_free_on_exit() -> None:
    async def scenario() -> None:
        r = fakeredis.FakeAsyncRedis(decode_responses=True)
        slots = WaitSlots(r, KEYS, limit=2)
        async with slots.slot("acme", 10), slots.slot("acme", 10):
            with pytest.raises(WaitersFull) as full:
                async with slots.slot("acme", 10):
                    pass
            assert full.value.held == 2
            async with slots.slot("globex", 10):  # another tenant's slots are apart
                pass
        assert await r.zcard(KEYS.waiters("acme")) == 0
        async with slots.slot("acme", 10):
            pass

    asyncio.run(scenario())


def test_a_lapsed_slot_no_longer_counts() -> None:
    async def scenario() -> None:
        r = fakeredis.FakeAsyncRedis(decode_responses=True)
        slots = WaitSlots(r, KEYS, limit=1)
        await r.zadd(KEYS.waiters("acme"), {"crashed-replica": time.time() - 1})
        async with slots.slot("acme", 10):
            assert await r.zrange(KEYS.waiters("acme"), 0, -1) != ["crashed-replica"]

    asyncio.run(scenario())


def test_no_limit_takes_no_slot() -> None:
    async def scenario() -> None:
        r = fakeredis.FakeAsyncRedis(decode_responses=True)
        async with WaitSlots(r, KEYS, limit=0).slot("acme", 10):
            assert await r.exists(KEYS.waiters("acme")) == 0

    asyncio.run(scenario())


def test_kept_slots_are_renewed_together_and_a_lapsed_one_is_marked() -> None:
    async def scenario() -> None:
        r = fakeredis.FakeAsyncRedis(decode_responses=True)
        slots = WaitSlots(r, KEYS, limit=3)
        first, second = await slots.take_kept("acme"), await slots.take_kept("acme")
        key = KEYS.waiters("acme")
        await r.zadd(key, {first.member: time.time() + 1, second.member: time.time() + 1})
        await r.zrem(key, second.member)  # as if its holder had been away past its length
        await slots.renew_kept()
        assert await r.zscore(key, first.member) > time.time() + KEPT_HOLD_S  # type: ignore[operator]
        assert not first.lapsed and second.lapsed
        assert await r.zscore(key, second.member) is None  # a lapsed slot is not taken back
        await first.release()
        await second.release()
        assert slots.kept == set() and await r.zcard(key) == 0
        await slots.renew_kept()  # nothing kept: nothing to do
        await slots.close()

    asyncio.run(scenario())


def _waiter_case(publish: bool, gone_after_s: float | None, timeout_s: float) -> float:
    """How long EndWaiter.wait took, with a run that never ends by its status."""

    async def scenario() -> float:
        r = fakeredis.FakeAsyncRedis(decode_responses=True)
        waiter = EndWaiter(r, KEYS.run_ended_channel("*"))
        reads = 0

        async def ended() -> bool:
            nonlocal reads
            reads += 1
            return False

        async def gone() -> None:
            await asyncio.sleep(gone_after_s if gone_after_s is not None else 3600)

        async def end_soon() -> None:
            await asyncio.sleep(0.3)
            await r.publish(KEYS.run_ended_channel("r1"), "succeeded")

        started = time.monotonic()
        publisher = asyncio.create_task(end_soon()) if publish else None
        await waiter.wait(KEYS.run_ended_channel("r1"), ended, timeout_s, gone=gone)
        took = time.monotonic() - started
        if publisher:
            await publisher
        await waiter.close()
        assert reads <= 3  # a wait re-reads only when the subscription may have missed the end
        return took

    return asyncio.run(scenario())


def test_end_waiter_wakes_on_the_runs_message() -> None:
    assert _waiter_case(publish=True, gone_after_s=None, timeout_s=10) < 5


def test_end_waiter_returns_when_the_client_is_gone() -> None:
    assert _waiter_case(publish=False, gone_after_s=0.3, timeout_s=10) < 5


def test_end_waiter_returns_at_its_timeout() -> None:
    took = _waiter_case(publish=False, gone_after_s=None, timeout_s=0.5)
    assert 0.5 <= took < 5
