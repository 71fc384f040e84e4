"""The `fleet` command as a user runs it: real processes, real Redis, real curl.

`fleet up` is started as its own session (as a shell would run it), read until it prints its
banner, driven with the `curl` line it printed, and stopped with SIGINT (what Ctrl-C sends).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from tests.cli_runs import clean_env, run_fleet, submit_env
from tests.harness import FLEET_CMD, TERMINAL, Fleet, RedisServer, free_port, wait_for

BANNER_END = "Ctrl-C stops everything."
UP_READY_TIMEOUT_S = 120.0
UP_STOP_TIMEOUT_S = 25.0

# The "safe default config" of CONTRACT.md, section "Configuration", verbatim.
SAFE_DEFAULT_CONFIG = """\
runtime:
  env:
    AGENT_MAX_STEPS: 25
    AGENT_MAX_TOOL_CALLS: 12
    AGENT_MAX_SECONDS: 60
tools:
  allowlist: ["search.read", "http.get"]
  timeouts_ms: { default: 8000 }
  retries: { max: 2, backoff_ms: [200, 800] }
observability:
  sampled_tool_results: true
  result_sample_rate: 0.01
rollout:
  canary_percent: 10
  rollback_on_error_rate: 0.05
"""


# -- fleet config -----------------------------------------------------------------------------------


def config_of(env: dict[str, str]) -> dict[str, Any]:
    result = run_fleet("config", env=env, timeout=60)
    assert result.code == 0, result.stderr
    data: dict[str, Any] = yaml.safe_load(result.stdout)
    return data


def test_config_prints_yaml_with_every_secret_masked() -> None:
    env = clean_env(
        FLEET_API_KEYS="t:supersecretkey123",
        SENTRY_DSN="https://abc123secret@example.invalid/1",
        REDIS_URL="redis://:hunter2pass@127.0.0.1:1/0",
    )
    result = run_fleet("config", env=env)
    assert result.code == 0, result.stderr
    shown = result.stdout + result.stderr
    for secret in ("supersecretkey123", "abc123secret", "hunter2pass"):
        assert secret not in shown
    data = yaml.safe_load(result.stdout)
    assert isinstance(data, dict)
    assert data["redis_url"] == "redis://:***@127.0.0.1:1/0"
    for name in ("api_keys", "sentry_dsn"):
        masked = data[name]
        assert isinstance(masked, str) and masked and set(masked) == {"*"}, (name, masked)
    assert data["effective_caps"] == {"max_steps": 25, "max_tool_calls": 12, "max_seconds": 60}


def test_config_precedence_is_env_over_yaml_file_over_defaults(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text("runtime:\n  env:\n    AGENT_MAX_STEPS: 9\n")
    defaults = config_of(clean_env())
    from_file = config_of(clean_env(FLEET_CONFIG=str(config)))
    from_env = config_of(clean_env(FLEET_CONFIG=str(config), AGENT_MAX_STEPS="7"))
    assert defaults["effective_caps"]["max_steps"] == 25
    assert from_file["effective_caps"]["max_steps"] == 9
    assert from_env["effective_caps"]["max_steps"] == 7
    # the other caps still come from the defaults
    assert from_env["effective_caps"]["max_tool_calls"] == 12
    assert from_env["effective_caps"]["max_seconds"] == 60


def test_safe_default_config_of_the_contract_is_accepted_verbatim_and_equals_the_defaults(
    tmp_path: Path,
) -> None:
    config = tmp_path / "safe-default.yaml"
    config.write_text(SAFE_DEFAULT_CONFIG)
    from_file = config_of(clean_env(FLEET_CONFIG=str(config)))
    builtin = config_of(clean_env())
    assert from_file == builtin
    assert from_file["effective_caps"] == {"max_steps": 25, "max_tool_calls": 12, "max_seconds": 60}
    assert from_file["tools"]["allowlist"] == ["search.read", "http.get"]
    assert from_file["tools"]["timeouts_ms"]["default"] == 8000
    assert from_file["tools"]["retries"] == {"max": 2, "backoff_ms": [200, 800]}
    observability, rollout = from_file["observability"], from_file["rollout"]
    assert (observability["sampled_tool_results"], observability["result_sample_rate"]) == (True, 0.01)
    assert (rollout["canary_percent"], rollout["rollback_on_error_rate"]) == (10, 0.05)


# -- settings that do not parse ---------------------------------------------------------------------

# (id, environment, YAML file text or None, names any of which the message must hold)
BAD_SETTINGS: list[tuple[str, dict[str, str], str | None, tuple[str, ...]]] = [
    ("max_steps_not_int", {"AGENT_MAX_STEPS": "abc"}, None, ("AGENT_MAX_STEPS",)),
    (
        "retries_negative",
        {"FLEET_TOOLS__RETRIES__MAX": "-1"},
        None,
        ("FLEET_TOOLS__RETRIES__MAX", "tools.retries.max"),
    ),
    ("yaml_unknown_key", {}, "tools: {allowlistt: []}\n", ("allowlistt",)),
    ("config_file_missing", {"FLEET_CONFIG": "/nonexistent/fleet-config.yaml"}, None, ("FLEET_CONFIG",)),
    ("api_keys_without_colon", {"FLEET_API_KEYS": "nocolon"}, None, ("FLEET_API_KEYS",)),
]


@pytest.mark.parametrize("command", ["config", "api"])
@pytest.mark.parametrize(
    ("env_extra", "yaml_text", "names"),
    [pytest.param(env, text, names, id=case) for case, env, text, names in BAD_SETTINGS],
)
def test_setting_that_does_not_parse_stops_the_process_with_exit_2_naming_the_setting(
    command: str, env_extra: dict[str, str], yaml_text: str | None, names: tuple[str, ...], tmp_path: Path
) -> None:
    env = clean_env(FLEET_API_PORT=str(free_port()), **env_extra)
    if yaml_text is not None:
        config = tmp_path / "fleet.yaml"
        config.write_text(yaml_text)
        env["FLEET_CONFIG"] = str(config)
    result = run_fleet(command, env=env, timeout=40)  # `fleet api` that serves instead fails here
    assert result.code == 2, f"exit {result.code}\nstderr:\n{result.stderr[-3000:]}"
    assert any(name in result.stderr for name in names), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "nocolon" not in result.stderr  # a bad key list is not echoed: it may hold a secret


# -- Celery worker passthrough ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["worker", "tool-worker"])
def test_worker_help_passes_through_to_celery_worker_help(command: str) -> None:
    result = run_fleet(command, "--help", env=clean_env(), timeout=60)
    assert result.code == 0, result.stderr
    assert "--concurrency" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("extra", "pool", "concurrency"),
    [((), "threads", "4"), (("--concurrency", "2"), "threads", "2"), (("-P", "solo"), "solo", "4")],
)
def test_tool_worker_defaults_to_a_few_threads_that_feed_its_event_loop(
    redis_server: RedisServer, extra: tuple[str, ...], pool: str, concurrency: str
) -> None:
    """The exec'd `celery worker` of a real `fleet tool-worker`: threads x4 unless told otherwise
    (the tasks only hand calls to the loop, worker/gateway/pool.py)."""
    fleet = Fleet(redis_server)
    try:
        proc = fleet.start_tool_worker(*extra)
        argv = psutil.Process(proc.popen.pid).cmdline()

        def option(*names: str) -> str:
            values = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in names]
            assert len(values) == 1, argv  # a default never doubles an option the user gave
            return values[0]

        assert (option("-P", "--pool"), option("-c", "--concurrency")) == (pool, concurrency)
    finally:
        fleet.close()


# -- fleet up -----------------------------------------------------------------------------------------


@dataclass
class Banner:
    redis_url: str
    redis_note: str
    api_url: str
    api_key: str
    curl_post: str
    curl_get: str
    flower: tuple[str, str, str] | None  # url, user, password


@dataclass
class FleetUp:
    """A `fleet up` process in its own session, with its stdout read line by line."""

    args: tuple[str, ...]
    env: dict[str, str]
    workdir: Path
    terminal: bool = False  # stdout a pseudo-terminal (as in a user's shell), else a pipe
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stderr_path = self.workdir / "fleet-up.stderr"
        master = slave = -1
        if self.terminal:
            master, slave = pty.openpty()
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*FLEET_CMD, "up", *self.args],
                env=self.env,
                cwd=self.workdir,
                stdout=slave if self.terminal else subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        if self.terminal:
            os.close(slave)  # the children hold their own copies
        self.known: dict[int, psutil.Process] = {}
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, args=(master,), daemon=True)
        self.reader.start()

    def _read(self, master: int) -> None:
        if master < 0:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:  # children inherit this pipe: keep draining it
                with self.lock:
                    self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            return
        pending = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                chunk = b""
            if not chunk:
                break
            *done, pending = (pending + chunk).split(b"\n")
            with self.lock:
                self.lines += [raw.decode(errors="replace").rstrip("\r") for raw in done]
        os.close(master)

    def output(self) -> str:
        with self.lock:
            return "\n".join(self.lines)

    def diagnostics(self) -> str:
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return f"stdout:\n{self.output()[-4000:]}\nstderr:\n{err[-4000:]}"

    def wait_banner(self) -> Banner:
        deadline = time.monotonic() + UP_READY_TIMEOUT_S
        while BANNER_END not in self.output():
            if self.proc.poll() is not None:
                pytest.fail(
                    f"fleet up exited with {self.proc.returncode} before its banner\n{self.diagnostics()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"fleet up printed no banner in {UP_READY_TIMEOUT_S} s\n{self.diagnostics()}")
            time.sleep(0.1)
        return parse_banner(self.output())

    def children(self) -> list[psutil.Process]:
        """Every live process below `fleet up`, remembered for the cleanup and the final check."""
        found = psutil.Process(self.proc.pid).children(recursive=True)
        for child in found:
            self.known.setdefault(child.pid, child)
        return found

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the foreground process group (`fleet up` alone: it is the group leader)."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=UP_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"fleet up did not exit within {UP_STOP_TIMEOUT_S} s of SIGINT\n{self.diagnostics()}")

    def kill_everything(self) -> None:
        """Cleanup: `fleet up` and every process it started (they run in sessions of their own)."""
        with contextlib.suppress(psutil.Error):
            if self.proc.poll() is None:
                self.children()
        for proc in [*self.known.values()]:
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                if proc.is_running() and os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGKILL)  # a group leader: its pool goes with it
            with contextlib.suppress(psutil.Error):
                if proc.is_running():
                    proc.kill()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.reader.join(timeout=5)


def parse_banner(text: str) -> Banner:
    def one(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        assert match, f"banner has no match for {pattern!r}:\n{text[-3000:]}"
        return match

    redis_line = one(r"^redis:\s+(\S+) \((.*)\)\s*$")
    flower = re.search(r"Flower:\s+(http://\S+)\s+\(user (\S+), password ([^)\s]+)\)", text)
    return Banner(
        redis_url=redis_line.group(1),
        redis_note=redis_line.group(2),
        api_url=one(r"API:\s+(http://\S+)").group(1),
        api_key=one(r"API key:\s+(\S+)").group(1),
        curl_post=one(r"^\s*(curl -s -X POST .*)$").group(1).strip(),
        curl_get=one(r"^\s*(curl -s '.*<id>.*)$").group(1).strip(),
        flower=(flower.group(1), flower.group(2), flower.group(3)) if flower else None,
    )


@contextlib.contextmanager
def fleet_up(
    tmp_path: Path, *args: str, redis_url: str, terminal: bool = False, api_port: int | None = None
) -> Iterator[FleetUp]:
    env = clean_env(
        REDIS_URL=redis_url,
        FLEET_API_PORT=str(api_port or free_port()),
        FLEET_FLOWER_PORT=str(free_port()),
        FLEET_DATA_DIR=str(tmp_path / "data"),  # the SQLite run history; the folder does not exist yet
    )
    up = FleetUp(args, env, tmp_path, terminal)
    try:
        yield up
    finally:
        up.kill_everything()


def bash(command: str, timeout: float = 30) -> str:
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command!r} exited {done.returncode}: {done.stderr}"
    return done.stdout


def post_with_printed_curl(banner: Banner) -> dict[str, Any]:
    """Run the banner's `curl` POST line as printed (plus -w to see the status code)."""
    body, _, status = bash(banner.curl_post + " -w '\\n%{http_code}'").rpartition("\n")
    assert status == "202", f"{status}: {body}"
    run: dict[str, Any] = json.loads(body)
    assert run["status"] == "queued" and run["agent"] == "scripted"
    return run


