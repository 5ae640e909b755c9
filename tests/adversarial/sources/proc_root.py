"""Reaches for the validation split through /proc: the fence lets a process read its own
/proc entries, and /proc/self/root is a link to the whole file system, /proc/self/cwd to its
folder. If Landlock judged a path by the way it was spelled, /proc/self/root/<cache>/val.bin
would be "beneath /proc/self". It prints what it got, "PROCROOT {json}", and trains honestly.
(The test writes the dataset's real folder into TARGET.)"""

import json
import os

import torch
from torch import nn

TARGET = "DATASET_FOLDER"


def _try(path):
    try:
        with open(path, "rb") as f:
            return f"read {len(f.read(64))} bytes"
    except OSError as e:
        return f"denied: {e.strerror}"


def train(run):
    said = {"root": _try(f"/proc/self/root{TARGET}/val.bin"),
            "thread_root": _try(f"/proc/thread-self/root{TARGET}/val.bin"),
            "pid_root": _try(f"/proc/{os.getpid()}/root{TARGET}/val.bin"),
            "direct": _try(f"{TARGET}/val.bin")}
    print("PROCROOT " + json.dumps(said), flush=True)
    model = nn.Embedding(run.vocab_size, run.vocab_size).to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    while run.tokens_left() >= 8 * 32:
        x, y = run.get_batch(8, 32)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
