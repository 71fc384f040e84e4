"""docker-compose.yml read statically: the services and their images, Redis's persistence and
password, healthchecks and start order, stop grace and memory limits against the worker's
settings, secrets as files, and every variable documented in .env.example and read by the code.
`docker-compose config` runs when it is installed (.ci/run installs it)."""

from __future__ import annotations

import subprocess

import pytest
from pydantic import BaseModel

from tests.harness import ROOT
from tests.ops.helpers import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    FLEET_SERVICES,
    NOT_A_SECRET_SUFFIX,
    SECRET_VAR_NAME,
    WORKER_SERVICES,
    celery_conf,
    compose_command,
    compose_variables,
    duration_s,
    git,
    image_env,
    image_of,
    load_compose,
    memory_bytes,
    read_env_file,
    redis_directives,
    redis_server_args,
    worker_memory_floor_bytes,
)
from worker.settings import Settings


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
