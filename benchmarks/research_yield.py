"""Research yield: how much a loop improves the baseline, measured on fresh seeds, per device-hour.

Runs the real loop (``autoresearch loop --agent playbook``) in a fresh workspace, then measures
the final champion and the baseline side by side on fresh seeds the loop never used
(interleaved: baseline seed s, champion seed s, ...), and prints the baseline and champion
val_bpb (mean ± sd), the drop in %, the device time the loop spent, the fresh-seed gain per
device-hour, the kept changes with their deltas, and whether the gain reproduces beyond the
noise on the fresh seeds (the loop's own keep rule, applied to them).

``--rule naive`` also runs the same agent with the rule of the public reference loop — one run
per idea on one seed, kept whenever it is lower than the champion's value at all — for the
same device time (as many measurements as the first loop spent, baseline included), then
measures the baseline and both champions on the same fresh seeds, interleaved, and prints both
gains per device-hour. The naive rule is patched into this process only: the product has no
such rule.

    python benchmarks/research_yield.py --data ../shared/data/tinyshakespeare.txt
    python benchmarks/research_yield.py --rule naive --experiments 10 --time-budget 20
    python benchmarks/research_yield.py --data offline --experiments 4 --time-budget 10  # smoke

Target (issue 9): >= 10% lower val_bpb than the baseline after 20 experiments at 60 s on a
2-core CPU, reproduced on the fresh seeds. The full default run takes about 40-60 minutes on
a quiet machine, and about 100 when other jobs load the cores. Target (issue 20): the loop's
fresh-seed gain per device-hour above the naive rule's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from keep_rules import naive_decide  # benchmarks/, this script's folder
from rich.console import Console

from autoresearch import data, decide, report, runner
from autoresearch.agents.playbook import PlaybookAgent
from autoresearch.backends import Worker
from autoresearch.config import Settings
from autoresearch.loop import start
from autoresearch.loop import trial as trial_mod
from autoresearch.loop.run import ActiveRun, Candidate, Outcome
from autoresearch.metrics import Budget
from autoresearch.models import ExperimentStatus, Purpose
from autoresearch.progress import PlainReporter
from autoresearch.store import Run, Store
from autoresearch.workspace import Workspace, init_workspace


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="shakespeare",
                    help="a dataset name (shakespeare, offline) or a text file / folder")
    ap.add_argument("--experiments", type=int, default=20)
    ap.add_argument("--time-budget", type=float, default=60.0, help="seconds per measurement")
    ap.add_argument("--token-budget", type=int, default=None,
                    help="training tokens per measurement instead (results independent of the "
                    "machine's load; device time still counted in seconds)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the loop's keep rule")
    ap.add_argument("--fresh-seeds", type=int, default=3, help="seeds 100.. for the final check")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--agent", default="playbook")
    ap.add_argument("--rule", choices=("ours", "naive"), default="ours",
                    help="naive: also run the reference loop's rule for the same device time")
    ap.add_argument("--workspace", type=Path, default=None,
                    help="keep the workspaces here (default: a temporary folder)")
    args = ap.parse_args()
    if args.rule == "naive" and args.agent != "playbook":
        ap.error("--rule naive runs the offline playbook agent")
    if args.workspace is not None:
        return run(args, args.workspace)
    with tempfile.TemporaryDirectory(prefix="research-yield-") as tmp:
        return run(args, Path(tmp))


def say(line: str) -> None:
    print(f"research_yield: {line}", flush=True)


def our_loop(args: argparse.Namespace, ws: Path) -> bool:
    init_workspace(ws)
    cmd = [sys.executable, "-m", "autoresearch", "--workspace", str(ws), "loop",
           "--agent", args.agent, "--budget", str(args.experiments),
           *(["--token-budget", str(args.token_budget)] if args.token_budget else
             ["--time-budget", str(args.time_budget)]), "--seeds", str(args.seeds),
           "--device", args.device, "--dataset", args.data]
    say(" ".join(cmd[1:]))
    return subprocess.run(cmd).returncode == 0


def naive_measure(a: ActiveRun, worker: Worker, cand: Candidate, *, screen: bool) -> Outcome:
    """The reference loop's plan: one run on the first seed, kept if lower at all."""
    del screen
    seed = a.seeds[0]
    values, failed = a.run_seeds(worker, cand.exp_id, cand.wt, [seed], Purpose.screen)
    champion = a.values(cand.parent_id)
    if failed is not None:
        return Outcome(values, champion, None, failed)
    a.store.transition(cand.exp_id, ExperimentStatus.measured, val_bpb=values[seed])
    return Outcome(values, champion, naive_decide(values, champion, seeds=a.seeds))


def naive_loop(args: argparse.Namespace, ws: Path, experiments: int) -> bool:
    """The same agent, one seed, the naive rule, ``experiments`` candidates, in this process."""
    init_workspace(ws)
    say(f"naive loop: {experiments} experiments, one seed each, kept if lower at all")
    settings = Settings.exactly(dict(workspace=ws, agent="playbook", seeds=1,
                                     device=args.device, dataset=args.data,
                                     **budget_setting(args)))
    store = Store(settings.db_path)
    plan = trial_mod.measure
    trial_mod.measure = naive_measure
    try:
        reporter = PlainReporter(Console(stderr=True), Console(stderr=True))
        loop = start(settings, store, Workspace(ws), PlaybookAgent(), reporter, experiments)
        loop.execute()
        return True
    finally:
        trial_mod.measure = plan
        store.close()


def budget_setting(args: argparse.Namespace) -> dict[str, float | int]:
    if args.token_budget:
        return {"token_budget": args.token_budget}
    return {"time_budget": args.time_budget}


