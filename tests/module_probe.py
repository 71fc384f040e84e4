"""A test-only plugin that records what a prefork pool child imports for itself.

Loaded through the `plugins` setting (so in the worker's main process, with the task code). The
main process notes its modules right before the pool forks; each child notes the modules it
holds when it starts and, after every task, writes to `$TEST_MODULE_PROBE_DIR/child-<pid>.json` the
modules it imported that the main process had not, and how many objects it inherited frozen.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

from celery.signals import celeryd_after_setup, task_postrun, worker_process_init

_seen: dict[str, Any] = {}


@celeryd_after_setup.connect
def _note_parent(**_: Any) -> None:
    # Connected after worker.celery_app's own handler (this module is imported later), so this
    # sees the main process as the preload left it.
    _seen["parent"] = set(sys.modules)


@worker_process_init.connect
def _note_child(**_: Any) -> None:
    _seen["child_start"] = set(sys.modules)
    _seen["frozen_at_start"] = gc.get_freeze_count()
    _seen["tasks"] = 0


@task_postrun.connect
def _write(**_: Any) -> None:
    out_dir = os.environ.get("TEST_MODULE_PROBE_DIR")
    if not out_dir or "parent" not in _seen:
        return
    _seen["tasks"] += 1
    record = {
        "pid": os.getpid(),
        "tasks": _seen["tasks"],
        "frozen_at_start": _seen["frozen_at_start"],
        "imported_at_start": sorted(_seen["child_start"] - _seen["parent"]),
        "imported_by_tasks": sorted(set(sys.modules) - _seen["child_start"]),
    }
    Path(out_dir, f"child-{os.getpid()}.json").write_text(json.dumps(record))
