"""The bare FastAPI baseline of bench/bench_core.py: one `def` endpoint that only calls `send_task`.

Served like `fleet api` serves the real API: one uvicorn process, the same log level, no access
log. The task goes to the `bare_api` queue, which nothing consumes, with `ignore_result=True`
(a fire-and-forget sender has no result to wait for). Run: `python -m bench.bare_api --port P`
with `BENCH_REDIS_URL` set.
"""

from __future__ import annotations

import argparse
import os

import uvicorn
from fastapi import FastAPI

from bench.bare_app import API_QUEUE, NOOP_TASK, make_app

celery = make_app(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/1"))
app = FastAPI(title="bare")


@app.post("/v1/runs", status_code=202)
def submit() -> dict[str, str]:
    """Enqueue one no-op task and answer its id."""
    result = celery.send_task(NOOP_TASK, queue=API_QUEUE, ignore_result=True)
    return {"id": result.id}


def main() -> None:
    parser = argparse.ArgumentParser(prog="bare_api")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
