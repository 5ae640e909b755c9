"""measure(): real processes, deadlines, logs, and a metric the training code cannot touch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from autoresearch import integrity, runner
from autoresearch.data import PreparedData
from autoresearch.errors import UsageError
from autoresearch.metrics import Budget, Metrics
from autoresearch.models import RunStatus

SOURCES = Path(__file__).parent / "sources"
TOKENS = Budget(kind="tokens", amount=8 * 256 * 30)  # 30 steps of the tiny source
UNIGRAM_BITS = 4.31  # entropy of the generated corpus's byte frequencies


def run_source(source: Path, data: PreparedData, out: Path, **kw: object) -> Metrics:
    kw = {"budget": TOKENS, "seed": 0, "device": "cpu", **kw}
    return runner.measure(runner.Job(source=source, data=data.path, out_dir=out,
                                     **kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory,
           prepared_data: PreparedData) -> tuple[Metrics, Path]:
    out = tmp_path_factory.mktemp("honest")
    return run_source(SOURCES / "tiny", prepared_data, out), out


def test_tiny_source_learns(honest: tuple[Metrics, Path], prepared_data: PreparedData) -> None:
    metrics, out = honest
    assert metrics.status == RunStatus.ok, metrics.error
    assert metrics.val_bpb is not None and metrics.val_bpb < UNIGRAM_BITS - 0.8
    assert metrics.causal_ok is True and metrics.error is None
    assert (metrics.train_tokens, metrics.steps) == (TOKENS.amount, 30)
    assert (metrics.dataset, metrics.dataset_sha256) == (prepared_data.name,
                                                         prepared_data.sha256)
    assert metrics.eval_tokens > 0 and metrics.params > 0 and metrics.torch_version
    assert Metrics.read(out / "metrics.json") == metrics


def test_token_budget_run_is_bit_reproducible(
    honest: tuple[Metrics, Path], prepared_data: PreparedData, tmp_path: Path,
) -> None:
    again = run_source(SOURCES / "tiny", prepared_data, tmp_path)
    assert again.val_bpb == honest[0].val_bpb and again.val_loss == honest[0].val_loss


def test_fake_metrics_printed_or_written_change_nothing(
    honest: tuple[Metrics, Path], prepared_data: PreparedData, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every temporary folder of the measurement lies next to out/, where the source can guess
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for name in ("adversary", "tiny"):
        shutil.copytree(SOURCES / name, tmp_path / name)
    out = tmp_path / "out"
    # without the OS sandbox, which would stop the planting: the pipe alone must hold
    metrics = run_source(tmp_path / "adversary", prepared_data, out, sandbox=False)
    assert metrics.status == RunStatus.ok
    assert metrics.val_bpb == honest[0].val_bpb  # same training, same number: not 0.001
    assert Metrics.read(out / "metrics.json") == metrics
    assert "val_bpb 0.001" in (out / "run.log").read_text()  # it did print its fake
    assert (tmp_path / "metrics.json").exists()  # and it did plant files


def test_train_cannot_reach_the_validation_split(
    make_dataset: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 80% train, then the validation and test splits in bytes the train text never has
    train_text, held_text = "abcdefgh " * 10_000, "XYZ0123456789\n" * 1700
    data = make_dataset(train_text + held_text[: len(train_text) // 4], "disjoint")  # type: ignore[operator]
    assert data.train_tokens == len(train_text)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(data.path.parent))  # where the split lives
    metrics = run_source(SOURCES / "snoop", data, tmp_path / "out")
    assert metrics.status == RunStatus.invalid_model  # it returned no model
    log = (tmp_path / "out" / "run.log").read_text()
    found = json.loads(log.split("SNOOP ", 1)[1].splitlines()[0])
    train_bytes = set(train_text.encode())
    assert set(found["batch_bytes"]) <= train_bytes
    assert set(found["reachable_bytes"]) <= train_bytes
    assert found["files"] == []  # no dataset folder named at all: batches come from the broker
    assert not any(name.endswith(".bin") for name in found["scratch"])
    assert not any(str(data.path) in arg for arg in found["argv"])
    # no variable names the dataset cache, and ~ is an empty folder in its scratch space
    assert found["our_settings"] == []
    assert found["home"] != str(Path.home()) and found["home"].startswith(found["cwd"])


def test_training_that_changes_installed_code_gets_no_metric(
    prepared_data: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    package = tmp_path / "site" / "fakepkg"  # stands in for torch: rewriting it is the attack
    package.mkdir(parents=True)
    (package / "functional.py").write_text("def cross_entropy(x, y): ...\n")
    monkeypatch.setattr(integrity, "watched_roots", lambda: (package,))
    monkeypatch.setenv("TAMPER_PATH", str(package / "functional.py"))
    # the tripwire is what stands where Landlock is missing (with it, the write is refused)
    metrics = run_source(SOURCES / "tamper", prepared_data, tmp_path / "out", sandbox=False)
    assert metrics.status == RunStatus.crash and metrics.val_bpb is None
    assert metrics.error == ("the training process changed installed code the evaluation runs: "
                             f"{package / 'functional.py'}")


def test_crash_is_reported_and_run_log_stays_bounded(
    prepared_data: PreparedData, tmp_path: Path,
) -> None:
    metrics = run_source(SOURCES / "noisy", prepared_data, tmp_path)
    assert metrics.status == RunStatus.crash and metrics.val_bpb is None
    assert metrics.error is not None
    assert metrics.error.splitlines()[0] == "RuntimeError: flooded"
    log = (tmp_path / "run.log").read_text()
    # the flood was ~2 MB
    assert len(log) <= runner.processes.LOG_HEAD + runner.processes.LOG_TAIL + 200
    assert "FIRST LINE OF THE FLOOD" in log and "LAST LINE OF THE FLOOD" in log
    assert "bytes cut from the middle of this log" in log
    assert "== crash" in log  # the runner's summary, at the very end


@pytest.mark.slow  # waits for a 12 s deadline
def test_hanging_source_and_its_child_are_killed_at_the_deadline(
    prepared_data: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = time.monotonic()
    metrics = run_source(SOURCES / "hang", prepared_data, tmp_path / "out", timeout=12.0)
    assert metrics.status == RunStatus.timeout and metrics.val_bpb is None
    assert "hard deadline" in (metrics.error or "")
    assert time.monotonic() - started < 30
    log = (tmp_path / "out" / "run.log").read_text()
    pid = int(log.split("child pid ", 1)[1].split()[0])
    for _ in range(100):  # the kill is already done; give the kernel a moment to reap
        if not _alive(pid):
            break
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ")[-1].startswith("Z"))


def test_train_command_writes_metrics_and_exits_non_zero_on_failure(tmp_path: Path) -> None:
    """A whole measurement from a shell is `autoresearch train`; the harness's own command line
    runs one phase, as the runner starts it, and never the runner again."""
    from conftest import generated_text

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(generated_text(), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(runner.__file__).parent.parent),
           "AUTORESEARCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "autoresearch", "--workspace", str(tmp_path), "train",
         "--source", str(SOURCES / "not_a_model"), "--dataset", str(corpus),
         "--token-budget", "4096", "--seed", "1", "--device", "cpu"],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    metrics = Metrics.read(tmp_path / "experiments" / "train" / "seed-1" / "metrics.json")
    assert metrics.status == RunStatus.invalid_model and metrics.seed == 1
    assert "train() returned dict" in proc.stdout
    whole = subprocess.run(
        [sys.executable, "-m", "autoresearch.harness", "--source", str(SOURCES / "not_a_model"),
         "--data", str(tmp_path), "--token-budget", "4096", "--out", str(tmp_path / "m.json")],
        capture_output=True, text=True, timeout=120, env=env)
    assert whole.returncode == 2 and "--phase" in whole.stderr


def test_measure_never_raises_for_a_bad_job(tmp_path: Path) -> None:
    metrics = runner.measure(runner.Job(source=SOURCES / "tiny", data=tmp_path / "missing",
                                        budget=TOKENS, seed=0, device="cpu",
                                        out_dir=tmp_path / "out"))
    assert metrics.status == RunStatus.crash and "not a prepared dataset" in str(metrics.error)
    assert Metrics.read(tmp_path / "out" / "metrics.json").status == RunStatus.crash


def test_resolve_device() -> None:
    assert runner.resolve_device("auto") in ("cpu", "cuda", "mps")
    assert runner.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(UsageError):
        runner.resolve_device("tpu")


def test_bounded_log_keeps_head_and_tail(tmp_path: Path) -> None:
    with runner.BoundedLog(tmp_path / "log", head=10, tail=10) as log:
        for i in range(100):
            log.write(f"{i:03d}\n".encode())
    text = (tmp_path / "log").read_text()
    assert text.startswith("000\n001\n00") and text.endswith("098\n099\n")
    assert "[... 380 bytes cut" in text


def test_a_module_that_would_shadow_an_import_trips_the_wire_and_a_readme_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(integrity, "eval_path", lambda: [str(tmp_path)])
    monkeypatch.setattr(integrity, "watched_roots", lambda: ())
    before = integrity.installed_signature()
    (tmp_path / "README.md").write_text("edited while a loop runs\n")
    # a folder no import can name (a job's scratch folder, when the path holds the temp dir)
    (tmp_path / "autoresearch-train-x1y2").mkdir()
    (tmp_path / "not-a-module.py").write_text("")
    assert integrity.changed_path(before, integrity.installed_signature()) == ""
    (tmp_path / "numpy").mkdir()  # a package (or namespace package) that would shadow one
    assert integrity.changed_path(before, integrity.installed_signature()) == str(tmp_path)
    (tmp_path / "numpy").rmdir()
    (tmp_path / "torch.py").write_text("cross_entropy = None\n")
    assert integrity.changed_path(before, integrity.installed_signature()) == str(tmp_path)


def test_a_dataset_other_than_the_runs_is_refused_before_training(
    prepared_data: PreparedData, tmp_path: Path,
) -> None:
    m = run_source(SOURCES / "tiny", prepared_data, tmp_path, expect_sha256="0" * 64)
    assert m.status == RunStatus.crash and m.val_bpb is None and m.steps == 0
    assert m.error is not None and "never compared" in m.error
    assert not (tmp_path / "run.log").exists()  # nothing was started
