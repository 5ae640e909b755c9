"""The first commands a new user runs: init, prepare, train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoresearch.cli import app

SOURCES = Path(__file__).parent / "sources"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))


def _corpus(tmp_path: Path) -> Path:
    from conftest import generated_text

    path = tmp_path / "corpus.txt"
    path.write_text(generated_text(60_000), encoding="utf-8")
    return path


def test_train_measures_a_source_and_prints_its_metrics(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    args = ["--workspace", str(tmp_path), "train", "--source", str(SOURCES / "tiny"),
            "--token-budget", "8192", "--device", "cpu", "--dataset", str(corpus)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["status"] == "ok" and 0 < metrics["val_bpb"] < 8
    assert metrics["dataset"] == "corpus" and len(metrics["dataset_sha256"]) == 64
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "val_bpb" in result.stdout


def test_train_of_a_crashing_source_fails_with_its_reason(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "--workspace", str(tmp_path), "train", "--source", str(SOURCES / "crash"),
        "--token-budget", "4096", "--device", "cpu", "--dataset", str(_corpus(tmp_path))])
    assert result.exit_code == 1
    assert "status crash" in result.stdout and "Traceback" not in result.stdout.splitlines()[0]


@pytest.mark.parametrize("args, message", [
    (["train", "--source", "/nonexistent"], "has no train.py"),
    (["train", "--device", "tpu", "--source", str(SOURCES / "tiny")], "unknown device"),
    (["train", "--time-budget", "5", "--token-budget", "9"], "not both"),
])
def test_train_bad_input_is_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_prepare_reports_sizes_and_rejects_bad_text(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    result = CliRunner().invoke(app, ["prepare", "--dataset", str(corpus)])
    assert result.exit_code == 0, result.output
    assert "48,000 train / 6,000 val / 6,000 test" in result.stdout
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = CliRunner().invoke(app, ["prepare", "--dataset", str(empty)])
    assert result.exit_code == 1 and "empty.txt" in result.output
    binary = tmp_path / "bad.txt"
    binary.write_bytes(b"\xff\xfe\x00 not utf-8")
    result = CliRunner().invoke(app, ["prepare", "--dataset", str(binary)])
    assert result.exit_code == 1 and "bad.txt" in result.output


def test_init_makes_a_workspace_that_loop_accepts(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["init", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ws" / "baseline" / "train.py").is_file()
    (tmp_path / "ws" / "prompts" / "system.md").write_text("mine")
    result = CliRunner().invoke(app, ["init", str(tmp_path / "ws")])
    assert result.exit_code == 2 and "prompts/system.md" in result.output
