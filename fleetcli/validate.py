"""What every process the `fleet` command starts checks of its settings (`fleet doctor` too)."""

from __future__ import annotations

from worker.settings import ConfigError, Settings


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

    from worker.llmconfig import config_from
    from worker.rollout import CANARY, STABLE, check_rollout_config, has_versions, version_config

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
