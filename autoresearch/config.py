"""Configuration: one pydantic-settings ``Settings``, filled from CLI options (its keyword
arguments), environment variables (AUTORESEARCH_*) and an optional ``[tool.autoresearch]`` table
in the workspace's pyproject.toml, in that priority.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from autoresearch.errors import UsageError
from autoresearch.metrics import SETUP_CAP, Budget

DEFAULT_PROMPT_TOKENS = 30_000  # bound of one prompt: cents a call against a GPU-hour
DEFAULT_TIME_BUDGET = {"cuda": 300.0, "cpu": 60.0, "mps": 60.0}
_ENV_PREFIX = "AUTORESEARCH_"
_BUDGETS = ("time_budget", "token_budget")
# set while Settings.exactly() builds one: its values and the defaults, nothing read around it
_EXACTLY: ContextVar[bool] = ContextVar("exactly", default=False)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=_ENV_PREFIX, env_ignore_empty=True,
                                      extra="forbid")

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
    gpu: str | None = None  # CUDA devices, one worker each: "0,1,2,3"
    workers: int | None = Field(default=None, ge=1, le=256)  # default: one per --gpu, else 1
    # ask the agent for the next proposal while jobs train (None: yes with several workers,
    # except for a scripted mock agent, whose entries were written one after the other; with
    # one worker the next proposal is asked for once the last result is in, so it sees it)
    pipeline: bool | None = None
    backend: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # a Ray cluster's address (default: ray's own lookup)
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
    # -- the agent's context (issue 21) --
    # bound of one prompt in tokens (about 4 characters each): the history gets what the
    # code, facts, notes and rules leave; kept changes are shown even past it
    prompt_tokens: int = Field(default=DEFAULT_PROMPT_TOKENS, ge=2_000, le=1_000_000)
    # experiments without a keep after which the prompt asks for a bolder change (0: never)
    plateau_after: int = Field(default=8, ge=0)
    thinking_tokens: int | None = Field(default=None, ge=1024)  # Anthropic extended thinking
    reasoning_effort: Literal["low", "medium", "high"] | None = None  # OpenAI reasoning models

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if _EXACTLY.get():
            return (init_settings,)
        env = _EnvSource(settings_cls, above=(init_settings,))
        return init_settings, env, _PyprojectSource(settings_cls, above=(init_settings, env))

    @classmethod
    def exactly(cls, values: Mapping[str, Any] | str) -> Settings:
        """These values (a mapping, or JSON such as a stored run's config) and the defaults,
        with nothing read from the environment or pyproject.toml."""
        token = _EXACTLY.set(True)
        try:
            if isinstance(values, str):
                return cls.model_validate_json(values)
            return cls.model_validate(values)
        finally:
            _EXACTLY.reset(token)

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


def _merged(sources: tuple[PydanticBaseSettingsSource, ...]) -> dict[str, Any]:
    """What ``sources`` (highest priority first) give together."""
    out: dict[str, Any] = {}
    for source in reversed(sources):
        out.update(source())
    return out


def _without_budget_if_given_above(values: dict[str, Any],
                                   above: Mapping[str, Any]) -> dict[str, Any]:
    # a budget given on a higher-priority level replaces one from a lower level: a time budget
    # on the command line is not "both" with a token budget in the environment
    if any(above.get(b) is not None for b in _BUDGETS):
        return {k: v for k, v in values.items() if k not in _BUDGETS}
    return values


def _workspace(given: Mapping[str, Any]) -> Path:
    return Path(given.get("workspace") or ".")


def _env_var(name: str) -> str | None:
    return os.environ.get(_ENV_PREFIX + name.upper()) or None  # empty counts as not set


class _EnvSource(EnvSettingsSource):
    """AUTORESEARCH_<FIELD> in upper case; values are text for pydantic to validate (no JSON),
    except ``editable``, which is comma-separated."""

    def __init__(self, settings_cls: type[BaseSettings],
                 above: tuple[PydanticBaseSettingsSource, ...]) -> None:
        super().__init__(settings_cls)
        self.above = above

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _env_var(field_name), field_name, False

    def prepare_field_value(self, field_name: str, field: FieldInfo, value: Any,
                            value_is_complex: bool) -> Any:
        if value is not None and field_name == "editable":
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def __call__(self) -> dict[str, Any]:
        return _without_budget_if_given_above(super().__call__(), _merged(self.above))


def _pyproject(workspace: Path) -> tuple[Path, dict[str, Any]]:
    """The workspace's pyproject.toml and its [tool.autoresearch] table, keys as written."""
    path = workspace / "pyproject.toml"
    if not path.is_file():
        return path, {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from e
    return path, data.get("tool", {}).get("autoresearch", {})


class _PyprojectSource(PydanticBaseSettingsSource):
    """``[tool.autoresearch]`` in the pyproject.toml of the workspace the sources above name
    (keys may use - for _). It cannot move the workspace itself."""

    def __init__(self, settings_cls: type[BaseSettings],
                 above: tuple[PydanticBaseSettingsSource, ...]) -> None:
        super().__init__(settings_cls)
        self.above = above

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole table at once

    def __call__(self) -> dict[str, Any]:
        above = _merged(self.above)
        _, table = _pyproject(_workspace(above))
        values = {k.replace("-", "_"): v for k, v in table.items()}
        values.pop("workspace", None)
        return _without_budget_if_given_above(values, above)


def _where(name: str, cli: Mapping[str, Any]) -> str:
    """Name a setting as the user gave it: option name, environment variable or pyproject key."""
    if name in cli:
        return name
    if _env_var(name) is not None:
        return _ENV_PREFIX + name.upper()
    try:
        path, table = _pyproject(_workspace({**{"workspace": _env_var("workspace")}, **cli}))
    except UsageError:
        return name
    key = next((k for k in table if k.replace("-", "_") == name), None)
    return f"{key} in {path}" if key is not None else name


def load_settings(cli: dict[str, Any]) -> Settings:
    """Settings for a command. ``cli`` holds the options the user gave (None: not given)."""
    cli = {k: v for k, v in cli.items() if v is not None}
    try:
        return Settings(**cli)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        where = ".".join([_where(loc[0], cli), *loc[1:]]) if loc else "settings"
        raise UsageError(f"bad setting {where}: {err['msg']}") from e
