"""benchmarks/gpu_check.py on this CPU-only machine: it runs up to its first CUDA step and
exits 2 saying why; its probe reports the fence and how its process was started; a broken
step stops the check with the step's name."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import torch

from autoresearch import runner, sandbox
from autoresearch.metrics import Budget

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="on a CUDA machine gpu_check runs for real")


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from conftest import generated_text

    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(generated_text(60_000), encoding="utf-8")
    return path


def test_without_cuda_it_runs_setup_then_says_so_and_exits_2(corpus: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(corpus)],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "[setup] ok: torch " in done.stdout and "dataset corpus" in done.stdout
    assert "[cuda] ..." in done.stdout and "[sandbox]" not in done.stdout
    assert done.stderr.strip() == (
        f"gpu_check: no CUDA device here (torch {torch.__version__}, CPU build): gpu_check "
        "checks the CUDA paths and needs a GPU; `autoresearch doctor` says why there is none")


def test_a_broken_step_stops_the_check_with_its_name(
        gpu_check: ModuleType, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the logs it keeps land here
    ran: list[str] = []

    def fine(c: object) -> str:
        ran.append("cuda")
        return "pretend GPU"

    def broken(c: object) -> str:
        raise gpu_check.StepFailed("the fenced probe could read the validation split")

    gpu_check.STEP_FUNCS.update({"cuda": fine, "sandbox": broken})
    assert gpu_check.main(["--data", str(corpus)]) == 1
    out, err = capsys.readouterr()
    assert ran == ["cuda"] and "[warm-slot]" not in out
    assert err.startswith("gpu_check FAILED at step 'sandbox': the fenced probe could read "
                          "the validation split (logs kept in ")
    assert "  sandbox " in out and "FAILED: the fenced probe" in out  # the table of steps
    kept = err.rsplit("(logs kept in ", 1)[1].split(")")[0]
    assert (Path(kept) / "probe" / "train.py").is_file() and Path(kept).parent == tmp_path


def test_the_probe_reports_the_fence_and_its_start(gpu_check: ModuleType, corpus: Path,
                                                   tmp_path: Path) -> None:
    """The probe gpu_check trains on CUDA, trained here on the CPU through the real runner:
    its report is what the sandbox and warm-slot steps read."""
    c = gpu_check.Check(work=tmp_path / "work", budget=60.0, dataset=str(corpus))
    assert "dataset corpus" in gpu_check.step_setup(c)
    job = runner.Job(source=c.probe, data=c.prepared.path, budget=Budget(kind="tokens",
                     amount=8 * 256 * 4), seed=0, device="cpu", out_dir=tmp_path / "out")
    m = runner.measure(job)
    assert m.ok, m.error
    got = gpu_check._probe_lines(job.out_dir)
    assert got["read"] == ("refused" if sandbox.abi() else "allowed")
    assert got["bad_fork"] == "False" and got["visible"] == "0"
    assert "--fork-server" not in got["started_as"]  # a cold job: started by this process


def test_the_probe_tells_a_fork_servers_child(gpu_check: ModuleType, corpus: Path,
                                              tmp_path: Path) -> None:
    """On a CPU a warm slot forks its processes from a fork server: the probe's report shows
    it, which is what the warm-slot step refuses on CUDA."""
    c = gpu_check.Check(work=tmp_path / "work", budget=60.0, dataset=str(corpus))
    gpu_check.step_setup(c)
    budget = Budget(kind="tokens", amount=8 * 256 * 2)
    with runner.Slot(tmp_path / "slot") as slot:
        jobs = [runner.Job(source=c.probe, data=c.prepared.path, budget=budget, seed=i,
                           device="cpu", out_dir=tmp_path / f"out-{i}") for i in range(2)]
        got = [runner.measure(j, slot=slot) for j in jobs]
    assert all(m.ok for m in got) and got[1].warm
    assert "--fork-server" in gpu_check._probe_lines(jobs[1].out_dir)["started_as"]


def test_the_baseline_without_compile_changes_only_the_cuda_preset(
        gpu_check: ModuleType, tmp_path: Path) -> None:
    original = (ROOT / "baseline" / "train.py").read_text(encoding="utf-8")
    same = gpu_check._baseline_source(tmp_path / "a", compile_=True) / "train.py"
    assert same.read_text(encoding="utf-8") == original
    plain = (gpu_check._baseline_source(tmp_path / "b", compile_=False) / "train.py").read_text(
        encoding="utf-8")
    changed = [(a, b) for a, b in zip(original.splitlines(), plain.splitlines(), strict=True)
               if a != b]
    assert len(changed) == 1
    before, after = changed[0]
    assert before.strip().startswith("COMPILE=True,") and after.strip().startswith(
        "COMPILE=False,")
    cuda_at = original.index("CUDA = dict(")
    assert original.index(before) > cuda_at  # the CUDA preset's line, not the CPU one's
