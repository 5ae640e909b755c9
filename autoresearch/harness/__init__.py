"""The harness: what runs inside a measurement's two processes.

1. training (``--phase train``, :mod:`autoresearch.harness.train`): seeds everything, fences
   itself in, says ``hello`` to the runner's broker over its channel
   (:mod:`autoresearch.harness.channel`), imports the source's train.py and calls
   ``train(run)``, where ``run`` is a thin client that asks the broker for every batch; then it
   exports the returned model (:mod:`autoresearch.harness.export`) as a graph of aten
   operators plus its tensors and hands the bytes back. It holds nothing trusted: the broker
   (:mod:`autoresearch.runner.broker`) counts the tokens and keeps the clock;
2. evaluation (``--phase eval``, :mod:`autoresearch.harness.evaluate`): a fresh process that
   never imports agent code, nor the training side. It checks the graph
   (:mod:`autoresearch.harness.graph`: allow-listed operators, every tensor), runs it, checks
   causality, and computes the loss over fixed validation windows itself.

``autoresearch.runner.measure`` runs both around the broker and writes metrics.json;
``autoresearch train`` is the one way to run a whole measurement. This module holds what both
processes share: the fixed evaluation plan, the failure classes, seeding, and ``main``.
"""

from __future__ import annotations

import random
import traceback
from pathlib import Path

import numpy as np
import torch

from autoresearch.errors import one_line
from autoresearch.models import RunStatus

SEQ_LEN = 256  # evaluation context length, the same for every experiment
ARTIFACT_FORMAT = "autoresearch-graph/1"  # the exported model, from training to evaluation
# device kind -> (windows per evaluation batch, validation tokens evaluated); fixed so that
# every experiment on that kind of device is scored on exactly the same windows
EVAL_PLAN = {"cpu": (8, 65_536), "mps": (16, 262_144), "cuda": (32, 1_048_576)}
_HERE = Path(__file__).resolve().parent


class HarnessFailure(Exception):
    """A measurement failed; ``status`` says how, the message says why in one line."""

    status = RunStatus.crash


class BudgetExhausted(HarnessFailure):
    """``run.get_batch`` refused: the token budget cannot cover the batch, or time is up."""

    status = RunStatus.overtime


class NonFiniteLoss(HarnessFailure):
    status = RunStatus.nan


class InvalidModel(HarnessFailure):
    status = RunStatus.invalid_model


class NotCausal(HarnessFailure):
    status = RunStatus.not_causal


def eval_plan(device: str) -> tuple[int, int]:
    """(batch size, validation tokens) evaluated on this kind of device."""
    return EVAL_PLAN.get(device.split(":")[0], EVAL_PLAN["cpu"])



def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)



def describe(e: BaseException) -> str:
    """A one-line reason, then the tail of the traceback (for non-harness failures)."""
    reason = str(e) if isinstance(e, HarnessFailure) else f"{type(e).__name__}: {one_line(e)}"
    if isinstance(e, HarnessFailure) and e.__cause__ is None and e.__traceback__ is not None \
            and all(Path(f.filename).resolve().parent == _HERE
                    for f in traceback.extract_tb(e.__traceback__)):
        return reason  # raised by the harness itself: the reason says it all
    tail = "".join(traceback.format_exception(e)).strip().splitlines()[-12:]
    return reason + "\n" + "\n".join(tail)



def main(argv: list[str] | None = None) -> int:
    """The command line (:mod:`autoresearch.harness.command`); imports only the phase it runs."""
    from autoresearch.harness.command import main as run_command

    return run_command(argv)