def wait_with_printed_curl(banner: Banner, run_id: str) -> dict[str, Any]:
    """Run the banner's `curl` GET line with the run's id until the run ends (?wait=10 each)."""
    assert "?wait=10" in banner.curl_get and f"Bearer {banner.api_key}" in banner.curl_get
    command = banner.curl_get.replace("<id>", run_id)
    deadline = time.monotonic() + 90  # the workers may still be starting when the API is ready
    while True:
        run: dict[str, Any] = json.loads(bash(command))
        if run["status"] in TERMINAL or time.monotonic() > deadline:
            return run


def wait_answers(url: str, timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.get(url, timeout=5)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def cmdlines(procs: list[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            out.append(" ".join([proc.name(), *proc.cmdline()]))
    return out


def still_alive(procs: list[psutil.Process]) -> list[str]:
    _gone, alive = psutil.wait_procs(procs, timeout=5)
    left = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {' '.join(proc.cmdline())}")
    return left


def assert_interrupt_stops_everything(up: FleetUp, started: list[psutil.Process]) -> None:
    code = up.interrupt()
    assert code == 0, f"fleet up exited {code} on SIGINT\n{up.diagnostics()}"
    left = still_alive(started)
    assert not left, f"still running after fleet up exited: {left}"


BANNER_START = "agentfleet is up."
# Startup warnings that a user of a one-machine dev stack can do nothing about.
DEV_NOISE = ("SecurityWarning", "superuser privileges", "Inspect method", "Events of group")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CONSOLE_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \[(\w+)\s*\] (api|agent|tool|flower)\s+\S")


def split_at_banner(up: FleetUp) -> tuple[list[str], list[str]]:
    """(the lines before the banner, the banner and every line after it)."""
    lines = [ANSI.sub("", line) for line in up.output().splitlines()]
    at = next(i for i, line in enumerate(lines) if line.strip() == BANNER_START)
    return lines[:at], lines[at:]


def assert_banner_is_last(up: FleetUp) -> None:
    _before, banner = split_at_banner(up)
    assert banner[-1].strip() == BANNER_END, f"lines after the banner:\n{chr(10).join(banner)}"
    text = up.output() + up.stderr_path.read_text(errors="replace")
    assert not [noise for noise in DEV_NOISE if noise in text], up.diagnostics()


def assert_json_lines_then_the_banner_last(up: FleetUp, processes: set[str]) -> None:
    """Piped: every line before the banner is fleet up's own or a JSON line without nulls."""
    before, _ = split_at_banner(up)
    seen: set[str] = set()
    for line in before:
        if not line.strip() or line.startswith("redis:"):
            continue
        event = json.loads(line)  # not JSON: fails here
        assert all(value is not None for value in event.values()), line
        seen.add(event.get("process", "?"))
    assert processes <= seen, (seen, before)
    assert_banner_is_last(up)


def history_holds(path: Path, run_id: str) -> bool:
    """True when the SQLite run history at `path` holds the run."""
    import sqlite3

    if not path.exists():
        return False
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            return db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None
        except sqlite3.OperationalError:  # not migrated yet
            return False


def stack_processes(api_port: int) -> list[psutil.Process]:
    """Every process of the stack that `fleet up` started on `api_port` (found by its environment)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if (
                proc.environ().get("FLEET_API_PORT") == str(api_port)
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
    return found


def test_up_on_a_terminal_prints_console_lines_and_ends_with_the_banner(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with fleet_up(tmp_path, "--no-flower", redis_url=redis_server.url, terminal=True) as up:
        up.wait_banner()
        time.sleep(1.5)
        before, _ = split_at_banner(up)
        logged = [line for line in before if line.strip() and not line.startswith("redis:")]
        assert logged, up.diagnostics()
        for line in logged:
            assert CONSOLE_LINE.match(line), f"not a console line: {line!r}"
            assert "None" not in line and not line.lstrip().startswith("{"), line
        assert {CONSOLE_LINE.match(line).group(2) for line in logged} >= {"api", "agent", "tool"}  # type: ignore[union-attr]
        assert_banner_is_last(up)
        assert_interrupt_stops_everything(up, up.children())


def test_up_names_a_process_that_fails_to_start_and_stops_the_rest(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with socket.socket() as taken:  # the API's port is taken: `fleet api` exits at start
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        api_port = int(taken.getsockname()[1])
        with fleet_up(tmp_path, "--no-flower", redis_url=redis_server.url, api_port=api_port) as up:
            code = up.proc.wait(timeout=UP_READY_TIMEOUT_S)
            err = up.stderr_path.read_text(errors="replace")
            assert code == 1, up.diagnostics()
            assert re.search(r"fleet up: api exited with code \d+ before the stack was ready", err), err
            assert BANNER_START not in up.output()
            _gone, alive = psutil.wait_procs(stack_processes(api_port), timeout=10)
            assert alive == [], cmdlines(alive)


def test_up_names_the_parts_not_ready_within_the_timeout_and_stops_the_rest(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with fleet_up(tmp_path, "--no-flower", "--ready-timeout", "0.5", redis_url=redis_server.url) as up:
        code = up.proc.wait(timeout=UP_READY_TIMEOUT_S)
        err = up.stderr_path.read_text(errors="replace")
        assert code == 1, up.diagnostics()
        found = re.search(r"fleet up: not ready after 0.5 s: (.+); stopping the stack", err)
        assert found, err
        assert "agent worker" in found.group(1).split(", "), found.group(1)  # a worker takes over 0.5 s
        assert BANNER_START not in up.output()
        _gone, alive = psutil.wait_procs(stack_processes(int(up.env["FLEET_API_PORT"])), timeout=10)
        assert alive == [], cmdlines(alive)


@pytest.mark.parametrize("with_flower", [False, True], ids=["no-flower", "flower"])
def test_up_without_redis_starts_its_own_stack_serves_the_printed_curl_and_sigint_stops_all(
    with_flower: bool, tmp_path: Path
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    args = () if with_flower else ("--no-flower",)
    with fleet_up(tmp_path, *args, redis_url=dead_redis) as up:
        banner = up.wait_banner()
        time.sleep(1.5)  # anything a child still had to say at start
        assert_json_lines_then_the_banner_last(up, {"api", "agent", "tool"})
        assert banner.redis_url != dead_redis and banner.redis_note.startswith("started")
        assert banner.api_url == f"http://127.0.0.1:{up.env['FLEET_API_PORT']}"
        assert banner.api_key.startswith("dev-") and len(banner.api_key) >= 16
        assert f"Bearer {banner.api_key}" in banner.curl_post

        run = post_with_printed_curl(banner)
        done = wait_with_printed_curl(banner, run["id"])
        stderr_tail = up.stderr_path.read_text(errors="replace")[-6000:]
        assert done["status"] == "succeeded", f"{done['error']}\n{done}\n{stderr_tail}"
        assert done["output"] == "hello from agentfleet"
        assert done["tenant"] == "dev"
        history = tmp_path / "data" / "history.db"  # the SQLite default, in a folder made for it
        wait_for(lambda: history_holds(history, run["id"]), 30, f"run not archived:\n{stderr_tail}")

        if with_flower:
            assert banner.flower is not None, up.output()
            flower_url, user, password = banner.flower
            assert flower_url == f"http://127.0.0.1:{up.env['FLEET_FLOWER_PORT']}"
            anonymous = wait_answers(flower_url + "/", timeout_s=60)
            assert anonymous.status_code == 401
            assert httpx.get(flower_url + "/", auth=(user, "not-the-password"), timeout=10).status_code == 401
            assert httpx.get(flower_url + "/", auth=(user, password), timeout=10).status_code == 200
        else:
            assert banner.flower is None and "Flower:" not in up.output()

        started = up.children()
        names = cmdlines(started)
        assert any("redis-server" in line for line in names), names
        assert any(line.endswith("fleetcli api") for line in names), names
        assert (any("flower" in line for line in names)) is with_flower, names
        assert len(started) >= 4  # redis, api, agent worker (+ its pool), tool worker
        assert_interrupt_stops_everything(up, started)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{banner.api_url}/healthz", timeout=2)


def test_up_uses_redis_url_when_it_answers_and_leaves_that_redis_running(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with fleet_up(tmp_path, "--no-flower", redis_url=redis_server.url) as up:
        banner = up.wait_banner()
        assert banner.redis_url == redis_server.url
        assert "already running" in banner.redis_note

        run = post_with_printed_curl(banner)
        r = redis_server.client()
        assert r.exists(f"fleet:run:{run['id']}"), "the run was not stored in the Redis at REDIS_URL"

        started = up.children()
        names = cmdlines(started)
        assert not any("redis-server" in line for line in names), names
        assert started, "fleet up started no process"
        assert_interrupt_stops_everything(up, started)
        assert r.ping()  # fleet up stops only what it started


# -- fleet submit -----------------------------------------------------------------------------------


def test_submit_wait_prints_output_on_stdout_progress_on_stderr_and_exits_0(fleet: Fleet) -> None:
    result = run_fleet(
        "submit", "scripted", "--input", '{"plan":[{"final":"hi"}]}', "--wait", env=submit_env(fleet)
    )
    assert result.code == 0, result.stderr
    assert result.stdout == "hi\n"
    assert re.search(r"run [0-9a-f]+ ", result.stderr), result.stderr
    assert "succeeded" in result.stderr


def test_submit_wait_of_a_failing_run_exits_1(fleet: Fleet) -> None:
    result = run_fleet(
        "submit", "scripted", "--input", '{"plan":[{"fail":"x"}]}', "--wait", env=submit_env(fleet)
    )
    assert result.code == 1, result.stderr
    assert "failed" in result.stderr


def test_submit_without_wait_prints_the_queued_run_as_json_and_exits_0(fleet: Fleet) -> None:
    result = run_fleet("submit", "scripted", "--input", '{"plan":[{"final":"hi"}]}', env=submit_env(fleet))
    assert result.code == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["agent"] == "scripted" and run["tenant"] == "t1"
    assert run["status"] == "queued"
    assert fleet.wait(run["id"])["output"] == "hi"  # it is a real run on the fleet


def test_submit_with_input_that_is_not_json_is_a_usage_error_exit_2(fleet: Fleet) -> None:
    result = run_fleet("submit", "scripted", "--input", "{not json", "--wait", env=submit_env(fleet))
    assert result.code == 2
    assert "--input" in result.stderr
    assert result.stdout == ""


def test_submit_to_an_unreachable_api_exits_2(fleet: Fleet) -> None:
    env = submit_env(fleet, FLEET_API_URL=f"http://127.0.0.1:{free_port()}")
    result = run_fleet("submit", "scripted", "--input", '{"plan":[{"final":"hi"}]}', "--wait", env=env)
    assert result.code == 2
    assert env["FLEET_API_URL"] in result.stderr
    assert "Traceback" not in result.stderr


def test_submit_without_an_api_key_exits_2(fleet: Fleet) -> None:
    env = clean_env(FLEET_API_URL=fleet.url)
    result = run_fleet("submit", "scripted", "--input", '{"plan":[{"final":"hi"}]}', "--wait", env=env)
    assert result.code == 2
    assert "FLEET_API_KEY" in result.stderr


def test_submit_of_an_unknown_agent_exits_2_with_the_apis_message(fleet: Fleet) -> None:
    with fleet.client() as client:
        direct = client.post("/v1/runs", json={"agent": "no-such-agent", "input": {}})
    assert direct.status_code == 422
    message = direct.json()["error"]["message"]
    result = run_fleet("submit", "no-such-agent", "--input", "{}", "--wait", env=submit_env(fleet))
    assert result.code == 2
    assert "422" in result.stderr
    assert message in result.stderr
