"""The compose stack in Docker, for the tests of tests/containers/ (marker `containers`).

`bash ops/ci/containers.sh` comes first: a Docker engine, the base images, and both fleet
images built from the Dockerfiles (tag FLEET_IMAGE_TAG, `ci` by default). The `stack` fixture
then makes the secrets with the commands .env.example gives, brings docker-compose.yml up with
.env.example's settings (only the host ports, the secrets' directory and the config file differ:
ops/fleet.yaml with the `echo` tool allowed) under the compose project FLEET_CI_PROJECT, waits
until every service is healthy, and takes it all down (containers, volumes, network) at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import ROOT, RunsOverHttp, free_port

PROJECT = os.environ.get("FLEET_CI_PROJECT", "agentfleet-ci")
TAG = os.environ.get("FLEET_IMAGE_TAG", "ci")
IMAGES = {"api": f"agentfleet-api:{TAG}", "worker": f"agentfleet-worker:{TAG}"}
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
# The services docker-compose.yml runs for long (one-shot services may come beside them).
SERVICES = ("redis", "postgres", "api", "worker", "tool-worker", "flower")
# ops/ci/containers.sh labels the bases it builds when the official ones cannot be pulled.
STANDIN_LABEL = "org.agentfleet.ci.standin"


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}"
        )
    return result


def compose_binary() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


def engine_answers() -> bool:
    try:
        return docker("info", check=False, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def secret_commands() -> list[str]:
    """The shell lines of .env.example that make the secret files (from `mkdir` to `chown`)."""
    lines = [line[1:].strip() for line in ENV_EXAMPLE.read_text().splitlines() if line.startswith("#   ")]
    start = next(i for i, line in enumerate(lines) if line.startswith("mkdir -p secrets"))
    end = next(i for i, line in enumerate(lines) if "chown" in line)
    assert start < end, lines
    return lines[start : end + 1]


def make_secrets(where: Path) -> Path:
    """Run .env.example's commands in `where`; as root, `sudo` is not needed (nor installed)."""
    for line in secret_commands():
        if os.geteuid() == 0:
            line = re.sub(r"(^|&& )sudo ", r"\1", line)
        subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=where, check=True, timeout=30)
    return where / "secrets"


@dataclass
class Stack(RunsOverHttp):
    """docker-compose.yml up in Docker under the compose project PROJECT."""

    run_timeout_s = 120

    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fleet-containers-")))
    api_port: int = field(default_factory=free_port)
    flower_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.secrets_dir = make_secrets(self.dir)
        # ops/fleet.yaml with the built-in `echo` tool allowed, so that a run's tool call goes
        # through the tool worker without reaching outside (FLEET_CONFIG_FILE, as .env would).
        config = yaml.safe_load((ROOT / "ops" / "fleet.yaml").read_text())
        config["tools"]["allowlist"] = [*config["tools"]["allowlist"], "echo"]
        self.config_file = self.dir / "fleet.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.config_file.chmod(0o644)
        self.env = {
            **os.environ,
            "FLEET_IMAGE_TAG": TAG,
            "FLEET_SECRETS_DIR": str(self.secrets_dir),
            "FLEET_CONFIG_FILE": str(self.config_file),
            "FLEET_API_HOST_PORT": str(self.api_port),
            "FLEET_FLOWER_HOST_PORT": str(self.flower_port),
        }
        self.api_key = self.secret("fleet_api_keys").split(":", 1)[1]

    def secret(self, name: str) -> str:
        return (self.secrets_dir / name).read_text().strip()

    def secrets(self) -> dict[str, str]:
        return {p.name: p.read_text().strip() for p in self.secrets_dir.iterdir() if p.read_text().strip()}

    def compose(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            *compose_binary(),
            "-p",
            PROJECT,
            "--env-file",
            str(ENV_EXAMPLE),
            "-f",
            str(COMPOSE_FILE),
            *args,
        ]
        result = subprocess.run(
            argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)}: exit {result.returncode}\n{result.stdout}{result.stderr}"
            )
        return result

    def up(self, *args: str) -> None:
        self.compose("up", "-d", "--no-build", *args)

    def containers(self, service: str | None = None, running: bool = False) -> list[dict[str, Any]]:
        """`docker inspect` of the project's containers (of one service), oldest first."""
        filters = ["--filter", f"label=com.docker.compose.project={PROJECT}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = docker("ps", "-q", *([] if running else ["-a"]), *filters).stdout.split()
        if not ids:
            return []
        found: list[dict[str, Any]] = json.loads(docker("inspect", *ids).stdout)
        return sorted(found, key=lambda c: c["Created"])

    def states(self) -> dict[str, str]:
        """Each container's name and state: its health where it has a healthcheck."""
        out = {}
        for c in self.containers():
            state = c["State"]
            health = state.get("Health")
            if health:
                out[c["Name"].lstrip("/")] = health["Status"] if state["Running"] else state["Status"]
            elif state["Running"]:
                out[c["Name"].lstrip("/")] = "running (no healthcheck)"
            else:
                out[c["Name"].lstrip("/")] = f"exited {state['ExitCode']}"
        return out

    def wait_healthy(self, timeout: float = 240) -> dict[str, str]:
        """Every container healthy, or a one-shot one exited 0; fails on anything else at the end."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            if states and all(s in ("healthy", "exited 0") for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise AssertionError(f"not all healthy after {timeout:g} s: {states}\n{self.logs()}")
            time.sleep(2)

    def service_of(self, container: dict[str, Any]) -> str:
        return str(container["Config"]["Labels"]["com.docker.compose.service"])

    def redis_cli(self, *args: str) -> str:
        """redis-cli inside the Redis container, authenticated from its mounted secret."""
        [redis] = self.containers("redis", running=True)
        script = 'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" exec redis-cli "$@"'
        return docker("exec", redis["Id"], "sh", "-c", script, "redis-cli", *args).stdout.strip()

    def logs(self, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", f"--tail={tail}", check=False, timeout=60).stdout[-12000:]

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "5", check=False, timeout=300)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the API through its published port: RunsOverHttp ----------------------------------------

    def ready(self) -> httpx.Response:
        with self.client() as c:
            return c.get("/readyz")


@pytest.fixture(scope="session")
def engine() -> None:
    if not engine_answers():
        pytest.fail("no Docker engine answers: run `bash ops/ci/containers.sh` first")
    for image in IMAGES.values():
        if docker("image", "inspect", image, check=False).returncode != 0:
            pytest.fail(f"no image {image}: run `bash ops/ci/containers.sh` first")


@pytest.fixture(scope="session")
def stack(engine: None) -> Iterator[Stack]:
    s = Stack()
    try:
        s.compose("down", "-v", "--remove-orphans", "-t", "5", check=False)  # a previous run's leftovers
        s.up()
        s.wait_healthy()
        yield s
    finally:
        s.down()
