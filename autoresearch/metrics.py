"""The metrics.json contract between the trusted harness and the orchestrator.

The harness writes it; the runner reads it through ``Metrics.model_validate_json``. Nothing
else is ever parsed from a training job: stdout is for humans only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from autoresearch.models import RunStatus

SETUP_CAP = 60.0  # default seconds from importing train.py to the first batch


class Budget(BaseModel):
    """A training budget: wall-clock seconds, or tokens served by ``run.get_batch``."""

    kind: Literal["time", "tokens"]
    amount: float = Field(gt=0)

    def describe(self) -> str:
        if self.kind == "time":
            return f"{self.amount:g} s wall-clock"
        return f"{int(self.amount):,} training tokens"

    def cli_args(self) -> list[str]:
        if self.kind == "time":
            return ["--time-budget", f"{self.amount:g}"]
        return ["--token-budget", str(int(self.amount))]


class Metrics(BaseModel):
    status: RunStatus
    val_bpb: float | None = None
    val_loss: float | None = None
    eval_tokens: int = 0
    train_tokens: int = 0  # the broker's count of tokens served (autoresearch/runner/broker.py)
    steps: int = 0  # the broker's count of batches served
    train_seconds: float = 0.0  # the broker's clock: first batch -> model handed back
    total_seconds: float = 0.0
    params: int = 0
    peak_memory_mb: float = 0.0
    device: str = ""
    torch_version: str = ""
    seed: int = 0
    dataset: str = ""
    dataset_sha256: str = ""
    error: str | None = None
    causal_ok: bool | None = None  # the causality probe passed (None: not evaluated)
    setup_seconds: float = 0.0  # the broker's: the training process's hello -> first batch
    export_seconds: float = 0.0  # torch.export, as the training process reports it (display)
    eval_seconds: float = 0.0  # the trusted evaluation process, start to end
    # where the wall time went besides (setup, train, export, eval)_seconds: the breakdown
    start_seconds: float = 0.0  # training process start and imports (overlapped when warm)
    eval_start_seconds: float = 0.0  # evaluation process start and imports (same)
    exposed_seconds: float = 0.0  # wall time the slot waited for this measurement - training
    warm: bool = False  # its processes were started before the job (runner.Slot)
    seq_len: int = 0  # evaluation context length
    sandbox: str = ""  # the training process's OS sandbox: "landlock vN", "none (why)" or "off"
    # GFLOP/s of autoresearch.speed's reference workload in the training process, just before
    # the agent's code was imported and just after train() returned (bookkeeping, never a metric)
    speed_before: float | None = None
    speed_after: float | None = None
    # where it ran: "w0" (local worker 0), "w1 gpu 3", "ray 10.0.0.7"; the torch threads its
    # processes were given (None: torch's own default); jobs running at once when it started
    worker: str = ""
    threads: int | None = None
    concurrency: int = 1
    # model FLOPs utilisation on a GPU (autoresearch/mfu.py): the forward FLOPs per token that
    # the evaluation process counted on the exported graph, the GPU's name, and MFU against its
    # dense peak; None on a CPU, and MFU None for a GPU whose peak is not known
    flops_per_token: float | None = None
    device_name: str | None = None
    mfu: float | None = None
    # the held-out test split (data.py), scored only for a report measurement (Job.split
    # "test": ``autoresearch report``, ``train --split test``); None on every measurement a
    # decision is made on
    test_bpb: float | None = None
    test_loss: float | None = None

    @model_validator(mode="after")
    def _no_metric_unless_ok(self) -> Metrics:
        # a failed measurement never carries a number that could be mistaken for a result
        if self.status != RunStatus.ok:
            self.val_bpb = None
            self.val_loss = None
            self.test_bpb = None
            self.test_loss = None
        return self

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.ok and self.val_bpb is not None

    @classmethod
    def read(cls, path: Path) -> Metrics:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        tmp.replace(path)


class EvalReport(BaseModel):
    """What the trusted evaluation process measured from the exported model."""

    status: RunStatus = RunStatus.crash
    error: str | None = None
    val_loss: float | None = None
    val_bpb: float | None = None
    eval_tokens: int = 0
    seq_len: int = 0
    params: int = 0
    causal_ok: bool | None = None
    eval_seconds: float = 0.0
    torch_version: str = ""
    ready_at: float = 0.0  # time.monotonic() when imports were done
    # forward FLOPs per token of the exported graph on one evaluation batch (autoresearch/mfu.py)
    # and the device it ran on (torch.cuda.get_device_name(); None on a CPU)
    flops_per_token: float | None = None
    device_name: str | None = None
    # the test split, scored only when the runner asks (--split test: report measurements)
    test_loss: float | None = None
    test_bpb: float | None = None
