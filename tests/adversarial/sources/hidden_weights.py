"""Keeps its learned table as a plain tensor attribute (neither parameter nor buffer): the export
stores it as a constant. A weight is a weight: the evaluator checks and counts every stored
tensor, so the model's parameter count includes it (256 x 256)."""

import torch
from torch import nn

BATCH_SIZE = 8
SEQ_LEN = 32


class Hidden(nn.Module):
    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table  # not registered: export treats it as a constant

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]


def train(run):
    emb = nn.Embedding(run.vocab_size, run.vocab_size).to(run.device)
    opt = torch.optim.Adam(emb.parameters(), lr=3e-2)
    while run.tokens_left() >= BATCH_SIZE * SEQ_LEN and run.time_left() > 0:
        x, y = run.get_batch(BATCH_SIZE, SEQ_LEN)
        loss = nn.functional.cross_entropy(emb(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return Hidden(emb.weight.detach().clone()).eval()
