"""Does each proposal see the result before it? One worker, pipelined or not.

Runs the same loop twice on this machine (the offline playbook agent on the shipped baseline,
a token budget, one worker): once with ``--pipeline`` (the next proposal asked for while the
current experiment trains) and once with ``--no-pipeline`` (asked for once its result is in,
the default with one worker). For each run it prints the loop's wall time and how many
proposals were made after the previous experiment had finished (read from the store: the
proposal's row is written when the agent answered; the previous experiment's last update is
its verdict), i.e. how many prompts could see the previous result.

    python benchmarks/fresh_context.py [--budget 6] [--tokens 8192]

Prints one line per mode and one figure: ``saw previous: pipelined a/b, fresh c/d``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.models import ExperimentKind
from autoresearch.store import FINAL, Store
from autoresearch.workspace import init_workspace


def saw_previous(db: Path) -> tuple[int, int]:
    """(proposals made after the experiment before them had its verdict, proposals after the
    first)."""
    store = Store(db)
    try:
        (run,) = store.runs()
        exps = [e for e in store.experiments(run_id=run.id, kind=ExperimentKind.candidate)
                if e.status in FINAL]
    finally:
        store.close()
    pairs = list(itertools.pairwise(exps))
    return sum(nxt.created_at >= prev.updated_at for prev, nxt in pairs), len(pairs)


def one(pipeline: bool, budget: int, tokens: int, cache: Path) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        init_workspace(ws)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
        env["AUTORESEARCH_CACHE"] = str(cache)
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "autoresearch", "--workspace", str(ws), "loop",
             "--agent", "playbook", "--budget", str(budget), "--token-budget", str(tokens),
             "--seeds", "1", "--device", "cpu", "--workers", "1",
             "--pipeline" if pipeline else "--no-pipeline"],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        seen, pairs = saw_previous(ws / "results.db")
        return wall, seen, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=8192)
    args = ap.parse_args()
    cache = Path(tempfile.gettempdir()) / "autoresearch-bench-cache"
    got = {}
    for pipeline in (True, False):
        wall, seen, pairs = one(pipeline, args.budget, args.tokens, cache)
        name = "pipelined" if pipeline else "fresh"
        got[name] = (seen, pairs)
        print(f"{name:>9}: loop {wall:.1f} s wall, {seen}/{pairs} proposals saw the result "
              "before them")
    print(f"saw previous: pipelined {got['pipelined'][0]}/{got['pipelined'][1]}, "
          f"fresh {got['fresh'][0]}/{got['fresh'][1]}")


if __name__ == "__main__":
    main()
