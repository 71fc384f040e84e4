"""Every fleet config that the docs and `ops/` show is one `fleet config` accepts.

A user copies a YAML example from the README into a config file and expects the fleet to start.
Each ```yaml block of the README and the runbooks whose top-level keys include a section of the
fleet's settings is a fleet config, and so are `ops/fleet.yaml` and the `fleet.yaml` of the k8s
config map. Each one runs through the real `fleet config` command, which stops with exit 2 and a
message naming the setting when something does not parse. YAML blocks of other programs (a
Prometheus scrape config, a k8s object) name no fleet section and are left alone.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import FLEET_CMD, ROOT
from worker.settings import Settings

DOCS = [ROOT / "README.md", ROOT / "ops" / "runbook.md", ROOT / "ops" / "k8s" / "README.md"]
_YAML_BLOCK = re.compile(r"^```ya?ml[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def fleet_sections() -> set[str]:
    """The top-level keys a fleet config file may hold."""
    return set(Settings.model_fields)


def doc_examples() -> list[tuple[str, str]]:
    """(where, text) of every fleet config in the docs, ops/fleet.yaml and the k8s config map."""
    found: list[tuple[str, str]] = []
    for doc in DOCS:
        if not doc.is_file():
            continue
        text = doc.read_text()
        for match in _YAML_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            body = match.group(1)
            data = yaml.safe_load(body)
            if isinstance(data, dict) and fleet_sections() & set(data):
                found.append((f"{doc.relative_to(ROOT)}:{line}", body))
    found.append(("ops/fleet.yaml", (ROOT / "ops" / "fleet.yaml").read_text()))
    for doc in yaml.safe_load_all((ROOT / "ops" / "k8s" / "config.yaml").read_text()):
        data: dict[str, Any] = (doc or {}).get("data") or {}
        if "fleet.yaml" in data:
            found.append(("ops/k8s/config.yaml fleet.yaml", data["fleet.yaml"]))
    return found


EXAMPLES = doc_examples()


def clean_env(config: Path) -> dict[str, str]:
    dropped = ("FLEET_", "AGENT_MAX_", "REDIS_URL", "SENTRY_DSN", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["FLEET_CONFIG"] = str(config)
    return env


def fleet_config(config: Path) -> subprocess.CompletedProcess[str]:
    """`fleet config` with `config` as the config file and no fleet setting from the environment."""
    return subprocess.run(
        [*FLEET_CMD, "config"],
        env=clean_env(config),
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_docs_hold_the_examples_this_module_checks() -> None:
    wheres = [where for where, _ in EXAMPLES]
    assert sum(w.startswith("README.md") for w in wheres) >= 3, wheres
    assert "ops/fleet.yaml" in wheres and "ops/k8s/config.yaml fleet.yaml" in wheres


@pytest.mark.parametrize(("where", "text"), EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_fleet_config_accepts_the_example(where: str, text: str, tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(text)
    done = fleet_config(config)
    assert done.returncode == 0, f"{where}: fleet config exited {done.returncode}: {done.stderr[-2000:]}"
    printed = yaml.safe_load(done.stdout)
    for section, value in (yaml.safe_load(text) or {}).items():
        assert section in printed, f"{where}: `fleet config` does not show {section!r}"
        if section == "agents":
            assert set(printed["agents"]) == set(value), where


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("agents:\n  llm:\n    canary_percent: 140\n", "agents.llm.canary_percent"),
        ("agents:\n  llm:\n    versions: {stable: {}}\n", "agents.llm.versions"),
        (
            "agents:\n  llm:\n    versions:\n      stable: {}\n      canary: {max_tokens_per_call: 0}\n",
            "agents.llm.versions.canary",
        ),
        ("agents:\n  llm:\n    modle: gpt-4o-mini\n", "agents.llm"),
    ],
)
def test_fleet_config_names_a_bad_agent_setting(text: str, named: str, tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(text)
    done = fleet_config(config)
    assert done.returncode == 2, done
    assert named in done.stderr, done.stderr
