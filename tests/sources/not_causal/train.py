"""Cheats: the logits at position t are built from the token at t+1 (the answer)."""

import torch


class PeekNext(torch.nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        nxt = torch.roll(idx, shifts=-1, dims=1)
        return torch.nn.functional.one_hot(nxt, self.vocab).float() * 20.0


def train(run):
    run.get_batch(2, 8)
    return PeekNext(run.vocab_size)
