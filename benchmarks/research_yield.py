"""Research yield: how much the offline playbook agent improves the baseline in N experiments.

Runs the real loop (``autoresearch loop --agent playbook``) in a fresh workspace, then measures
the final champion and the baseline side by side on fresh seeds the loop never used
(interleaved: baseline seed s, champion seed s, ...), and prints the baseline and champion
val_bpb (mean ± sd), the drop in %, the kept changes with their deltas, and whether the gain
reproduces beyond the noise on the fresh seeds (the loop's own keep rule, applied to them).

    python benchmarks/research_yield.py --data ../shared/data/tinyshakespeare.txt
    python benchmarks/research_yield.py --data offline --experiments 4 --time-budget 10  # smoke

Target (issue 9): >= 10% lower val_bpb than the baseline after 20 experiments at 60 s on a
2-core CPU, reproduced on the fresh seeds. The full default run takes about 40-60 minutes on
a quiet machine, and about 100 when other jobs load the cores (each measurement then takes
2-3 minutes of wall clock for its 60 s of training).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from autoresearch import data, decide, runner
from autoresearch.metrics import Budget
from autoresearch.models import ExperimentStatus
from autoresearch.store import Store
from autoresearch.workspace import init_workspace


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="shakespeare",
                    help="a dataset name (shakespeare, offline) or a text file / folder")
    ap.add_argument("--experiments", type=int, default=20)
    ap.add_argument("--time-budget", type=float, default=60.0, help="seconds per measurement")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the loop's keep rule")
    ap.add_argument("--fresh-seeds", type=int, default=3, help="seeds 100.. for the final check")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--agent", default="playbook")
    ap.add_argument("--workspace", type=Path, default=None,
                    help="keep the workspace here (default: a temporary folder)")
    args = ap.parse_args()

    if args.workspace is not None:
        return run(args, args.workspace)
    with tempfile.TemporaryDirectory(prefix="research-yield-") as tmp:
        return run(args, Path(tmp) / "ws")


def run(args: argparse.Namespace, ws: Path) -> int:
    init_workspace(ws)
    prepared = data.prepare(args.data)
    cmd = [sys.executable, "-m", "autoresearch", "--workspace", str(ws), "loop",
           "--agent", args.agent, "--budget", str(args.experiments),
           "--time-budget", str(args.time_budget), "--seeds", str(args.seeds),
           "--device", args.device, "--dataset", args.data]
    print("research_yield: " + " ".join(cmd[1:]), flush=True)
    if subprocess.run(cmd).returncode != 0:
        print("research_yield: the loop failed")
        return 1

    store = Store(ws / "results.db")
    try:
        loop_run = store.runs()[-1]
        assert loop_run.id is not None
        exps = store.experiments(run_id=loop_run.id)
        kept = [e for e in exps if e.kind == "candidate" and e.status == ExperimentStatus.kept]
        noise = loop_run.noise_std
    finally:
        store.close()
    champion = ws / "champion"
    champion.mkdir(exist_ok=True)
    export = subprocess.run([sys.executable, "-m", "autoresearch", "--workspace", str(ws),
                             "export", "best", "--run", str(loop_run.id), "--out",
                             str(champion / "train.py")], capture_output=True, text=True)
    if export.returncode != 0:
        print(f"research_yield: export failed: {export.stderr.strip()}")
        return 1

    budget = Budget(kind="time", amount=args.time_budget)
    fresh = [100 + i for i in range(args.fresh_seeds)]
    values: dict[str, dict[int, float]] = {"baseline": {}, "champion": {}}
    for seed in fresh:
        for name, src in (("baseline", ws / "baseline"), ("champion", champion)):
            m = runner.measure(runner.Job(source=src, data=prepared.path, budget=budget,
                                          seed=seed, device=args.device,
                                          out_dir=ws / "fresh" / name / str(seed)))
            if not m.ok or m.val_bpb is None:
                print(f"research_yield: {name} seed {seed}: {m.status.value}: {m.error}")
                return 1
            values[name][seed] = m.val_bpb
            print(f"research_yield: fresh seed {seed} {name}: val_bpb {m.val_bpb:.4f} "
                  f"({m.steps} steps)", flush=True)

    def stats(v: dict[int, float]) -> tuple[float, float]:
        xs = list(v.values())
        return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0

    (bm, bs), (cm, cs) = stats(values["baseline"]), stats(values["champion"])
    drop = 100.0 * (bm - cm) / bm
    verdict = decide.decide(values["champion"], values["baseline"], noise_std=noise,
                            min_delta=0.0, seeds=fresh)
    print(f"research_yield: {prepared.name}, {args.experiments} experiments, "
          f"{budget.describe()} each, loop seeds {args.seeds}, agent {args.agent}")
    print(f"research_yield: baseline val_bpb {bm:.4f} ± {bs:.4f} on fresh seeds {fresh}")
    print(f"research_yield: champion val_bpb {cm:.4f} ± {cs:.4f}")
    print(f"research_yield: drop {drop:.1f}% ({bm - cm:+.4f} bpb)")
    print(f"research_yield: {len(kept)} changes kept:")
    for e in kept:
        print(f"research_yield:   #{e.id} {e.title}: delta {e.delta:+.4f}")
    beyond = verdict.verdict == "keep"
    print(f"research_yield: the gain {'reproduces' if beyond else 'does NOT reproduce'} beyond "
          f"the noise on the fresh seeds ({verdict.reason})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
