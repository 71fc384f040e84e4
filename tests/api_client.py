"""The fleet's HTTP API called as a client calls it: `POST /v1/runs`, the contract's error shape,
and a run's event stream read under a read timeout and an overall deadline, so a server that
never closes a stream fails the test instead of hanging it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from tests.harness import KEY_T1, Fleet


def post_run(fleet: Fleet, body: Any, key: str | None = KEY_T1, **kwargs: Any) -> httpx.Response:
    """POST /v1/runs with `body` as JSON (or raw `content=` / extra `headers=` in kwargs)."""
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if "content" not in kwargs:
        kwargs["json"] = body
    return httpx.post(f"{fleet.url}/v1/runs", headers=headers, timeout=40, **kwargs)


def assert_error(resp: httpx.Response, status: int) -> str:
    """The answer has `status` and the contract's error shape; returns the message."""
    assert resp.status_code == status, f"{resp.status_code}: {resp.text}"
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["type"], str) and body["error"]["type"], body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return str(body["error"]["message"])


READ_TIMEOUT_S = 20.0  # longer than the API's 15 s keep-alive: a silent stream is a broken one
STREAM_DEADLINE_S = 60.0


@dataclass(frozen=True)
class Event:
    id: str
    name: str
    data: Any

    @property
    def order(self) -> tuple[int, int]:
        ms, seq = self.id.split("-")
        return int(ms), int(seq)


def stream_client(key: str = KEY_T1) -> httpx.Client:
    timeout = httpx.Timeout(10.0, read=READ_TIMEOUT_S)
    return httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


class EventReader:
    """Reads the events of one open stream (comments skipped), a few at a time or until it closes."""

    def __init__(self, resp: httpx.Response) -> None:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
        self.lines = resp.iter_lines()  # one iterator: httpx closes the answer when it is dropped

    def take(self, count: int | None = None, deadline_s: float = STREAM_DEADLINE_S) -> list[Event]:
        """The next `count` events, or (None) every event until the server closes the stream."""
        deadline = time.monotonic() + deadline_s
        found: list[Event] = []
        fields: dict[str, list[str]] = {}
        for line in self.lines:
            assert time.monotonic() < deadline, f"the stream is still open after {deadline_s} s: {found}"
            if line.startswith(":"):
                continue
            if line == "":
                if fields:
                    data = "\n".join(fields.get("data", []))
                    found.append(
                        Event(fields["id"][0], fields["event"][0], json.loads(data) if data else None)
                    )
                    fields = {}
                    if count is not None and len(found) >= count:
                        return found
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
        assert count is None, f"the stream closed after {found}"
        return found
