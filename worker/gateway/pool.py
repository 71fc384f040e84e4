"""The tool worker's event loop: one process holds thousands of tool calls in flight.

A tool call is I/O: it waits on an HTTP server or a model service for seconds. A thread per call
caps a process at a few hundred calls (its stack, the GIL's switching); here each call is a task
on one asyncio loop, run by one thread the process starts on its first call. The Celery task
(`fleet.tool_call`) only hands the call over and returns once the loop has begun it (so the
two threads do not compete for the CPU as the call starts), and Celery acks its message; a
process holds at most `tools.worker_max_inflight` calls, and past that the task waits for one to
finish before it hands its call over (its message stays unacked meanwhile: backpressure; it is
held in memory only, see `celery_app.tool_worker_transport`). Plain (non-async) tools run in a
pool of `tools.sync_threads` threads.

A tool worker that dies takes its calls in flight with it, and Celery does not redeliver them
(their messages were acked, and those it held unbegun were never recorded in Redis). That is
safe: the run waits for a reply up to the call's timeout plus `REPLY_GRACE_S`, then treats the
attempt as a timeout and retries under the gateway's rules; the exactly-once claim of
executor.py refuses to run a non-idempotent write twice, and a recorded result is replayed.

Shutdown: on SIGTERM (a warm shutdown; in the image, REMAP_SIGTERM makes it a cold one) Celery
stops consuming, then the `DrainToolCalls` worker step waits for the calls in flight, up to the
worker's `worker_soft_shutdown_timeout`, before the process exits; calls still running then are
lost with the process, like a crash's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog
from celery import bootsteps

if TYPE_CHECKING:  # celery_app registers DrainToolCalls: importing it must stay light for the API
    from worker.gateway.executor import Admitted, ToolExecutor

log = structlog.get_logger("agentfleet.tools")
HANDOVER_WAIT_S = 0.005  # at most this long, a Celery thread waits for the loop to begin its call
HANDOVER_WAIT_MAX_INFLIGHT = 4  # and only while the process holds at most this many calls


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
        owner: tuple[str, str] | None = None,
        traceparent: str | None = None,
    ) -> None:
        """Take the call's checks and slot here (the caller's thread: the loop's first step is
        then the tool), and hand it to the loop; blocks while the process already holds its
        maximum."""
        self._slots.acquire()
        try:
            loop = self._started()
            with self._lock:
                self._inflight += 1
                quiet = self._inflight <= HANDOVER_WAIT_MAX_INFLIGHT
            try:
                admitted = self._executor.admit(call_id, attempt, tool, args, timeout_s, owner)
            except Exception as exc:  # Redis down past the call's time: as a failure in _one
                log.error("tool call failed", tool=tool, attempt=attempt, error=type(exc).__name__)
                self._done()
                return
            # While the loop holds few calls, stand aside until it has begun this one (its first
            # wait: the tool's I/O, or the reply's round trip). Otherwise this thread goes on with
            # Celery's bookkeeping of the task (its trace, the ack) while the loop thread, just
            # woken, waits for the CPU and the GIL: bench_gateway timed that hand-over at 0.4 ms
            # (p50), a tenth of an `echo` call's round trip. A busy loop is not waited for: in a
            # burst the calls' intake matters more than one call's start.
            begun = threading.Event() if quiet else None
            coro = self._one(call_id, attempt, tool, args, timeout_s, trace_id, admitted, traceparent, begun)
            asyncio.run_coroutine_threadsafe(coro, loop)
            if begun is not None:
                begun.wait(HANDOVER_WAIT_S)
        except BaseException:
            self._done()
            raise

    def spawn(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        """Run `work` (I/O that is not a tool call: a webhook delivery) on the loop, under the same
        slots as the calls and waited for by `drain` like them; blocks while all slots are taken."""
        self._slots.acquire()
        counted = False
        try:
            loop = self._started()
            with self._lock:
                self._inflight += 1
            counted = True
            asyncio.run_coroutine_threadsafe(self._spawned(work, what), loop)
        except BaseException:
            work.close()
            if counted:
                self._done()
            else:
                self._slots.release()
            raise

    async def _spawned(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        try:
            await work
        except Exception as exc:  # Redis down: the work's own claim brings it back later
            log.error("task on the tool loop failed", what=what, error=type(exc).__name__)
        finally:
            self._done()

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
                self._executor.attach_loop(loop)
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
        self,
        call_id: str,
        attempt: int,
        tool: str,
        args: Any,
        timeout_s: float,
        trace_id: str | None,
        admitted: Admitted | None = None,
        traceparent: str | None = None,
        begun: threading.Event | None = None,
    ) -> None:
        if begun is not None:  # set once this task first waits: the loop runs the next callback then
            asyncio.get_running_loop().call_soon(begun.set)
        try:
            await self._executor.answer_async(
                call_id, attempt, tool, args, timeout_s, trace_id, admitted, traceparent
            )
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


_process_pool: ToolPool | None = None
_process_lock = threading.Lock()


def process_pool(make: Callable[[], ToolPool]) -> ToolPool:
    """The process's pool, made by `make` on its first tool call (agent workers never make one)."""
    global _process_pool
    with _process_lock:
        if _process_pool is None:
            _process_pool = make()
        return _process_pool


class DrainToolCalls(bootsteps.StartStopStep):
    """On shutdown, after the consumer and the Celery pool have stopped (this step starts before
    them, so it stops after them), wait for the calls the loop still holds. Runs on a warm stop
    and on a cold one (`terminate`) alike."""

    requires = ("celery.worker.components:Timer",)

    def stop(self, worker: Any) -> None:
        pool = _process_pool
        if pool is None or pool.inflight == 0:
            return
        timeout_s = float(worker.app.conf.worker_soft_shutdown_timeout or 0)
        log.info(
            "tool worker stopping: waiting for calls in flight", inflight=pool.inflight, timeout_s=timeout_s
        )
        left = pool.drain(timeout_s)
        if left:
            log.warning("tool worker stopped with calls in flight", inflight=left)

    def terminate(self, worker: Any) -> None:
        self.stop(worker)
