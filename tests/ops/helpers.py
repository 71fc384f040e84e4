"""The parsers and shared helpers of the deployment tests: compose files, .env files, Dockerfiles,
.dockerignore, redis.conf, Kubernetes manifests and memory sizes, each read as the tool that
consumes it reads it, plus the paths and names the tests share."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness import ROOT
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

K8S_SCHEMA_VERSION = "1.31.0"  # the Kubernetes schemas kubernetes-validate checks against


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


def k8s_object_file(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S_DIR / name).read_text())
    return loaded


# -- the tools and the memory rule ------------------------------------------------------------------


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)


def tool_binary(name: str) -> str | None:
    """A command on PATH, or beside the running interpreter (a venv's bin/, unactivated)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


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
