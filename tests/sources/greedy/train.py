"""Ignores tokens_left() and keeps drawing batches past its token budget."""


def train(run):
    while True:
        run.get_batch(4, 16)
