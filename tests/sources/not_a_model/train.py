"""train() returns something that is not a torch.nn.Module."""


def train(run):
    run.get_batch(2, 8)
    return {"weights": [1, 2, 3]}
