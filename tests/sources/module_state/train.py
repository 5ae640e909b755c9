"""Sets a global in torch's module and in its own; fails if a previous job's value is there."""

import sys

import tiny_model
import torch

if getattr(torch, "_left_by_a_previous_job", False) or "train_seen" in sys.modules:
    raise RuntimeError("module state of a previous job survived")
torch._left_by_a_previous_job = True
sys.modules["train_seen"] = sys.modules[__name__]


def train(run):
    return tiny_model.train(run)
