"""kombu's Redis transport's record of the messages workers hold unacked: which run a held
`fleet.run_agent` message is for (the reaper looks for deliveries stuck with a dead worker)."""

from __future__ import annotations

import base64
import json

KOMBU_UNACKED, KOMBU_UNACKED_INDEX = "unacked", "unacked_index"  # kombu's Redis transport


def unacked_run_id(raw: str | bytes | None, task_name: str) -> str | None:
    """The run id of a kombu `unacked` entry holding a `task_name` message, else None."""
    try:
        payload = json.loads(raw)[0] if raw else None
        if payload is None or payload.get("headers", {}).get("task") != task_name:
            return None
        return str(json.loads(base64.b64decode(payload["body"]))[0][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
