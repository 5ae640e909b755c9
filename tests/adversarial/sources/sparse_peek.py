"""Looks ahead at one position in eight only (where t % 8 == 7): a probe with a handful of cut
points misses it often; the gain is still an eighth of a look-ahead's. With 128 probed rows a
measurement misses it with probability (7/8)^128 < 1e-7: caught."""

import torch
from torch import nn

BATCH_SIZE = 8
SEQ_LEN = 32
EVERY = 8


class SparsePeek(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = self.table(idx)
        ahead = torch.roll(idx, shifts=-1, dims=1)
        where = (torch.arange(idx.shape[1], device=idx.device) % EVERY == EVERY - 1).float()
        return logits + where[None, :, None] * 20.0 * nn.functional.one_hot(
            ahead, logits.shape[-1])


def train(run):
    model = SparsePeek(run.vocab_size).to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    while run.tokens_left() >= BATCH_SIZE * SEQ_LEN and run.time_left() > 0:
        x, y = run.get_batch(BATCH_SIZE, SEQ_LEN)
        loss = nn.functional.cross_entropy(model.table(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
