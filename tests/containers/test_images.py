"""The two images built from Dockerfile.api and Dockerfile.worker, run and taken apart.

Each image's entrypoint answers a missing command and a bad setting with one clear line and exit
code 2; each image's size is printed and bounded; the filesystem of each holds no secret file,
no private key and nothing of the repository beyond the allowlisted build context.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import pytest

from tests.containers.conftest import IMAGES, STANDIN_LABEL, docker

pytestmark = pytest.mark.containers

MB = 10**6
# On the official python:3.11.11-slim-bookworm. A stand-in base (ops/ci/containers.sh, when no
# registry is reachable) is Debian's python3 with python3-dev and pip on a debootstrapped
# minbase, about twice the slim image, so its images get a looser bound.
SIZE_BOUND_MB = 250
STANDIN_SIZE_BOUND_MB = 600
# Files of the repository that the build context leaves out (.dockerignore), by their paths.
REPO_ONLY = (".env.example", "docker-compose.yml", ".dockerignore", "tests/harness.py", "ops/fleet.yaml")
# A PEM private key block: the header and base64 after it (a library's bare header string is none).
PRIVATE_KEY = re.compile(rb"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{60}")
# Tornado (Flower's web server) ships the key pair of its own TLS tests: published, no secret.
PUBLIC_TEST_KEYS = {"site-packages/tornado/test/test.key"}
SECRET_FILE_NAME = re.compile(
    r"^(\.env(\..*)?|id_(rsa|dsa|ecdsa|ed25519)|.*\.(key|p12|pfx)|credentials(\.json)?)$"
)


def image_info(image: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(docker("image", "inspect", image).stdout)[0]
    return info


def image_files(image: str) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Every entry of the image's filesystem, with the content of regular files up to 4 MB."""
    cid = docker("create", image).stdout.strip()
    try:
        export = subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE)
        assert export.stdout is not None
        with tarfile.open(fileobj=export.stdout, mode="r|") as tar:
            for member in tar:
                data = None
                if member.isfile() and member.size <= 4 * MB:
                    f = tar.extractfile(member)
                    data = f.read() if f else None
                yield member, data
        assert export.wait(timeout=120) == 0
    finally:
        docker("rm", "-f", cid, check=False)


@pytest.mark.parametrize("image", IMAGES.values())
def test_entrypoint_without_a_command_prints_usage_and_exits_2(engine: None, image: str) -> None:
    result = docker("run", "--rm", "--read-only", "--entrypoint", "fleet", image, check=False)
    assert result.returncode == 2, result
    assert "usage: fleet" in result.stderr and "required: COMMAND" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("image", "command", "setting", "named"),
    [
        (IMAGES["api"], [], "FLEET_MAX_QUEUED=lots", "max_queued (FLEET_MAX_QUEUED)"),
        (IMAGES["worker"], [], "FLEET_LOG_LEVEL=LOUD", "log_level (FLEET_LOG_LEVEL)"),
        (IMAGES["worker"], ["tool-worker"], "FLEET_LOG_FORMAT=xml", "log_format (FLEET_LOG_FORMAT)"),
    ],
)
def test_a_bad_setting_is_named_in_one_line_and_exits_2(
    engine: None, image: str, command: list[str], setting: str, named: str
) -> None:
    """The image's own command (or tool-worker) under a read-only root, as compose runs it."""
    result = docker(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "-e", setting, image, *command, check=False
    )
    assert result.returncode == 2, result
    assert f"fleet: invalid configuration: {named}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert setting.split("=", 1)[1] in result.stderr or "Input should be" in result.stderr


@pytest.mark.parametrize("image", IMAGES.values())
def test_image_size_is_printed_and_bounded(
    engine: None, image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    info = image_info(image)
    size_mb = info["Size"] / MB
    standin = (info["Config"].get("Labels") or {}).get(STANDIN_LABEL)
    bound = STANDIN_SIZE_BOUND_MB if standin else SIZE_BOUND_MB
    with capsys.disabled():
        base = f"stand-in base ({standin})" if standin else "official base"
        print(f"\n{image}: {size_mb:.0f} MB on the {base}; bound {bound} MB")
    assert 30 < size_mb <= bound


@pytest.mark.parametrize("image", IMAGES.values())
def test_image_filesystem_holds_no_secret_and_nothing_of_the_repo_beyond_the_context(
    engine: None, image: str
) -> None:
    bad: list[str] = []
    seen = 0
    fleet_code = False
    for member, data in image_files(image):
        seen += 1
        path = PurePosixPath("/", member.name)
        parts = path.parts
        if ".git" in parts or (member.isdir() and path.name == "secrets" and "site-packages" not in parts):
            bad.append(f"{path}: a .git or secrets/ directory")
        if any(str(path).endswith("/" + known) for known in PUBLIC_TEST_KEYS):
            continue
        if SECRET_FILE_NAME.match(path.name) and not member.isdir():
            bad.append(f"{path}: a secret's file name")
        if any(str(path).endswith("/" + rel) for rel in REPO_ONLY):
            bad.append(f"{path}: a repository file outside the build context")
        # Text files: libraries carry the published key pairs of their self-tests (GnuTLS's).
        if data is not None and b"\0" not in data[:8192] and PRIVATE_KEY.search(data):
            bad.append(f"{path}: holds a private key")
        fleet_code = fleet_code or (
            path.name == "main.py" and "fleetcli" in parts and "site-packages" in parts
        )
    assert seen > 1000, "the export was read"
    assert fleet_code, "the fleet's code is in the image: the scan saw the virtualenv"
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("image", IMAGES.values())
def test_image_runs_as_uid_10001_and_carries_no_secret_in_its_config(engine: None, image: str) -> None:
    config = image_info(image)["Config"]
    assert config["User"] == "10001:10001"
    for entry in config["Env"]:
        name, _, value = entry.partition("=")
        if re.search(r"KEY|SECRET|PASSWORD|TOKEN|DSN", name) and not name.endswith("_FILE"):
            assert not value, f"{image}: ENV {name} carries a value"
