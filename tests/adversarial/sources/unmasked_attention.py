"""Self-attention without the causal mask: every position sees the whole window, the target
included, so the training loss falls fast. The harness's causality probe must refuse it."""

import torch
from torch import nn

LEARNING_RATE = 3e-2
BATCH_SIZE = 8
SEQ_LEN = 32
N_EMBD = 32


class Unmasked(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_size, N_EMBD)
        self.qkv = nn.Linear(N_EMBD, 3 * N_EMBD)
        self.head = nn.Linear(N_EMBD, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb(idx)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / N_EMBD**0.5, dim=-1)  # no mask: sees ahead
        return self.head(h + att @ v)


def train(run):
    model = Unmasked(run.vocab_size).to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    while run.tokens_left() >= BATCH_SIZE * SEQ_LEN and run.time_left() > 0:
        x, y = run.get_batch(BATCH_SIZE, SEQ_LEN)
        loss = nn.functional.cross_entropy(model(x).view(-1, run.vocab_size), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
