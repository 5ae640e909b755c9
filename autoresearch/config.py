"""Configuration: one pydantic model, filled from CLI options, environment (AUTORESEARCH_*) and
an optional ``[tool.autoresearch]`` table in the workspace's pyproject.toml, in that priority.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autoresearch.errors import UsageError
from autoresearch.metrics import SETUP_CAP, Budget

DEFAULT_TIME_BUDGET = {"cuda": 300.0, "cpu": 60.0, "mps": 60.0}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workspace: Path = Path(".")
    db: Path | None = None
    agent: str = "auto"
    model: str | None = None
    base_url: str | None = None
    script: Path | None = None
    time_budget: float | None = Field(default=None, gt=0)
    token_budget: int | None = Field(default=None, gt=0)
    seed: int = 0
    seeds: int = Field(default=3, ge=1, le=32)
    device: str = "auto"
    gpu: str | None = None
    dataset: str = "shakespeare"
    min_delta: float = Field(default=0.0, ge=0)
    repairs: int = Field(default=2, ge=0, le=10)
    max_cost: float | None = Field(default=None, ge=0)
    setup_cap: float = Field(default=SETUP_CAP, gt=0)
    timeout: float | None = Field(default=None, gt=0)
    keep_worktrees: bool = False
    sandbox: bool = True  # fence training processes in with Landlock where the OS has it
    editable: list[str] = Field(default_factory=lambda: ["train.py"])
    prices: dict[str, tuple[float, float]] = Field(default_factory=dict)  # $/M tokens in, out
    agent_timeout: float = Field(default=180.0, gt=0)  # seconds for one model call
    agent_retries: int = Field(default=4, ge=0, le=20)  # on 429, 5xx, timeouts, lost connections
    agent_backoff: float = Field(default=2.0, ge=0)  # first retry delay, doubling
    tag: str | None = None

    @model_validator(mode="after")
    def _one_budget(self) -> Settings:
        if self.time_budget is not None and self.token_budget is not None:
            raise ValueError("give either a time budget or a token budget, not both")
        return self

    @property
    def db_path(self) -> Path:
        return self.db if self.db is not None else self.workspace / "results.db"

    def budget(self, device: str) -> Budget:
        if self.token_budget is not None:
            return Budget(kind="tokens", amount=self.token_budget)
        if self.time_budget is not None:
            return Budget(kind="time", amount=self.time_budget)
        return Budget(kind="time", amount=DEFAULT_TIME_BUDGET.get(device, 60.0))

    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


_ENV_PREFIX = "AUTORESEARCH_"


def _from_env() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = os.environ.get(_ENV_PREFIX + name.upper())
        if value is None or value == "":
            continue
        if name in ("editable",):
            out[name] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            out[name] = value
    return out


def _from_pyproject(workspace: Path) -> dict[str, Any]:
    path = workspace / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from e
    table = data.get("tool", {}).get("autoresearch", {})
    return {k.replace("-", "_"): v for k, v in table.items()}


def load_settings(cli: dict[str, Any]) -> Settings:
    """Merge the three sources. ``cli`` holds only the options the user actually gave."""
    cli = {k: v for k, v in cli.items() if v is not None}
    env = _from_env()
    workspace = Path(cli.get("workspace") or env.get("workspace") or ".")
    merged: dict[str, Any] = {**_from_pyproject(workspace), **env, **cli}
    # a budget given on a higher-priority level replaces one from a lower level
    budgets = {"time_budget", "token_budget"}
    for level in (cli, env):
        if budgets & level.keys():
            for other in budgets - level.keys():
                merged.pop(other, None)
            break
    merged["workspace"] = workspace
    try:
        return Settings.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        raise UsageError(f"bad setting {where}: {err['msg']}") from e
