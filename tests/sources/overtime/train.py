"""Keeps going well past its time budget after the first batch."""

import time

import torch

SLEEP = 0.6  # seconds; tests give a 0.1 s budget and no fixed grace


def train(run):
    run.get_batch(2, 8)
    time.sleep(SLEEP)
    return torch.nn.Embedding(run.vocab_size, run.vocab_size)
