"""`fleet api`, `fleet worker`, `fleet tool-worker` and `fleet flower`: the fleet's server
processes, each started with its settings checked (Celery's and Flower's options pass on)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence

from fleetcli.validate import USAGE_ERROR, checked_settings
from worker.settings import ConfigError, Settings


def _has_option(args: Sequence[str], *names: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in args for name in names)


def tool_queues(settings: Settings) -> list[str]:
    """`tools` and `tools.<name>` of every tool this process knows (built-ins and plugins),
    `webhooks` and `archive`: tool workers make the webhook deliveries and write the run history
    too (no process kind of their own)."""
    from worker import agents, tools
    from worker.keys import ARCHIVE_QUEUE, TOOL_QUEUE, WEBHOOK_QUEUE, tool_queue

    agents.load_plugins(settings.plugins)  # plugin modules register tools as well as agents
    return [TOOL_QUEUE, *(tool_queue(name) for name in tools.tool_names()), WEBHOOK_QUEUE, ARCHIVE_QUEUE]


TOOL_WORKER_THREADS = 4


def celery_worker_argv(
    kind: str, passthrough: Sequence[str], log_level: str, queues: Sequence[str] = ("tools",)
) -> list[str]:
    """The `celery worker` command line of an agent worker or a tool worker, defaults first."""
    # --quiet: no startup banner, so every line on stdout is a JSON log line
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "--quiet", "worker"]
    defaults: list[tuple[tuple[str, ...], list[str]]]
    if kind == "agent":
        defaults = [
            (("-Q", "--queues"), ["-Q", "agents"]),
            (("-n", "--hostname"), ["-n", "agent@%h"]),
            (("-P", "--pool"), ["--pool", "prefork"]),
        ]
    else:
        defaults = [
            (("-Q", "--queues"), ["-Q", ",".join(queues)]),
            (("-n", "--hostname"), ["-n", "tool@%h"]),
            # The task only hands its call to the process's event loop (worker/gateway/pool.py) and
            # returns: a few threads keep the loop fed (and may block on its backpressure without
            # stalling the consumer); more threads only cost CPU (bench/README.md).
            (("-P", "--pool"), ["--pool", "threads"]),
            (("-c", "--concurrency"), ["--concurrency", str(TOOL_WORKER_THREADS)]),
        ]
    defaults.append((("-l", "--loglevel"), ["--loglevel", log_level]))
    for names, value in defaults:
        if not _has_option(passthrough, *names):
            argv += value
    return argv + list(passthrough)


def _check_redis_password(settings: Settings) -> None:
    """Stop a server process at start when Redis refuses its password: that never heals by waiting."""
    from worker.redis_conn import password_problem

    problem = password_problem(settings)
    if problem:
        print(f"fleet: {problem}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def cmd_api(args: argparse.Namespace) -> int:
    settings = checked_settings()  # before importing the app, which loads settings at import
    _check_redis_password(settings)

    import uvicorn

    from worker.obs import tracing
    from worker.obs.telemetry import setup_logging, setup_sentry, setup_tracing

    setup_logging(settings)
    setup_sentry(settings, "api")
    setup_tracing(settings, "api")
    from api.main import create_app

    host = args.host or settings.api_host
    port = args.port or settings.api_port
    try:
        app = create_app(settings)
    except ConfigError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if not app.state.fleet.tenant_keys:
        print(
            "fleet api: no API keys configured (FLEET_API_KEYS); every /v1 call will get 401", file=sys.stderr
        )
    state = app.state.fleet

    class ApiServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn waits for open requests before it stops; an event stream never ends by
            # itself, so the streams end first (their clients resume with Last-Event-ID)
            state.close_streams()
            await super().shutdown(sockets)

    # log_config=None: uvicorn's loggers go through the fleet's chain (JSON lines, redacted, capped)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False, log_config=None
    )
    try:
        ApiServer(config).run()
    finally:
        tracing.shutdown()  # export the last requests' spans
    return 0


def cmd_worker(args: argparse.Namespace, passthrough: list[str]) -> int:
    settings = checked_settings()
    _check_redis_password(settings)
    if args.command == "worker":
        argv = celery_worker_argv("agent", passthrough, settings.log_level)
    else:
        argv = celery_worker_argv("tool", passthrough, settings.log_level, tool_queues(settings))
    os.execv(sys.executable, argv)
    return 0  # not reached


def flower_password(settings: Settings) -> str | None:
    if settings.flower_password is not None:
        return settings.flower_password.get_secret_value()
    return settings.secret("FLEET_FLOWER_PASSWORD")


def cmd_flower(args: argparse.Namespace, passthrough: list[str]) -> int:
    settings = checked_settings()
    _check_redis_password(settings)
    password = flower_password(settings)
    if not password:
        print(
            "fleet flower: set FLEET_FLOWER_PASSWORD (or /run/secrets/fleet_flower_password); "
            "Flower is never served without authentication",
            file=sys.stderr,
        )
        return USAGE_ERROR
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "flower"]
    if not _has_option(passthrough, "--address"):
        argv.append("--address=127.0.0.1")
    if not _has_option(passthrough, "--port"):
        argv.append(f"--port={settings.flower_port}")
    if not _has_option(passthrough, "--purge_offline_workers"):
        argv.append("--purge_offline_workers=60")
    env = dict(os.environ, FLOWER_BASIC_AUTH=f"{settings.flower_user}:{password}")
    os.execve(sys.executable, argv + passthrough, env)
    return 0  # not reached
