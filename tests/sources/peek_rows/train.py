"""Cheats across the batch: each row's logits use the tokens of the next row."""

import torch


class PeekRows(torch.nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(idx) + self.emb(torch.roll(idx, shifts=-1, dims=0))


def train(run):
    run.get_batch(2, 8)
    return PeekRows(run.vocab_size)
