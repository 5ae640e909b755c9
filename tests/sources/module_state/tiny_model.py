"""A tiny causal byte model for fast tests: one attention layer, trained for a few steps."""

import torch
import torch.nn.functional as F
from torch import nn

BATCH = 8  # windows per step
WIDTH = 32  # embedding width
LR = 1e-2  # AdamW learning rate


class Tiny(nn.Module):
    def __init__(self, vocab: int, max_len: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, WIDTH)
        self.pos = nn.Embedding(max_len, WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.norm = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(
            nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH)
        )
        self.head = nn.Linear(WIDTH, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        q, k, v = self.qkv(x).split(WIDTH, dim=-1)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        x = x + self.mlp(self.norm(x))
        return self.head(x)


def train(run):
    model = Tiny(run.vocab_size, run.seq_len).to(run.device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    step = 0
    while run.tokens_left() >= BATCH * run.seq_len and run.time_left() > 0:
        x, y = run.get_batch(BATCH, run.seq_len)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0:
            run.log(step=step, loss=loss.item())
        step += 1
    return model
