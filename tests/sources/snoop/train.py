"""Looks for the validation split (or any data) wherever train() can reach and prints what it
found on one line, "SNOOP {json}". Returns no model (so the runner stops before evaluation)."""

import gc
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch


def _byte_values(obj):
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8:
        return set(np.unique(obj).tolist())
    if isinstance(obj, torch.Tensor) and obj.dtype == torch.uint8:
        return set(torch.unique(obj).tolist())
    if isinstance(obj, (bytes, bytearray)) and len(obj) > 1000:
        return set(obj)
    return set()


def train(run):
    batch_bytes = set()
    for _ in range(20):
        x, y = run.get_batch(8, 64)
        batch_bytes |= set(x.flatten().tolist()) | set(y.flatten().tolist())
    data_dir = Path(sys.argv[sys.argv.index("--data") + 1]) if "--data" in sys.argv else None
    # every byte array reachable from run, from any module, or from any gc-tracked object
    seen = set()
    objects = [*vars(run).values(), *gc.get_objects()]
    for module in list(sys.modules.values()):
        objects.extend(getattr(module, "__dict__", {}).values())
    for obj in list(objects):
        objects.extend(gc.get_referents(obj))
    for obj in objects:
        seen |= _byte_values(obj)
    found = {
        "batch_bytes": sorted(batch_bytes),
        "reachable_bytes": sorted(seen),
        "files": [] if data_dir is None else sorted(p.name for p in data_dir.iterdir()),
        "scratch": sorted(str(p.relative_to(os.getcwd())) for p in Path.cwd().rglob("*")),
        "argv": sys.argv,
        "run_attributes": sorted(vars(run)),
        "our_settings": sorted(k for k in os.environ if k.startswith("AUTORESEARCH_")),
        "home": os.environ.get("HOME"),
        "cwd": os.getcwd(),
    }
    print("SNOOP " + json.dumps(found), flush=True)
    return None
