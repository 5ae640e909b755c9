"""Trains honestly until its time budget is spent, then keeps improving for a few more seconds
on the batches it already has (no new get_batch, so no refusal): train() returns late. The
harness must see it on the clock and not count the run."""

import time

import torch
from torch import nn

LEARNING_RATE = 1e-5
EXTRA_LEARNING_RATE = 3e-2
BATCH_SIZE = 8
SEQ_LEN = 32
EXTRA_SECONDS = 4.5  # the budget in the suite is 1 s with 2.1 s of grace


def train(run):
    model = nn.Embedding(run.vocab_size, run.vocab_size).to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    kept = []
    while run.time_left() > 0:
        x, y = run.get_batch(BATCH_SIZE, SEQ_LEN)
        kept.append((x, y))
        loss = nn.functional.cross_entropy(model(x).view(-1, run.vocab_size), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # the budget is spent; the data we already hold is free to reuse, isn't it?
    opt = torch.optim.Adam(model.parameters(), lr=EXTRA_LEARNING_RATE)
    stop = time.monotonic() + EXTRA_SECONDS
    while time.monotonic() < stop:
        for x, y in kept:
            loss = nn.functional.cross_entropy(model(x).view(-1, run.vocab_size), y.view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()
