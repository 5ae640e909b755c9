"""Honest on the shapes it trains with; when it is called with a long window (the evaluation's
context length) it adds a copy of the *next* token's embedding: a look-ahead that only exists
at evaluation time. The causality probe runs on what is evaluated, so it must still catch it."""

import torch
from torch import nn

LEARNING_RATE = 1e-5
BATCH_SIZE = 8
SEQ_LEN = 32


class ShapePeek(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = self.table(idx)
        if idx.shape[1] > SEQ_LEN:  # not a training batch: this is the evaluation
            ahead = torch.roll(idx, shifts=-1, dims=1)
            logits = logits + 20.0 * nn.functional.one_hot(ahead, logits.shape[-1])
        return logits


def train(run):
    model = ShapePeek(run.vocab_size).to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    while run.tokens_left() >= BATCH_SIZE * SEQ_LEN and run.time_left() > 0:
        x, y = run.get_batch(BATCH_SIZE, SEQ_LEN)
        loss = nn.functional.cross_entropy(model(x).view(-1, run.vocab_size), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
