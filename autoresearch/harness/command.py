"""The harness's command line: ``python -m autoresearch.harness --phase train|eval ...``.

The runner starts one process per phase; a whole measurement is ``autoresearch train`` (or
``runner.measure``). Each phase's module is imported only when that phase runs, so the
evaluation process never loads the training side.

A warm start (``--phase P --wait-for-job PID``, see ``runner.Slot``) imports torch and the
phase's own trusted modules, then waits for its one job: a single line on stdin holding the
arguments of the phase, exactly the command line a cold process would get. It exits by itself,
without running anything, when none comes within ``--wait-seconds``, when stdin closes, or when
the runner (PID) dies. Nothing it has imported before the job is agent code. A fork server
(``--phase P --fork-server PID``, :mod:`autoresearch.harness.forkserver`) imports the same
once and forks such a warm process for every job.
"""

from __future__ import annotations

import argparse
import os
import time

from autoresearch.harness import SEQ_LEN
from autoresearch.harness.warm import await_job, die_with

WAIT_SECONDS = 1800.0  # a warm process never handed a job exits after this long
_PR_SET_PDEATHSIG = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m autoresearch.harness",
        description="One phase of a measurement, as the runner starts it; a whole measurement "
                    "is `autoresearch train`.")
    p.add_argument("--phase", choices=["train", "eval"], required=True,
                   help="train: run train(run) and export the model; eval: score the export")
    p.add_argument("--source", help="folder holding train.py")
    p.add_argument("--channel", help="fd:N, the training process's channel to the runner")
    p.add_argument("--data", help="a prepared dataset folder (evaluation)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--time-budget", type=float, help="seconds of training")
    budget.add_argument("--token-budget", type=int, help="training tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--out", help="where the evaluation writes its report (fd:N: a pipe)")
    p.add_argument("--seq-len", type=int, default=SEQ_LEN, help="evaluation context length")
    p.add_argument("--artifact", help="the exported model (evaluation)")
    p.add_argument("--expect-sha256", help="the dataset's sha256, checked by eval")
    p.add_argument("--split", choices=["val", "test"], default="val",
                   help="eval: test also scores the held-out test split (report measurements)")
    p.add_argument("--sandbox", choices=["on", "off"], default="off",
                   help="fence the training process in with Landlock (the runner says on)")
    warm = p.add_mutually_exclusive_group()
    warm.add_argument("--wait-for-job", type=int, metavar="PID",
                      help="start warm: import, then wait for the job's arguments on stdin; "
                           "exit if process PID (the runner) dies")
    warm.add_argument("--fork-server", type=int, metavar="PID",
                      help="import, then fork a warm process per request of the runner (PID) "
                           "on stdin, a Unix socket")
    p.add_argument("--wait-seconds", type=float, default=WAIT_SECONDS,
                   help="a warm process exits after this long without a job")
    args = p.parse_args(argv)
    if args.wait_for_job is not None or args.fork_server is not None:
        return args
    needed = {"train": ("source", "channel"), "eval": ("artifact", "out", "data")}[args.phase]
    missing = [f"--{n}" for n in needed if getattr(args, n) is None]
    if args.phase == "train" and args.time_budget is None and args.token_budget is None:
        missing.append("--time-budget or --token-budget")
    if missing:
        p.error("missing " + ", ".join(missing))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    phase, wait = args.phase, args.wait_seconds
    if args.fork_server is not None:
        if not die_with(args.fork_server):
            return 0  # the runner is already gone
        _prewarm(phase)
        from autoresearch.harness.forkserver import serve

        return serve(args.fork_server, wait, lambda: run_warm(phase, os.getppid(), wait))
    if args.wait_for_job is not None:
        if not die_with(args.wait_for_job):
            return 0
        _prewarm(phase)
        return run_warm(phase, args.wait_for_job, wait)
    args.ready_at = time.monotonic()
    return run_phase(args)


def run_warm(phase: str, parent: int, wait: float) -> int:
    """A warm process's life after its imports: wait for the job, run it."""
    ready = time.monotonic()
    job = await_job(parent, wait)
    if job is None:
        return 0  # never handed work: nothing ran, nothing to report
    args = parse_args(job)
    if args.phase != phase or args.wait_for_job is not None or args.fork_server is not None:
        raise SystemExit(f"a warm {phase} process was handed a {args.phase} job")
    args.ready_at = ready  # when imports were done: the breakdown's start-up time
    return run_phase(args)


def run_phase(args: argparse.Namespace) -> int:
    if args.phase == "train":
        from autoresearch.harness.train import train_phase

        return train_phase(args)
    from autoresearch.harness.evaluate import eval_phase

    return eval_phase(args)


def _prewarm(phase: str) -> None:
    """Import (and run once on dummy tensors) what a phase would otherwise load lazily on the
    device's time: torch's optimizers and torch._dynamo (the first optimizer step imports it),
    torch.export (one export of a small trusted model). Trusted code only, before any job
    exists; seeds are set after the job arrives, so nothing here changes a result."""
    import torch

    if phase == "train":
        import torch._dynamo
        import torch.export

        import autoresearch.harness.train
        from autoresearch.harness.export import prewarm

        weight = torch.nn.Parameter(torch.zeros(4))
        weight.grad = torch.ones(4)
        torch.optim.AdamW([weight]).step()
        prewarm()  # the first torch.export's one-time cost
    else:
        import autoresearch.data
        import autoresearch.harness.evaluate  # noqa: F401


