"""One measurement: the trusted broker around a training process, then an evaluation process.

``measure(job)`` reads top to bottom as the measurement runs:

1. check the device and the dataset (its sha256 against the run's);
2. take the slot's waiting training process or start one (:mod:`.slot`), in a scratch folder
   that holds nothing but its home and temporary folders and its own compiler caches;
3. hand it the job and serve it (:mod:`.broker`): every batch, the tokens, the clock and the
   model's bytes go through this process; the training process's group is killed the moment
   the broker is done with it;
4. check the installed code the evaluation will import is unchanged (the tripwire);
5. score the model in a fresh evaluation process of trusted code (:mod:`.slot`'s
   ``Evaluator``), which answers through a pipe only this process holds;
6. write ``out_dir/metrics.json``: the broker's counts, the evaluation's numbers, and what the
   training process said of itself only in the fields kept for display.

Nothing the training process prints or writes can become the metric or a count.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from autoresearch import curves, integrity, mfu
from autoresearch import sandbox as sandbox_mod
from autoresearch.data import load_prepared
from autoresearch.errors import DataError, UsageError
from autoresearch.metrics import SETUP_CAP, Budget, EvalReport, Metrics
from autoresearch.models import RunStatus
from autoresearch.runner.broker import Broker, Served, train_deadline
from autoresearch.runner.processes import PID_FILE, BoundedLog, kill_stale
from autoresearch.runner.slot import (
    WARM_DIR,
    Evaluator,
    Pair,
    Slot,
    start_eval,
    start_trainer,
    warm_key,
)

__all__ = ["EVAL_TIMEOUT", "PID_FILE", "WARM_DIR", "BoundedLog", "Job", "Slot", "kill_stale",
           "measure", "resolve_device", "sandbox_state", "train_deadline"]

EVAL_TIMEOUT = 180.0  # seconds for the evaluation process
GRACE = 10.0  # seconds for a process's own start and end, beyond what the broker allows


def resolve_device(device: str) -> str:
    """"auto" -> the best device here (cuda, mps, cpu); other names are checked and kept."""
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        return device
    raise UsageError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class Job:
    """One training + evaluation of ``source`` on one seed: everything a measurement needs to
    know, as one value (a worker adds where it runs: its GPU, its threads, its warm slot)."""

    source: Path  # a folder with the editable files (a worktree)
    data: Path  # the prepared dataset's folder
    budget: Budget
    seed: int
    device: str  # "cpu", "cuda", "mps": a worker's GPU is given by its CUDA_VISIBLE_DEVICES
    out_dir: Path  # run.log, metrics.json (and the curve) are written here
    setup_cap: float = SETUP_CAP
    timeout: float | None = None  # a hard deadline from the hand-off, if shorter
    sandbox: bool = True  # fence the training process in with Landlock where the OS has it
    expect_sha256: str | None = None  # refuse any other dataset, before training
    seq_len: int = 256  # the evaluation's context length
    # "test": the evaluation also scores the held-out test split (a report measurement; the
    # training process gets the same job either way, and never the split's path or values)
    split: str = "val"


def measure(job: Job, *, slot: Slot | None = None, gpu: str | None = None,
            threads: int | None = None, echo: bool = False) -> Metrics:
    """Train ``job.source`` under its budget and evaluate it; write
    ``job.out_dir``/{run.log,metrics.json}.

    Never raises for a failed job: the returned Metrics has a non-ok status and an error.
    With a ``slot``, the job runs in processes the slot started earlier where it can, and the
    slot starts the next job's while this one trains. ``gpu``: the only GPU its processes see;
    ``threads``: torch/OpenMP threads of each process (jobs side by side on shared cores);
    ``echo`` also copies the processes' output to this process's stdout.
    """
    job.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    metrics = Metrics(status=RunStatus.crash, seed=job.seed, device=job.device,
                      seq_len=job.seq_len, threads=threads)
    try:
        device = resolve_device(job.device)
        prepared = load_prepared(job.data)
    except (UsageError, DataError) as e:
        metrics.error = str(e)
        return _finish(metrics, job.out_dir, started)
    metrics.device = device
    metrics.dataset, metrics.dataset_sha256 = prepared.name, prepared.sha256
    if job.split == "test" and not prepared.has_test:
        metrics.error = (f"the dataset in {job.data} has no test split (prepared before test "
                         "splits): prepare it again for one")
        return _finish(metrics, job.out_dir, started)
    if job.expect_sha256 is not None and prepared.sha256 != job.expect_sha256:
        metrics.error = (f"the dataset in {job.data} is {prepared.name} "
                         f"({prepared.sha256[:12]}), not the run's ({job.expect_sha256[:12]}): "
                         "metrics from different corpora are never compared")
        return _finish(metrics, job.out_dir, started)
    env = integrity.child_env(gpu, threads)
    sys.dont_write_bytecode = True  # our own late imports must not change the watched files
    metrics.sandbox = sandbox_state(job.sandbox)
    # warm processes only behind the OS fence: it keeps this job's code away from the next
    # job's waiting processes (no ptrace, signals or files outside its own scratch)
    key = warm_key(env, device) if slot is not None and metrics.sandbox.startswith(
        "landlock") else None
    pair = slot.take(key) if slot is not None and key is not None else None
    installed = pair.installed if pair is not None else integrity.installed_signature()
    if slot is not None and key is not None and pair is None:
        pair = slot.spawn(key, env, installed)  # cold, but through the same path
    scratch = pair.scratch if pair is not None else Path(
        tempfile.mkdtemp(prefix="autoresearch-train-"))
    private = Path(tempfile.mkdtemp(prefix="autoresearch-artifact-"))  # never named to training
    log = BoundedLog(job.out_dir / "run.log", echo=echo)
    try:
        with log:
            # the next job's pair starts as soon as this one's training has its job
            then = (lambda: slot.start_pair(key, env, installed)) \
                if pair is not None and slot is not None and key is not None else None
            served = _train(job, metrics, log, scratch, pair, private / "model.pt",
                                     env, device, then)
            metrics = _served(metrics, served, log, device)
            curves.collect(scratch / curves.CURVE_FILE, job.out_dir / curves.CURVE_FILE)
            if changed := integrity.changed_path(installed, integrity.installed_signature()):
                if slot is not None:
                    slot.discard(servers=True)  # they may have imported what changed
                metrics.status = RunStatus.crash
                metrics.error = ("the training process changed installed code the evaluation "
                                 f"runs: {changed}")
            elif served.status == RunStatus.ok and served.artifact is not None:
                metrics = _evaluate(metrics, served.artifact, job.data, prepared.sha256, env,
                                    log, slot.eval_for(pair, env) if slot and pair else None,
                                    then=None if slot is None else lambda: slot.add_eval(env),
                                    split=job.split)
            metrics = _finish(metrics, job.out_dir, started)
            log.write(f"\n== {metrics.status.value}: val_bpb {metrics.val_bpb}, "
                      f"{metrics.total_seconds:.1f} s ==\n".encode())
    finally:
        if pair is not None:
            pair.close()
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)
    return metrics


def _train(job: Job, metrics: Metrics, log: BoundedLog, scratch: Path, pair: Pair | None,
           artifact: Path, env: dict[str, str], device: str,
           then: Callable[[], None] | None) -> Served:
    """Hand the training process its job and broker it to its end; its group is dead after."""
    if metrics.sandbox.startswith("landlock"):
        metrics.sandbox += integrity.dataset_exposed(job.data, job.source, scratch)
    args = ["--phase", "train", "--source", str(Path(job.source).resolve()),
            *job.budget.cli_args(), "--seed", str(job.seed), "--device", device,
            "--seq-len", str(job.seq_len), "--sandbox", "on" if job.sandbox else "off"]
    if pair is not None:
        metrics.warm = True
        trainer = pair.train
        trainer.proc.hand([*args, "--channel", f"fd:{trainer.fd}"], log,
                          job.out_dir / PID_FILE)
        if then is not None:
            then()
    else:
        trainer = start_trainer([sys.executable, "-m", "autoresearch.harness", *args],
                                cwd=scratch, env=integrity.training_env(env, scratch),
                                pid_file=job.out_dir / PID_FILE,
                                log=log, cold=True)
    handed_at = trainer.proc.handed_at
    train_split = np.memmap(Path(job.data) / "train.bin", dtype=np.uint8, mode="r")
    broker = Broker(trainer.channel, train=train_split, budget=job.budget, seed=job.seed,
                    setup_cap=job.setup_cap, artifact=artifact, pid=trainer.proc.proc.pid,
                    timeout=job.timeout)
    try:
        served = broker.serve(handed_at)
    finally:
        trainer.close()  # the whole group, now (the clock has stopped), and its channel
    if "ready_at" in served.reported:  # said with its hello
        metrics.start_seconds = max(0.0, served.reported["ready_at"] - trainer.proc.started)
    return served


def _served(metrics: Metrics, served: Served, log: BoundedLog, device: str) -> Metrics:
    """The broker's counts into the metrics; what the process said of itself, for display."""
    said = served.reported
    metrics.steps, metrics.train_tokens = served.steps, served.tokens
    metrics.setup_seconds, metrics.train_seconds = served.setup_seconds, served.train_seconds
    metrics.export_seconds = said.get("export_seconds", 0.0)
    metrics.speed_before, metrics.speed_after = said.get("speed_before"), said.get("speed_after")
    if device.startswith("cuda") or served.peak_memory_mb is None:
        metrics.peak_memory_mb = said.get("peak_memory_mb", 0.0)  # the GPU's, as it said
    else:
        metrics.peak_memory_mb = served.peak_memory_mb
    if served.status != RunStatus.ok:
        metrics.status = served.status
        recent = log.recent()
        metrics.error = (served.error or "") + (f"\n{recent}" if recent and served.status in (
            RunStatus.crash, RunStatus.timeout) else "")
    return metrics


