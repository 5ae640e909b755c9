"""Spends longer than the setup cap before drawing its first batch."""

import time

import torch

SLEEP = 0.6  # seconds; tests give a 0.2 s setup cap


def train(run):
    model = torch.nn.Embedding(run.vocab_size, run.vocab_size)
    time.sleep(SLEEP)
    run.get_batch(2, 8)
    return model
