"""PROTOTYPE, not part of the fleet: N GETs awaited at once on one httpx.AsyncClient in one process.

    .venv/bin/python bench/proto_async_tools.py N URL [--bare]

What an asyncio tool worker (issue 13, item 4) would hold per waiting call, for the memory figure
that `bench/bench_tool_pool.py` prints beside the real tool worker's pools. It first imports the
tool worker's modules (`worker.tasks`: the Celery app, the tools, the gateway; `--bare` skips
that), so its idle memory is comparable with a `fleet tool-worker`'s. It has no Celery consumer,
no gateway checks, no SSRF guard and no per-call deadline thread: only the loop and the client.

Prints `ready`, waits for a line on stdin, sends the N GETs, then prints their outcomes as JSON
(`{"ok": N}` when all answered 200). Needs REDIS_URL and FLEET_CONFIG unless `--bare`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60.0


async def get_all(url: str, count: int) -> Counter[str]:
    """GET `url` `count` times at once on one client; the outcomes by kind."""
    # httpx caps a client at 100 connections by default: every call needs its own.
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT_S, trust_env=False) as client:

        async def get() -> str:
            try:
                response = await client.get(url)
            except httpx.HTTPError as exc:
                return type(exc).__name__
            return "ok" if response.status_code == 200 else "http_error"

        return Counter(await asyncio.gather(*(get() for _ in range(count))))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    count, url = int(argv[0]), argv[1]
    if "--bare" not in argv:
        sys.path.insert(0, str(ROOT))
        import worker.tasks  # noqa: F401

    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps(asyncio.run(get_all(url, count))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
