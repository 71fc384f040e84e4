"""ops/fleet.yaml, ops/redis.conf and ops/runbook.md: the shipped config is the built-in default,
the Kubernetes ConfigMaps carry both files unchanged, and the runbook names only real kill
switches and `fleet` commands."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from tests.harness import ROOT
from tests.ops.helpers import k8s_object, redis_directives
from worker.keys import Keys
from worker.settings import Settings


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
