"""Talks to the broker itself: it finds its channel to the runner (the descriptor named on the
command line or held by run) and writes a second hello, hoping to restart the clock, and a
batch request that claims a smaller size than it then reads. The broker validates every
message: a second hello is a broken protocol, and the job ends as a crash."""

import json
import struct

import torch
from torch import nn


class Bigram(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)


def _frame(header):
    data = json.dumps(header).encode()
    return struct.pack("!II", len(data), 0) + data


def train(run):
    model = Bigram(run.vocab_size).to(run.device)
    run.get_batch(8, 32)
    channel = run._channel  # the guard refuses `run._x`; `autoresearch train` has no guard
    channel.sendall(_frame({"op": "hello", "tokens": 0, "t0": 0}))
    x, y = run.get_batch(8, 32)  # the broker has hung up by now
    loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss.backward()
    return model.eval()
