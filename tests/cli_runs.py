"""The `fleet` command run as a user runs it: in an environment without the test process's fleet
settings, to its end, with a timeout past which the process is killed and the test fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass

import pytest

from tests.harness import FLEET_CMD, KEY_T1, ROOT, Fleet


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any fleet setting, plus `extra`."""
    dropped = ("FLEET_", "AGENT_MAX_", "REDIS_URL", "SENTRY_DSN", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_fleet(*args: str, env: dict[str, str], timeout: float = 60) -> Result:
    """Run `fleet ARGS` to its end; a process that outlives `timeout` is killed and fails the test."""
    proc = subprocess.Popen(
        [*FLEET_CMD, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(
            f"`fleet {' '.join(args)}` still ran after {timeout} s\n"
            f"stdout:\n{out.decode(errors='replace')[-3000:]}\nstderr:\n{err.decode(errors='replace')[-3000:]}"
        )
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def submit_env(fleet: Fleet, **extra: str) -> dict[str, str]:
    return clean_env(**{"FLEET_API_URL": fleet.url, "FLEET_API_KEY": KEY_T1, **extra})
