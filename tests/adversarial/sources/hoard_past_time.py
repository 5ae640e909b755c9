"""Hoards batches while the time budget runs (drawing is cheap), then trains on them for three
times the budget after time_left() reached zero, with a learning rate that learns. Whoever
stops counting when train() returns, or at the last batch, measures a model trained 4x as
long. The broker's clock runs until the model is handed back: a timeout."""

import time

import torch
from torch import nn

LEARNING_RATE = 3e-2
BATCH_SIZE = 8
SEQ_LEN = 32
EXTRA = 3.0  # budgets of training after the budget ran out


class Bigram(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)


def train(run):
    model = Bigram(run.vocab_size).to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    kept = []
    budget = run.time_left()
    while run.time_left() > 0 and len(kept) < 2000:
        kept.append(run.get_batch(BATCH_SIZE, SEQ_LEN))
    stop = time.monotonic() + EXTRA * budget
    while time.monotonic() < stop:
        for x, y in kept:
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()
