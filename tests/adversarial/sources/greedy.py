"""More data is always better: never looks at tokens_left() and keeps asking for batches.
Under a token budget the harness must refuse the batch that does not fit, and the run cannot
count."""

import torch
from torch import nn

LEARNING_RATE = 1e-5
BATCH_SIZE = 8
SEQ_LEN = 32


def train(run):
    model = nn.Embedding(run.vocab_size, run.vocab_size).to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    while True:  # no budget check at all
        x, y = run.get_batch(BATCH_SIZE, SEQ_LEN)
        loss = nn.functional.cross_entropy(model(x).view(-1, run.vocab_size), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
