"""Looks ahead in the first row of a batch only. A probe that keeps row 0 of its batches
unchanged (to see whether rows read each other) never tests row 0 for a look-ahead, and on a
CPU that row is one window in eight. The probe moves every window to another row index and
tests every row: caught."""

import torch
from torch import nn

BATCH_SIZE = 8
SEQ_LEN = 32


class FirstRowPeek(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = self.table(idx)
        ahead = torch.roll(idx, shifts=-1, dims=1)
        first = (torch.arange(idx.shape[0], device=idx.device) == 0).float()[:, None, None]
        return logits + first * 20.0 * nn.functional.one_hot(ahead, logits.shape[-1])


def train(run):
    model = FirstRowPeek(run.vocab_size).to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    while run.tokens_left() >= BATCH_SIZE * SEQ_LEN and run.time_left() > 0:
        x, y = run.get_batch(BATCH_SIZE, SEQ_LEN)
        loss = nn.functional.cross_entropy(model.table(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