def _evaluate(metrics: Metrics, artifact: Path, data: Path, sha256: str,
              env: dict[str, str], log: BoundedLog, warm: Evaluator | None = None,
              then: Callable[[], None] | None = None, split: str = "val") -> Metrics:
    """Score the artifact in a fresh process of trusted code. It starts in a new empty folder
    (never on sys.path) and answers through a pipe only this process holds, so nothing the
    training process left behind can stand in for its report. ``warm``: that process, started
    earlier, waiting for these arguments; ``then``: what to start once it has answered."""
    own = warm is None
    ev = warm if warm is not None else start_eval(env)
    job = ["--phase", "eval", "--data", str(Path(data).resolve()), "--expect-sha256", sha256,
           "--device", metrics.device, "--seq-len", str(metrics.seq_len), "--artifact",
           str(artifact), "--out", f"fd:{ev.fd}", "--split", split]
    try:
        ev.proc.hand(job, log, log.path.parent / PID_FILE)
        code, timed_out = ev.proc.wait(EVAL_TIMEOUT)
        if then is not None:
            then()
        answer = ev.answer()
    finally:
        if own:
            ev.close()
    try:
        result = EvalReport.model_validate_json(answer)
    except ValidationError:
        result = None
    if timed_out:
        metrics.status = RunStatus.timeout
        metrics.error = f"evaluation ran past {EVAL_TIMEOUT:g} s and was killed"
    elif result is None:
        metrics.error = (f"the evaluation process exited with code {code} and no valid "
                         f"report\n{log.recent()}")
    else:
        metrics = metrics.model_copy(update=result.model_dump(
            include={"status", "error", "val_loss", "val_bpb", "eval_tokens", "seq_len",
                     "params", "causal_ok", "eval_seconds", "torch_version",
                     "flops_per_token", "device_name", "test_loss", "test_bpb"}))
        # from the graph's FLOPs (the evaluator's count) and the broker's tokens and seconds
        metrics.mfu = mfu.of_training(metrics.flops_per_token, metrics.device_name,
                                      metrics.train_tokens, metrics.train_seconds)
        if result.ready_at:
            metrics.eval_start_seconds = max(0.0, result.ready_at - ev.proc.started)
    return metrics


def sandbox_state(enabled: bool) -> str:
    """What a training process started now will be fenced in by (the trusted side's view:
    the harness sets the fence up before any agent code runs, or fails)."""
    if not enabled:
        return "off"
    version = sandbox_mod.abi()
    return f"landlock v{version}" if version else "none (no Landlock on this system)"


def _finish(metrics: Metrics, out_dir: Path, started: float) -> Metrics:
    metrics.total_seconds = time.monotonic() - started
    metrics.exposed_seconds = max(0.0, metrics.total_seconds - metrics.train_seconds)
    metrics = Metrics.model_validate(metrics.model_dump())  # re-check: no metric unless ok
    metrics.write(out_dir / "metrics.json")
    return metrics
