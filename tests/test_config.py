"""Settings come from CLI options, then AUTORESEARCH_* variables, then the workspace's
[tool.autoresearch] table; a bad value is one line naming where it came from, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoresearch.cli import app
from autoresearch.config import Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AUTORESEARCH_"):
            monkeypatch.delenv(name)


def _pyproject(ws: Path, table: str) -> None:
    (ws / "pyproject.toml").write_text(f"[tool.autoresearch]\n{table}\n", encoding="utf-8")


def test_cli_beats_env_beats_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pyproject(tmp_path, 'agent = "from-toml"\ndevice = "from-toml"\nseeds = 5\nmin-delta = 0.5')
    monkeypatch.setenv("AUTORESEARCH_AGENT", "from-env")
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "from-env")
    monkeypatch.setenv("AUTORESEARCH_MODEL", "")  # empty: not set
    s = load_settings({"workspace": tmp_path, "device": "from-cli", "tag": None})
    assert (s.device, s.agent, s.seeds, s.min_delta) == ("from-cli", "from-env", 5, 0.5)
    assert s.model is None and s.tag is None and s.workspace == tmp_path


def test_the_workspace_named_in_env_is_where_pyproject_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pyproject(tmp_path, "seeds = 7")
    monkeypatch.setenv("AUTORESEARCH_WORKSPACE", str(tmp_path))
    assert load_settings({}).seeds == 7
    assert load_settings({"workspace": tmp_path / "elsewhere"}).seeds == 3


def test_a_budget_on_a_higher_level_replaces_one_below(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pyproject(tmp_path, "token-budget = 100")
    ws = {"workspace": tmp_path}
    assert load_settings(ws).budget("cpu").kind == "tokens"
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "4")
    s = load_settings(ws)
    assert (s.time_budget, s.token_budget) == (4.0, None)
    s = load_settings({**ws, "token_budget": 9})
    assert (s.time_budget, s.token_budget) == (None, 9)


def test_editable_in_env_is_comma_separated(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_EDITABLE", "train.py, model.py,")
    assert load_settings({"workspace": tmp_path}).editable == ["train.py", "model.py"]


def test_exactly_reads_neither_env_nor_pyproject(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _pyproject(tmp_path, "seeds = 7")
    monkeypatch.setenv("AUTORESEARCH_AGENT", "from-env")
    s = Settings.exactly({"workspace": tmp_path})
    assert (s.agent, s.seeds) == ("auto", 3)
    assert Settings.exactly(s.model_dump_json()) == s


def test_bad_value_in_env_is_one_line_naming_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_SEEDS", "many")
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path), "runs"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: bad setting AUTORESEARCH_SEEDS: ")
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("table, key", [("min-delta = -1", "min-delta"),
                                        ("bogus = 1", "bogus")])
def test_bad_value_in_pyproject_is_one_line_naming_the_key(
        tmp_path: Path, table: str, key: str) -> None:
    _pyproject(tmp_path, table)
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path), "runs"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: bad setting {key} in {tmp_path / 'pyproject.toml'}: ")
    assert len(result.output.strip().splitlines()) == 1
