"""A bigram model: the smallest real train(run) for fast loop tests."""

import torch
from torch import nn

LEARNING_RATE = 1e-5  # far too small on purpose: a candidate that raises it is a real gain
BATCH_SIZE = 8
SEQ_LEN = 32


class Bigram(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)


def train(run):
    model = Bigram(run.vocab_size).to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    step = 0
    while run.tokens_left() >= BATCH_SIZE * SEQ_LEN and run.time_left() > 0:
        x, y = run.get_batch(BATCH_SIZE, SEQ_LEN)
        loss = nn.functional.cross_entropy(model(x).view(-1, run.vocab_size), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 5 == 0:
            run.log(step=step, loss=loss.item(), lr=LEARNING_RATE)
        step += 1
    return model.eval()
