from __future__ import annotations

from tests.harness import Fleet


def test_tool_call_and_final_succeed_with_every_field_of_the_contract(fleet: Fleet) -> None:
    run = fleet.submit(input={"plan": [{"tool": "echo", "args": {"x": 1}}, {"final": "done"}]})
    assert run["status"] == "queued"
    done = fleet.wait(run["id"])
    assert done["status"] == "succeeded"
    assert done["stop_reason"] == "finish"
    assert done["output"] == "done"
    assert done["usage"]["steps"] == 2 and done["usage"]["tool_calls"] == 1
    expected = {"id", "agent", "tenant", "status", "stop_reason", "output", "error", "usage", "budgets",
                "created_at", "started_at", "finished_at"}  # fmt: skip
    assert expected <= set(done)
    assert set(done["usage"]) >= {"steps", "tool_calls", "seconds"}
    assert done["steps"][0]["tool"] == "echo" and done["steps"][0]["ok"] is True
    for stamp in ("created_at", "started_at", "finished_at"):
        assert done[stamp].endswith("Z") and "T" in done[stamp]
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
