"""train() raises after one batch."""


def train(run):
    run.get_batch(2, 8)
    raise ValueError("boom from train")
