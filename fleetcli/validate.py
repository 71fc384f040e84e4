"""The settings as the `fleet` command loads them: every process it starts checks them at start
and stops on the first that does not hold, naming it; `fleet doctor` reports it instead."""

from __future__ import annotations

import sys

from worker.settings import ConfigError, Settings, load_settings

USAGE_ERROR = 2  # the command's exit code for a usage, configuration or connection error


def checked_settings() -> Settings:
    """The settings, loaded and validated; one that does not hold ends the command with
    USAGE_ERROR and a message on stderr naming it."""
    try:
        settings = load_settings()
        validate_settings(settings)
        return settings
    except ConfigError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


def validate_settings(settings: Settings) -> None:
    """Raise a ConfigError naming the first setting that does not hold: API keys, webhook secrets,
    the run history's URL, every agent's rollout and the `llm` agent's settings."""
    settings.tenant_keys()  # a bad key list stops every process, not only the API
    settings.admin_key_set()
    settings.tenant_webhook_secrets()
    _check_database_url(settings)
    _check_agents(settings)


def _check_database_url(settings: Settings) -> None:
    """The run history's URL parses and names a supported database (the message shows no URL)."""
    from worker.history.db import parse_url

    try:
        parse_url(settings.history_database_url())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_agents(settings: Settings) -> None:
    """Every agent's rollout keys, and the `llm` agent's settings in each of its versions."""
    from pydantic import ValidationError

    from worker.agents.llmconfig import config_from
    from worker.control.rollout import CANARY, STABLE, check_rollout_config, has_versions, version_config

    for agent, config in settings.agents.items():
        try:
            check_rollout_config(agent, dict(config))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if "llm" not in settings.agents:
        return
    config = dict(settings.agents["llm"])
    for version in (STABLE, CANARY) if has_versions(config) else (None,):
        where = f"agents.llm.versions.{version}" if version else "agents.llm"
        try:
            config_from(version_config(config, version))
        except (ValidationError, ValueError) as exc:
            lines = str(exc).splitlines()
            raise ConfigError(f"{where}: {' '.join(lines[:3])}") from None