def finished(ws: Path) -> tuple[Run, list[tuple[int, str, float | None]], float]:
    """The loop's run, its kept changes (id, title, delta) and its device-seconds."""
    store = Store(ws / "results.db")
    try:
        r = store.runs()[-1]
        assert r.id is not None
        kept = [(e.id or 0, e.title, e.delta) for e in store.experiments(run_id=r.id)
                if e.kind == "candidate" and e.status == ExperimentStatus.kept]
        return r, kept, report.device_time(store, r)["seconds"]
    finally:
        store.close()


def export_champion(ws: Path, r: Run) -> Path | None:
    champion = ws / "champion"
    champion.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "autoresearch", "--workspace", str(ws),
                           "export", "best", "--run", str(r.id), "--out",
                           str(champion / "train.py")], capture_output=True, text=True)
    if done.returncode != 0:
        say(f"export failed: {done.stderr.strip()}")
        return None
    return champion


def run(args: argparse.Namespace, root: Path) -> int:
    prepared = data.prepare(args.data)
    loops = {"ours": root / "ours"}
    if not our_loop(args, loops["ours"]):
        say("the loop failed")
        return 1
    ours, _, ours_seconds = finished(loops["ours"])
    if args.rule == "naive":
        store = Store(loops["ours"] / "results.db")
        try:
            spent = sum(v["measurements"] for v in
                        report.device_time(store, ours)["by_purpose"].values())
        finally:
            store.close()
        loops["naive"] = root / "naive"
        naive_loop(args, loops["naive"], max(spent - 1, 1))

    sources = {"baseline": loops["ours"] / "baseline"}
    for name, ws in loops.items():
        r, _, _ = finished(ws)
        champ = export_champion(ws, r)
        if champ is None:
            return 1
        sources[name] = champ

    budget = (Budget(kind="tokens", amount=args.token_budget) if args.token_budget
              else Budget(kind="time", amount=args.time_budget))
    fresh = [100 + i for i in range(args.fresh_seeds)]
    values: dict[str, dict[int, float]] = {name: {} for name in sources}
    for seed in fresh:
        for name, src in sources.items():
            m = runner.measure(runner.Job(source=src, data=prepared.path, budget=budget,
                                          seed=seed, device=args.device,
                                          out_dir=root / "fresh" / name / str(seed)))
            if not m.ok or m.val_bpb is None:
                say(f"{name} seed {seed}: {m.status.value}: {m.error}")
                return 1
            values[name][seed] = m.val_bpb
            say(f"fresh seed {seed} {name}: val_bpb {m.val_bpb:.4f} ({m.steps} steps)")

    def stats(v: dict[int, float]) -> tuple[float, float]:
        xs = list(v.values())
        return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0

    bm, bs = stats(values["baseline"])
    say(f"{prepared.name}, {budget.describe()} per measurement, agent {args.agent}")
    say(f"baseline val_bpb {bm:.4f} ± {bs:.4f} on fresh seeds {fresh}")
    for name, ws in loops.items():
        r, kept, seconds = finished(ws)
        cm, cs = stats(values[name])
        hours = seconds / 3600
        with_store = Store(ws / "results.db")
        n = len([e for e in with_store.experiments(run_id=r.id) if e.kind == "candidate"])
        with_store.close()
        rule = "naive rule (1 seed, keep if lower)" if name == "naive" else (
            f"our rule ({args.seeds} seeds)")
        say(f"{name}: {rule}, {n} experiments, {seconds:.0f} device-seconds "
            f"({seconds / ours_seconds:.2f}x ours)")
        say(f"{name}: champion val_bpb {cm:.4f} ± {cs:.4f}; drop {100 * (bm - cm) / bm:.1f}% "
            f"({bm - cm:+.4f} bpb); fresh-seed gain {(bm - cm) / hours:+.4f} bpb per "
            f"device-hour")
        # the noise of these fresh measurements themselves (both configurations' spreads)
        noise, df = decide.pool_noise(list(values["baseline"].values()),
                                      [list(values[name].values())])
        verdict = decide.decide(values[name], values["baseline"], noise_std=noise,
                                noise_df=df, min_delta=0.0, seeds=fresh)
        with_store = Store(ws / "results.db")
        count = sum(v["measurements"] for v in
                    report.device_time(with_store, r)["by_purpose"].values())
        with_store.close()
        say(f"{name}: {count} measurements; fresh-seed gain {100 * (bm - cm) / count:+.4f} bpb "
            "per 100 measurements (device-seconds vary with the machine's load; the count "
            "does not)")
        say(f"{name}: {len(kept)} changes kept: " + "; ".join(
            f"#{i} {t} ({d:+.4f})" if d is not None else f"#{i} {t}" for i, t, d in kept))
        holds = "reproduces" if verdict.verdict == "keep" else "does NOT reproduce"
        say(f"{name}: the gain {holds} beyond the noise on the fresh seeds ({verdict.reason})")
    if "naive" in loops:
        nm, _ = stats(values["naive"])
        om, _ = stats(values["ours"])
        _, _, naive_seconds = finished(loops["naive"])
        ours_rate = (bm - om) / (ours_seconds / 3600)
        naive_rate = (bm - nm) / (naive_seconds / 3600)
        say(f"gain per device-hour: ours {ours_rate:+.4f}, naive {naive_rate:+.4f} bpb "
            f"(device-seconds: ours {ours_seconds:.0f}, naive {naive_seconds:.0f}) "
            f"(ours/naive {ours_rate / naive_rate:.2f})" if naive_rate else
            f"gain per device-hour: ours {ours_rate:+.4f}, naive {naive_rate:+.4f} bpb")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
