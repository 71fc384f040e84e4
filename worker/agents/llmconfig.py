"""Settings of the `llm` agent (`agents.llm` in the config file; OPENAI_BASE_URL overrides base_url)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.control.rollout import ROLLOUT_KEYS
from worker.run.spend import Prices
from worker.settings import Settings


class LlmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    max_tokens_per_call: int = Field(1024, gt=0)
    temperature: float | None = Field(None, ge=0, le=2)
    # {input, output} in USD per million tokens, or a table {model: {input, output}}.
    prices_usd_per_1m_tokens: dict[str, Any] = Field(default_factory=lambda: {"input": 0.15, "output": 0.60})
    requests_per_minute: int | None = Field(None, gt=0)  # fleet-wide, per model
    tokens_per_minute: int | None = Field(None, gt=0)  # fleet-wide, per model
    timeout_ms: int = Field(60_000, gt=0)
    max_invalid_answers: int = Field(3, ge=0)  # malformed model answers the agent may recover from

    @model_validator(mode="after")
    def _prices_parse(self) -> LlmConfig:
        self.prices(self.model)
        return self

    def prices(self, model: str) -> Prices:
        table = self.prices_usd_per_1m_tokens
        if set(table) <= {"input", "output"}:
            return Prices(float(table.get("input", 0)), float(table.get("output", 0)))
        entry = table.get(model) or table.get("default")
        if entry is None:
            raise ValueError(f"prices_usd_per_1m_tokens has no price for model {model!r}")
        return Prices(float(entry.get("input", 0)), float(entry.get("output", 0)))


def config_from(agent_config: dict[str, Any]) -> LlmConfig:
    """LlmConfig from the `agents.llm` mapping; a bad value is a ValueError naming the key."""
    data = {k: v for k, v in agent_config.items() if k not in ROLLOUT_KEYS}
    if os.environ.get("OPENAI_BASE_URL"):
        data["base_url"] = os.environ["OPENAI_BASE_URL"]
    return LlmConfig.model_validate(data)


def llm_config(settings: Settings) -> LlmConfig:
    return config_from(settings.agents.get("llm", {}))
