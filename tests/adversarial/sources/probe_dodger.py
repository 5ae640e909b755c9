"""Looks ahead, and tries to dodge the causality probe with state: the probe calls the model a
second time on the same windows with their ends changed, so this model remembers its first
answer in a buffer and gives it again on the next call. The harness must evaluate a stateless
graph: refuse the buffer writes at export, or start every call from the artifact's tensors."""

import torch
from torch import nn


class ProbeDodger(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("memory", torch.zeros(1, 1, vocab_size))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        ahead = torch.roll(idx, shifts=-1, dims=1)
        logits = self.table(idx) + 20.0 * nn.functional.one_hot(ahead, self.table.num_embeddings)
        out = torch.where(self.calls % 2 == 1, self.memory, logits)  # odd calls: the probe
        self.memory = logits.detach()
        self.calls.add_(1)
        return out


def train(run):
    run.get_batch(1, 8)
    return ProbeDodger(run.vocab_size).to(run.device)
