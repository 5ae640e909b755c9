"""A model whose forward branches on tensor values: torch.export cannot capture it."""

import torch


class Branchy(torch.nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.sum() > 10:  # data-dependent Python control flow
            return self.emb(idx)
        return -self.emb(idx)


def train(run):
    run.get_batch(2, 8)
    return Branchy(run.vocab_size)
