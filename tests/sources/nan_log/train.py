"""Logs a NaN loss and swallows the harness's exception: the run must still end as nan."""

import torch


def train(run):
    run.get_batch(2, 8)
    try:
        run.log(step=0, loss=float("nan"))
    except Exception:
        print("swallowed the harness's complaint")
    return torch.nn.Embedding(run.vocab_size, run.vocab_size)
