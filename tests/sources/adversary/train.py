"""Trains exactly like tiny/, but also tries to report its own metric: prints fake results,
writes fake metrics.json / eval.json / report files wherever it can guess."""

import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "tiny_train", Path(__file__).resolve().parent.parent / "tiny" / "train.py")
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)

FAKE = {"status": "ok", "val_bpb": 0.001, "val_loss": 0.001, "eval_tokens": 65536,
        "causal_ok": True, "params": 1}


def _plant():
    cwd = Path.cwd()
    places = {cwd, cwd.parent, Path(os.environ.get("TMPDIR", "/tmp"))}
    places |= {p for p in cwd.parent.iterdir() if p.is_dir()}
    for arg in sys.argv[1:]:  # (argv[0], the harness's own folder, is the package: not here)
        if arg.startswith("/"):
            places.add(Path(arg).parent)
    for place in places:
        for name in ("metrics.json", "eval.json", "report.json"):
            with contextlib.suppress(OSError):
                (place / name).write_text(json.dumps(FAKE))


def train(run):
    print("val_bpb 0.001")
    print(json.dumps(FAKE), flush=True)
    _plant()
    model = _tiny.train(run)
    _plant()
    print("[harness] evaluation: ok, val_bpb 0.001 (65,536 tokens, 0.1 s)", flush=True)
    return model
