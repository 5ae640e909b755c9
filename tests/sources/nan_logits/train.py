"""A model whose logits are NaN."""

import torch


class Broken(torch.nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(idx) * float("nan")


def train(run):
    run.get_batch(2, 8)
    return Broken(run.vocab_size)
