"""Readies a prefork worker's main process before its pool forks, so the children share its
memory instead of each copying it.

A forked child shares its parent's pages until it writes to them. Two things make a child write
to pages it only inherited, and this module removes the cheap part of both:

- what a child would build on its first run (imports, data tables loaded on first use) is built
  once here instead, in pages every child shares (`warm`);
- the garbage collector: a collection in a child walks every tracked object and writes to its GC
  header, which copies the page the object lives on. `gc.freeze()` moves the parent's objects
  into the permanent generation, which collections skip (the `gc` module's docs recommend it
  right before fork).

Reference counts still copy the pages of the objects a child uses: Python 3.11 has no immortal
objects. Nothing here opens a connection or starts a thread. What a child inherits must stay its
own to set up: Redis clients reset their pools in a new process, and the run keeper starts its
thread per process (worker/run/keeper.py).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import sys
from dataclasses import dataclass

import structlog

log = structlog.get_logger("agentfleet.preload")

# What a pool child imported that its parent had not, found by diffing a child's sys.modules after
# its first runs (scripted agent, `echo`, `final`) against the parent's right before the fork, on
# Celery 5.7: billiard's modules come with the child's start, Celery's Redis result backend with
# the first tool call it sends. worker.tasks (the task code, agents, tools, the gateway, httpx,
# pydantic, structlog) is Celery's `include`, imported before this runs; it is named so that it
# stays so. A module another Celery version lacks is skipped.
LAZY_MODULES: tuple[str, ...] = (
    "worker.tasks",
    "billiard.heap",
    "billiard.popen_fork",
    "billiard.sharedctypes",
    "billiard.synchronize",
    "celery.backends.asynchronous",
    "celery.backends.redis",
)


@dataclass(frozen=True)
class Preloaded:
    """What `prepare_fork` did: modules the process holds, objects it froze."""

    modules: int
    frozen_objects: int


def warm() -> None:
    """Import and load, in this process, what a pool child would otherwise load on its first run."""
    for name in LAZY_MODULES:
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(name)


def prepare_fork() -> Preloaded:
    """Warm the process, collect its garbage and freeze what is left; call it once, right
    before the pool forks. Garbage is collected first: cycles among frozen objects are never collected."""
    warm()
    gc.collect()
    gc.freeze()
    done = Preloaded(modules=len(sys.modules), frozen_objects=gc.get_freeze_count())
    log.info("prefork preload", modules=done.modules, frozen_objects=done.frozen_objects)
    return done


def is_prefork(pool_cls: object) -> bool:
    """True for Celery's prefork pool (or a subclass): the one pool that forks children."""
    from celery.concurrency.prefork import TaskPool

    return isinstance(pool_cls, type) and issubclass(pool_cls, TaskPool)
