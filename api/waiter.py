"""Long-polls (`GET /v1/runs/{id}?wait=S`) and event streams (`GET /v1/runs/{id}/events`) share
one Redis pattern subscription per API process.

Everything here runs on the event loop with the asyncio Redis client, so a waiting request holds
no thread: the health routes and every other request stay served however many clients wait.
A waiting request registers an event for its run's channel; one task reads every published run
end and sets the events. Redis delivers every message to a subscription while it stays connected,
so a request re-reads its run only when that may have missed one: each time the subscription is
(re)established (also when redis-py re-subscribes a dropped connection by itself: every subscribe
confirmation counts), which wakes every waiting request, and every RECHECK_S while it is down. A wait
whose client disconnects ends at once. In between, a wait costs the event loop nothing: 500 of
them leave the health probes as fast as none.

An event stream `watch`es its run's channels (the events channel and the ended channel) the same
way and reads its new events when its event is set (api/events.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator

import redis
import redis.asyncio

RECHECK_S = 1.0  # re-read interval while the subscription is down


class EndWaiter:
    """Wakes requests waiting for runs to end (or for their events): one subscription to
    `patterns`."""

    def __init__(self, r: redis.asyncio.Redis, *patterns: str) -> None:
        self.r = r
        self.patterns = patterns
        self._events: dict[str, list[asyncio.Event]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.generation = 0  # counts subscriptions: a change means messages may have been missed

    async def _listen(self) -> None:
        while True:
            # Subscribe confirmations are kept: redis-py reconnects a dropped subscription by
            # itself and subscribes again, and each confirmation marks a (re)subscription.
            pubsub = self.r.pubsub(ignore_subscribe_messages=False)
            try:
                await pubsub.psubscribe(*self.patterns)
                while True:
                    message = await pubsub.get_message(timeout=RECHECK_S)
                    kind = message.get("type") if message else None
                    if kind == "pmessage":
                        for event in self._events.get(str(message["channel"]), ()):
                            event.set()
                    elif kind == "psubscribe":
                        self.generation += 1
                        self._subscribed.set()
                        self.wake_all()  # a run may have ended (or written an event) unheard: re-read
            except (redis.RedisError, OSError):
                self._subscribed.clear()
                await asyncio.sleep(RECHECK_S)  # Redis is away: waiters fall back on their re-checks
            finally:
                self._subscribed.clear()
                with contextlib.suppress(redis.RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    @property
    def subscribed(self) -> bool:
        """True while the subscription is established (no message can be missed)."""
        return self._subscribed.is_set()

    @contextlib.contextmanager
    def watch(self, *channels: str) -> Iterator[asyncio.Event]:
        """An event set by every message on `channels` and at every (re)subscription, for the
        duration of the block. Clear it before reading the state it guards: a message during the
        read sets it again."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="run-end-waiter")
        event = asyncio.Event()
        for channel in channels:
            self._events[channel].append(event)
        try:
            yield event
        finally:
            for channel in channels:
                self._events[channel].remove(event)
                if not self._events[channel]:
                    del self._events[channel]

    async def wait(
        self,
        channel: str,
        ended: Callable[[], Awaitable[bool]],
        timeout_s: float,
        gone: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Return when a message arrives on `channel`, `ended()` is true, `gone()` returns (the
        client left) or `timeout_s` passes. `ended` reads Redis, so it is called only when the
        subscription may have missed the run's end."""
        with self.watch(channel) as event:
            await self._wait(event, ended, timeout_s, gone)

    async def _wait(
        self,
        event: asyncio.Event,
        ended: Callable[[], Awaitable[bool]],
        timeout_s: float,
        gone: Callable[[], Awaitable[None]] | None,
    ) -> None:
        watcher = asyncio.create_task(_set_after(gone, event)) if gone is not None else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        checked = -1  # the subscription generation that the last `ended()` covered
        try:
            while True:
                subscribed = self._subscribed.is_set()
                if not subscribed or checked != self.generation:
                    checked = self.generation
                    event.clear()  # before the read: a message during it still wakes the wait
                    if await _ended_or_unknown(ended):
                        return
                left = deadline - loop.time()
                if left <= 0 or (watcher is not None and watcher.done()):
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left if subscribed else min(left, RECHECK_S)):
                        await event.wait()
                if event.is_set() and checked == self.generation and self._subscribed.is_set():
                    return  # the run's end was published (or the client left)
        finally:
            if watcher is not None:
                watcher.cancel()

    def wake_all(self) -> None:
        """Set every watcher's event (the server stops)."""
        for events in list(self._events.values()):
            for event in events:
                event.set()

    async def close(self) -> None:
        """Stop the subscription task (at the app's shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _ended_or_unknown(ended: Callable[[], Awaitable[bool]]) -> bool:
    """`ended()`, or False while Redis does not answer: a wait outlives a Redis restart."""
    try:
        return await ended()
    except (redis.RedisError, OSError):
        return False


async def _set_after(awaitable: Callable[[], Awaitable[None]], event: asyncio.Event) -> None:
    await awaitable()
    event.set()
