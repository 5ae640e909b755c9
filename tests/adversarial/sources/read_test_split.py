"""Reaches for the held-out test split, measured with ``train --split test`` (the one kind of
measurement whose evaluation opens it): the file by its real folder, through /proc/self/root,
by a search of its home, and any mention of the split in its own command line or environment
(the training process is handed the same job whatever the evaluation will score). It prints
what it got, "TESTSPLIT {json}", and trains honestly. (The test writes the dataset's real
folder into TARGET.)"""

import glob
import json
import os
import sys

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
    said = {"direct": _try(f"{TARGET}/test.bin"),
            "proc_root": _try(f"/proc/self/root{TARGET}/test.bin"),
            "found_in_home": glob.glob(os.path.expanduser("~/**/test.bin"), recursive=True),
            "told": [a for a in sys.argv if a in ("--split", "test") or "test.bin" in a]
                    + [k for k, v in os.environ.items() if "SPLIT" in k.upper()
                       or "test.bin" in v]}
    print("TESTSPLIT " + json.dumps(said), flush=True)
    model = nn.Embedding(run.vocab_size, run.vocab_size).to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    while run.tokens_left() >= 8 * 32:
        x, y = run.get_batch(8, 32)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
