"""Looks ahead by a few nats under logits a thousand times larger: a causality check that allows
logits to move in proportion to their size (1e-3 x |logit|) lets a bump of 5 through at a
logit of 1e4, yet after the softmax that bump is the whole prediction. The probe compares
log-probabilities, absolutely: caught."""

import torch
from torch import nn

SCALE = 1e4
PEEK = 5.0
BATCH_SIZE = 8
SEQ_LEN = 32


class Peek(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        base = SCALE + self.table(idx)  # every logit shifted up: the softmax does not care
        ahead = torch.roll(idx, shifts=-1, dims=1)
        return base + PEEK * nn.functional.one_hot(ahead, base.shape[-1])


def train(run):
    model = Peek(run.vocab_size).to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    while run.tokens_left() >= BATCH_SIZE * SEQ_LEN and run.time_left() > 0:
        x, y = run.get_batch(BATCH_SIZE, SEQ_LEN)
        loss = nn.functional.cross_entropy(model.table(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
