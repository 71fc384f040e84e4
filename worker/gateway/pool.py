"""The tool worker's event loop: one process holds thousands of tool calls in flight.

A tool call is I/O: it waits on an HTTP server or a model service for seconds. A thread per call
caps a process at a few hundred calls (its stack, the GIL's switching); here each call is a task
on one asyncio loop, run by one thread the process starts on its first call. The Celery task
(`fleet.tool_call`) only hands the call over and returns, so Celery acks its message at once; a
process holds at most `tools.worker_max_inflight` calls, and past that the task waits for one to
finish before it hands its call over (its message stays unacked meanwhile: backpressure, nothing
lost). Plain (non-async) tools run in a pool of `tools.sync_threads` threads.

A tool worker that dies takes its calls in flight with it, and Celery does not redeliver them
(their messages were acked). That is safe: the run waits for a reply up to the call's timeout
plus `REPLY_GRACE_S`, then treats the attempt as a timeout and retries under the gateway's rules;
the exactly-once claim of executor.py refuses to run a non-idempotent write twice, and a recorded
result is replayed.

Shutdown: on SIGTERM Celery stops consuming, then `drain` waits for the calls in flight (up to
the worker's `worker_soft_shutdown_timeout`) before the process exits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import structlog

from worker.gateway.executor import ToolExecutor

log = structlog.get_logger("agentfleet.tools")


class ToolPool:
    """Runs `ToolExecutor.answer_async` for handed-over calls on a loop thread of its own."""

    def __init__(self, executor: ToolExecutor, max_inflight: int) -> None:
        self._executor = executor
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    def submit(
        self,
        call_id: str,
        attempt: int,
        tool: str,
        args: Any,
        timeout_s: float,
        trace_id: str | None = None,
    ) -> None:
        """Hand one call to the loop; blocks while the process already holds its maximum."""
        self._slots.acquire()
        try:
            loop = self._started()
            with self._lock:
                self._inflight += 1
            coro = self._one(call_id, attempt, tool, args, timeout_s, trace_id)
            asyncio.run_coroutine_threadsafe(coro, loop)
        except BaseException:
            self._done()
            raise

    def drain(self, timeout_s: float) -> int:
        """Wait until no call is in flight, at most `timeout_s`; the number still in flight."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._inflight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._idle.wait(left)
            return self._inflight

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name="tool-loop", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    async def _one(
        self, call_id: str, attempt: int, tool: str, args: Any, timeout_s: float, trace_id: str | None
    ) -> None:
        try:
            await self._executor.answer_async(call_id, attempt, tool, args, timeout_s, trace_id)
        except Exception as exc:
            # A Redis outage, most likely: no reply was pushed, so the run times the attempt out
            # and retries it under the gateway's rules.
            log.error("tool call failed", tool=tool, attempt=attempt, error=type(exc).__name__)
        finally:
            self._done()

    def _done(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()
        self._slots.release()


def sync_pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    """The threads that run plain (non-async) tools."""
    return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="tool-sync")
