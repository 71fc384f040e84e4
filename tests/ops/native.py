"""docker-compose.yml's services as local processes (`NativeStack`), for tests that need the
compose topology running without a Docker engine."""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.harness import ROOT, RunsOverHttp, free_port, redis_server_binary, wait_for
from tests.ops.helpers import (
    ENV_EXAMPLE,
    FLEET_SERVICES,
    WORKER_SERVICES,
    healthcheck_command,
    image_env,
    image_of,
    interpolate,
    load_compose,
    read_env_file,
)
from worker.keys import Keys


@dataclass
class NativeProc:
    service: str
    replica: int
    argv: list[str]
    env: dict[str, str]
    healthcheck: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _host_argv(argv: list[str]) -> list[str]:
    """An image command on this host: the `fleet` entrypoint and `python` are this interpreter."""
    if argv[0] == "fleet":
        return [sys.executable, "-m", "fleetcli", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return argv


@dataclass
class NativeStack(RunsOverHttp):
    """docker-compose.yml's api, worker, tool-worker and flower as local processes.

    What a container provides is mapped to this host, and nothing else is changed:
    - `redis` (redis://redis:6379) is a redis-server started with the compose service's command
      and its mounted ops/redis.conf, on a free loopback port;
    - `postgres` (the run history) is a SQLite file, named by the fleet_database_url secret;
    - each container path (bind mounts, /run/secrets/<name>, the /tmp tmpfs) is a host path
      (per replica for /tmp); an env value naming such a path names the host path instead;
    - a secret the compose file mounts without a *_FILE variable pointing at it is one the code
      reads as the env variable NAME or the file /run/secrets/<name> (Settings.secret), so it is
      passed as that variable;
    - 0.0.0.0 is 127.0.0.1, and the ports the processes listen on are free ports;
    - each replica has its own node name, as each container has its own hostname (%h).
    .env is .env.example, with FLEET_SECRETS_DIR and FLEET_CONFIG_FILE pointed at this test's own
    files (the config adds `echo` to the allowlist, so a run can call a tool without network).
    """

    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fleet-ops-")))
    procs: list[NativeProc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.compose = load_compose()
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.redis_port = free_port()
        self.api_key = "ops-" + secrets.token_urlsafe(24)
        self.admin_key = "adm-" + secrets.token_urlsafe(24)
        self.flower_password = secrets.token_urlsafe(18)
        self.metrics_token = secrets.token_urlsafe(24)
        secrets_dir = self.dir / "secrets"
        secrets_dir.mkdir()
        (secrets_dir / "fleet_api_keys").write_text(f"ops:{self.api_key}\n")
        (secrets_dir / "fleet_admin_keys").write_text(self.admin_key + "\n")
        (secrets_dir / "fleet_metrics_token").write_text(self.metrics_token + "\n")
        (secrets_dir / "fleet_flower_password").write_text(self.flower_password + "\n")
        (secrets_dir / "openai_api_key").write_text("")
        self.redis_password = "rp-" + secrets.token_urlsafe(24)
        (secrets_dir / "redis_password").write_text(self.redis_password + "\n")
        # the run history: a SQLite file of this stack's own stands in for the postgres service
        (secrets_dir / "fleet_database_url").write_text(f"sqlite:///{self.dir / 'history.db'}\n")
        config = yaml.safe_load((ROOT / "ops" / "fleet.yaml").read_text())
        config["tools"]["allowlist"] = [*config["tools"]["allowlist"], "echo"]
        # sleep steps of 1 s stay in their process: the soft-shutdown test stops a worker under
        # an executing run
        config.setdefault("runtime", {})["park_after_ms"] = 2000
        (self.dir / "fleet.yaml").write_text(yaml.safe_dump(config))
        self.dotenv = {
            **read_env_file(ENV_EXAMPLE),
            "FLEET_SECRETS_DIR": str(secrets_dir),
            "FLEET_CONFIG_FILE": str(self.dir / "fleet.yaml"),
        }
        self.secret_files = {
            name: Path(interpolate(spec["file"], self.dotenv))
            for name, spec in self.compose["secrets"].items()
        }
        self.ports = {"api": free_port(), "flower": free_port()}
        self.keys = Keys(self.dotenv["FLEET_KEY_PREFIX"])

    # -- building each process from the compose file -------------------------------------------------

    def _mounts(self, service: dict[str, Any], tmp: Path) -> dict[str, Path]:
        """Container path -> host path, for this replica."""
        mounts: dict[str, Path] = {"/tmp": tmp}
        for volume in interpolate(service.get("volumes", []), self.dotenv):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                mounts[target] = (ROOT / source).resolve()
        for name in service.get("secrets", []):
            mounts[f"/run/secrets/{name}"] = self.secret_files[name]
        return mounts

    def _host_value(self, value: str, mounts: dict[str, Path]) -> str:
        for target in sorted(mounts, key=len, reverse=True):
            if value == target or value.startswith(target + "/"):
                return str(mounts[target]) + value[len(target) :]
        value = value.replace("//redis:6379", f"//127.0.0.1:{self.redis_port}")
        return "127.0.0.1" if value == "0.0.0.0" else value

    def build(self, name: str, replica: int) -> NativeProc:
        service = self.compose["services"][name]
        tmp = self.dir / f"{name}-{replica}-tmp"
        tmp.mkdir()
        mounts = self._mounts(service, tmp)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FLEET_", "AGENT_MAX_", "REMAP_", "OPENAI_"))
            and k not in ("REDIS_URL", "SENTRY_DSN")
        }
        env.update(PYTHONPATH=str(ROOT))  # what `pip install .` gives the image
        env.update({k: v for k, v in image_env(image_of(service)).items() if k != "PATH"})
        env.update(interpolate(service.get("environment") or {}, self.dotenv))
        env = {k: self._host_value(str(v), mounts) for k, v in env.items()}
        pointed = set(env.values())
        for secret in service.get("secrets", []):
            host = str(self.secret_files[secret])
            if host not in pointed:  # read from /run/secrets/<name>, else from the env NAME
                content = Path(host).read_text().strip()
                if content:
                    env[secret.upper()] = content
        if name == "api":
            env["FLEET_API_PORT"] = str(self.ports["api"])
        if name == "flower":
            env["FLEET_FLOWER_PORT"] = str(self.ports["flower"])
        command = [arg.replace("0.0.0.0", "127.0.0.1") for arg in service["command"]]
        if name in WORKER_SERVICES:
            command += ["-n", f"{'agent' if name == 'worker' else 'tool'}-replica{replica}@%h"]
        check = service.get("healthcheck", {}).get("test") or ["CMD", *healthcheck_command(image_of(service))]
        assert check[0] == "CMD", f"{name}: an exec-form healthcheck"
        log = self.dir / f"{name}-{replica}.log"
        return NativeProc(name, replica, _host_argv(["fleet", *command]), env, _host_argv(check[1:]), log)

    # -- running ------------------------------------------------------------------------------------

    def start_redis(self) -> None:
        """The compose redis service's script, with its mounts and the image's redis-server on this
        host; the port, bind address and data directory are appended to its "$@"."""
        redis = self.compose["services"]["redis"]
        command = redis["command"]
        assert command[:2] == ["sh", "-c"], "the redis command is a script that reads the secret"
        mounts = {v.split(":")[1]: str((ROOT / v.split(":")[0]).resolve()) for v in redis["volumes"]}
        mounts.update({f"/run/secrets/{name}": str(self.secret_files[name]) for name in redis["secrets"]})
        script = command[2].replace("$$", "$")
        script = script.replace("docker-entrypoint.sh redis-server", shlex.quote(redis_server_binary()))
        for target in sorted(mounts, key=len, reverse=True):
            script = script.replace(target, shlex.quote(mounts[target]))
        data = self.dir / "redis-data"  # the named volume; the image's workdir is /data
        data.mkdir()
        argv = ["sh", "-c", script, *command[3:]]
        argv += ["--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(data)]
        with (self.dir / "redis.log").open("wb") as log:
            self.redis_proc = subprocess.Popen(argv, cwd=data, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.redis().ping(), 15, "redis-server did not start with ops/redis.conf")

    def redis(self) -> Any:
        import redis as redis_py

        return redis_py.Redis(
            port=self.redis_port, password=self.redis_password, decode_responses=True, socket_timeout=5
        )

    def start(self) -> None:
        self.start_redis()
        self.preflight = self.run_preflight()
        if self.preflight.returncode != 0:  # compose would start no fleet service either
            raise AssertionError(f"the preflight failed:\n{self.preflight.stdout}{self.preflight.stderr}")
        replicas = {name: self.compose["services"][name].get("deploy", {}).get("replicas", 1)
                    for name in FLEET_SERVICES}  # fmt: skip
        for name in FLEET_SERVICES:
            for replica in range(1, replicas[name] + 1):
                proc = self.build(name, replica)
                with proc.log.open("wb") as out:
                    proc.popen = subprocess.Popen(
                        proc.argv, env=proc.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                self.procs.append(proc)
        for proc in self.procs:
            wait_for(lambda p=proc: self.started(p), 60, f"{proc.service} never started:\n{self.logs()}")

    def run_preflight(self) -> subprocess.CompletedProcess[str]:
        """The compose `preflight` service (`fleet doctor`), run to its end as compose runs it
        before the fleet services."""
        proc = self.build("preflight", 1)
        return subprocess.run(proc.argv, env=proc.env, cwd=ROOT, capture_output=True, text=True, timeout=120)

    def started(self, proc: NativeProc) -> bool:
        """A cheap look (the heartbeat file, the HTTP port) before the real healthcheck runs."""
        assert proc.popen is not None
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.service} exited {proc.popen.returncode}:\n{proc.text()[-3000:]}")
        if proc.service in WORKER_SERVICES:
            return Path(proc.env["FLEET_HEARTBEAT_FILE"]).exists()
        path = "/healthz" if proc.service == "api" else "/healthcheck"
        try:
            url = f"http://127.0.0.1:{self.ports[proc.service]}{path}"
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def healthchecks(self) -> dict[str, subprocess.CompletedProcess[bytes]]:
        """Each process's healthcheck (the compose file's, else its image's), run at once."""
        running = {
            f"{p.service}-{p.replica}": subprocess.Popen(
                p.healthcheck, env=p.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            for p in self.procs
            if p.popen and p.popen.poll() is None
        }
        results = {}
        for name, popen in running.items():
            out, _ = popen.communicate(timeout=60)
            results[name] = subprocess.CompletedProcess(popen.args, popen.returncode, out)
        return results

    def replicas(self, service: str) -> list[NativeProc]:
        return [p for p in self.procs if p.service == service]

    def logs(self) -> str:
        return "\n".join(f"==== {p.service}-{p.replica} ====\n{p.text()[-3000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            if proc.popen and proc.popen.poll() is None:
                # Workers would spend their 15 s soft shutdown; the graceful stop has its own test.
                sig = signal.SIGKILL if proc.service in WORKER_SERVICES else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, sig)
        for proc in self.procs:
            if proc.popen:
                try:
                    proc.popen.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.popen.pid, signal.SIGKILL)
                    proc.popen.wait()
        if self.redis_proc and self.redis_proc.poll() is None:
            self.redis_proc.terminate()
            self.redis_proc.wait(timeout=15)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the API ------------------------------------------------------------------------------------

    @property
    def api_port(self) -> int:
        return self.ports["api"]
