"""The harness's command line: ``python -m autoresearch.harness --phase train|eval ...``.

The runner starts one process per phase; a whole measurement is ``autoresearch train`` (or
``runner.measure``). Each phase's module is imported only when that phase runs, so the
evaluation process never loads the training side.
"""

from __future__ import annotations

import argparse

from autoresearch.harness import SEQ_LEN
from autoresearch.metrics import SETUP_CAP


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m autoresearch.harness",
        description="One phase of a measurement, as the runner starts it; a whole measurement "
                    "is `autoresearch train`.")
    p.add_argument("--phase", choices=["train", "eval"], required=True,
                   help="train: run train(run) and export the model; eval: score the export")
    p.add_argument("--source", help="folder holding train.py")
    p.add_argument("--data", required=True, help="a prepared dataset folder")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--time-budget", type=float, help="seconds of training")
    budget.add_argument("--token-budget", type=int, help="training tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--out", help="where the evaluation writes its report (fd:N: a pipe)")
    p.add_argument("--setup-cap", type=float, default=SETUP_CAP,
                   help="seconds allowed before the first batch")
    p.add_argument("--seq-len", type=int, default=SEQ_LEN, help="evaluation context length")
    p.add_argument("--artifact", help="the exported model (written by train, read by eval)")
    p.add_argument("--report", help="where the training process writes its report")
    p.add_argument("--expect-sha256", help="the dataset's sha256, checked by eval")
    p.add_argument("--sandbox", choices=["on", "off"], default="off",
                   help="fence the training process in with Landlock (the runner says on)")
    p.add_argument("--writable", action="append", help="another folder training may write")
    args = p.parse_args(argv)
    needed = {"train": ("source", "artifact", "report"), "eval": ("artifact", "out")}[args.phase]
    missing = [f"--{n}" for n in needed if getattr(args, n) is None]
    if args.phase == "train" and args.time_budget is None and args.token_budget is None:
        missing.append("--time-budget or --token-budget")
    if missing:
        p.error("missing " + ", ".join(missing))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase == "train":
        from autoresearch.harness.train import train_phase

        return train_phase(args)
    from autoresearch.harness.evaluate import eval_phase

    return eval_phase(args)
