"""Views a tensor through raw strides (torch.as_strided): with the right offsets a graph can
read past its own tensors into the evaluator's memory. Refused by name before anything is
scored: the evaluator runs no operator that takes raw strides or storage."""

import torch
from torch import nn

BATCH_SIZE = 8
SEQ_LEN = 32


class Strided(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = self.table(idx)
        flat = logits.reshape(-1)
        return torch.as_strided(flat, logits.shape, logits.stride())


def train(run):
    run.get_batch(BATCH_SIZE, SEQ_LEN)
    return Strided(run.vocab_size).to(run.device).eval()
