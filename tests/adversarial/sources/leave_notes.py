"""Leaves a note for the next measurement everywhere it can write (its home, its temporary
folder, the compiler caches its environment names, /dev/shm, its working folder), reads back
notes an earlier measurement left, and looks at other processes (/proc/1, its parent's command
line and environment, the list of pids). It prints what it found, "NOTES {json}", and trains
honestly: the test reads the log. Nothing may be found."""

import json
import os
from pathlib import Path

import torch
from torch import nn

NOTE = "autoresearch-note.txt"


def _places():
    names = ["HOME", "TMPDIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "XDG_CACHE_HOME"]
    folders = [os.environ.get(n) for n in names] + ["/dev/shm", "/tmp", os.getcwd()]
    return [Path(f) for f in folders if f]


def _read(path):
    try:
        return Path(path).read_bytes()[:200].decode("utf-8", "replace")
    except OSError as e:
        return f"denied: {e.strerror}"


def train(run):
    found, wrote = [], []
    for folder in _places():
        note = folder / NOTE
        if note.exists():
            found.append(str(note))
        try:
            note.write_text("trained weights could go here")
            wrote.append(str(folder))
        except OSError:
            pass
    try:
        pids = len([p for p in os.listdir("/proc") if p.isdigit()])
    except OSError as e:
        pids = f"denied: {e.strerror}"
    snoop = {"found": found, "wrote": wrote, "pids": pids,
             "init_cmdline": _read("/proc/1/cmdline"),
             "parent_environ": _read(f"/proc/{os.getppid()}/environ"),
             "parent_cmdline": _read(f"/proc/{os.getppid()}/cmdline"),
             "own_status": _read("/proc/self/status")[:4]}
    print("NOTES " + json.dumps(snoop), flush=True)
    model = nn.Embedding(run.vocab_size, run.vocab_size).to(run.device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    while run.tokens_left() >= 8 * 32 and run.time_left() > 0:
        x, y = run.get_batch(8, 32)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
