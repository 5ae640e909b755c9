"""What a night found: ``autoresearch report`` measures a finished run's result again.

The loop's numbers are selected numbers: every kept Δ was measured on the seeds its decision
was made on (the winner's curse inflates it), and hundreds of decisions on one validation
split fit that split. The report measures, on ``K`` *fresh* seeds (never used by the run) and
on the held-out *test* split (no decision ever saw it, data.py):

- the baseline and the final champion, side by side with the keep rule's verdict on the fresh
  seeds and a confidence interval of the gain;
- the ablation: for each kept change, the final champion with that change's commit reverted
  (a three-way revert, ``git revert``; a conflicting revert is reported as such), so the gain
  each change carries *in the final combination* shows, and changes that carry nothing
  ("barnacles": kept by noise, or by an interaction that no longer holds) are named.

Every configuration is measured through the loop's own runner and workers (same sandbox, same
trusted evaluation) and stored as an experiment of kind ``report`` whose measurements have
``purpose=report``: a report that stops half-way resumes where it stopped, and rendering again
measures nothing. Sources identical in their files (the champion without its only change is
the baseline) are measured once.

The numbers go into one dict (``--json`` prints it); :mod:`autoresearch.findings_render`
writes it as markdown or HTML. The statistics are docs/report.md's.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import git

from autoresearch import decide, unfenced
from autoresearch import report as tables
from autoresearch.backends import Worker, make_workers
from autoresearch.config import Settings
from autoresearch.errors import UsageError, one_line
from autoresearch.loop.run import ActiveRun, Reporter, fingerprint, reopen
from autoresearch.models import ExperimentKind, ExperimentStatus, Purpose, RunStatus
from autoresearch.store import Experiment, Run, Store
from autoresearch.workspace import ApplyConflict, Workspace

ES = ExperimentStatus
DEFAULT_SEEDS = 3
LEVEL = 0.95  # two-sided confidence of the intervals (and of the ablation's flags)
FLAGS = ("carries", "no measurable effect", "hurts now")
_FAILED = {ES.crashed, ES.timeout, ES.invalid}


@dataclass
class Arm:
    """One configuration the report measures: the baseline, the champion, or the champion
    without one kept change."""

    key: str  # "baseline", "champion", "without-12"
    label: str
    files: dict[str, str] | None  # None: the revert conflicted
    conflict: str | None = None
    exp: Experiment | None = None  # the report experiment holding its measurements
    same_as: str | None = None  # another arm with exactly these files (measured once)
    val: dict[int, float] = field(default_factory=dict)
    test: dict[int, float] = field(default_factory=dict)
    failed: str | None = None


@dataclass
class Plan:
    run: Run
    seeds: list[int]
    arms: list[Arm]
    kept: list[Experiment]
    has_test: bool
    to_measure: int  # measurements not stored yet
    stored: int
    seconds_each: float  # a guess from the run's own measurements


# -- what to measure ----------------------------------------------------------------------------
def fresh_seeds(store: Store, run: Run, k: int) -> list[int]:
    """``k`` seeds no measurement of the run used: the next thousand above every seed it used
    (stable while the loop adds seeds below it, so a resumed report finds its own)."""
    assert run.id is not None
    used = set(run.seed_list) | {m.seed for kind, _, m in store.run_measurements(run.id)
                                 if kind is not ExperimentKind.report}
    start = 1000 * (1 + max(used, default=0) // 1000)
    return list(range(start, start + k))


def kept_changes(store: Store, run: Run) -> list[Experiment]:
    """The run's kept changes in the order they were kept (the path to the champion)."""
    assert run.id is not None
    return [e for e in store.experiments(run_id=run.id)
            if e.kind is ExperimentKind.candidate and e.status is ES.kept and e.commit]


def revert(ws: Workspace, base: str, commits: list[str], where: Path) -> dict[str, str]:
    """The editable files of ``base`` with each of ``commits`` reverted in turn, three-way
    (``git revert --no-commit`` in a throwaway worktree at ``where``); ApplyConflict when one
    does not revert cleanly."""
    repo = ws.repo
    repo.git.worktree("add", "-f", "--detach", str(where), base)
    try:
        g = git.Git(where)
        for commit in commits:
            try:
                g.execute(["git", "revert", "--no-commit", "--no-edit", commit])
            except git.GitCommandError as e:
                said = f"{e.stdout or ''}\n{e.stderr or ''}".replace("'", "\n")
                lines = [ln.strip() for ln in said.splitlines()
                         if ln.strip().startswith(("CONFLICT", "error:", "fatal:"))]
                raise ApplyConflict(f"reverting {commit[:10]} conflicts with later changes: "
                                    f"{'; '.join(lines) if lines else one_line(str(e))}"
                                    ) from e
        return {p: (where / p).read_text(encoding="utf-8") for p in ws.editable
                if (where / p).is_file()}
    finally:
        repo.git.worktree("remove", "--force", str(where))


def _report_experiments(store: Store, run_id: int) -> dict[str, Experiment]:
    """The run's report experiments by the fingerprint of the files they measured."""
    found: dict[str, Experiment] = {}
    for e in store.experiments(run_id=run_id):
        if e.kind is ExperimentKind.report:
            try:
                fp = json.loads(e.proposal).get("fingerprint")
            except ValueError:
                continue
            if fp:
                found.setdefault(fp, e)
    return found


def plan(store: Store, ws: Workspace, run: Run, k: int, has_test: bool) -> Plan:
    """The arms, the fresh seeds and what is stored already; creates nothing but the throwaway
    worktrees of the reverts."""
    assert run.id is not None
    if k < 1:
        raise UsageError("--seeds must be at least 1")
    seeds = fresh_seeds(store, run, k)
    kept = kept_changes(store, run)
    arms = [Arm("baseline", "baseline", ws.read_files(run.baseline_commit))]
    if run.champion_commit != run.baseline_commit:
        arms.append(Arm("champion", f"champion #{run.champion_experiment_id}",
                        ws.read_files(run.champion_commit)))
        scratch = ws.experiments_dir / "report-scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        for e in kept:
            assert e.id is not None and e.commit is not None
            arm = Arm(f"without-{e.id}", f"champion without #{e.id}", None)
            try:
                arm.files = revert(ws, run.champion_commit, [e.commit], scratch / str(e.id))
            except ApplyConflict as err:
                arm.conflict = str(err)
            arms.append(arm)
    stored_exps = _report_experiments(store, run.id)
    firsts: dict[str, str] = {}
    to_measure = stored = 0
    for arm in arms:
        if arm.files is None:
            continue
        fp = fingerprint(arm.files)
        if fp in firsts:
            arm.same_as = firsts[fp]
            continue
        firsts[fp] = arm.key
        arm.exp = stored_exps.get(fp)
        _read_values(store, arm, seeds)
        stored += len(arm.val)
        to_measure += len(seeds) - len(arm.val)
    for arm in arms:  # an arm identical to another reads the other's values
        if arm.same_as is not None:
            first = next(a for a in arms if a.key == arm.same_as)
            arm.exp, arm.val, arm.test = first.exp, first.val, first.test
    done = [m.total_seconds for _, _, m in store.run_measurements(run.id)
            if m.status is RunStatus.ok]
    each = statistics.median(done) if done else 60.0
    return Plan(run, seeds, arms, kept, has_test, to_measure, stored, each)


def _read_values(store: Store, arm: Arm, seeds: list[int]) -> None:
    if arm.exp is None or arm.exp.id is None:
        return
    for m in store.measurements(arm.exp.id):
        if m.seed in seeds and m.status is RunStatus.ok and m.val_bpb is not None:
            arm.val[m.seed] = m.val_bpb
            if m.test_bpb is not None:
                arm.test[m.seed] = m.test_bpb
        elif m.seed in seeds and m.status is not RunStatus.ok and m.seed not in arm.val:
            arm.failed = f"{m.status.value}: {one_line(m.error or '')}"


def announce(p: Plan) -> str:
    """'report of run 3: 12 measurements to run (3 stored), about 4 min ...'"""
    total = p.to_measure * p.seconds_each
    distinct = sum(1 for a in p.arms if a.files is not None and a.same_as is None)
    return (f"report of run {p.run.id}: {distinct} configurations x {len(p.seeds)} fresh seeds "
            f"{p.seeds}: {p.to_measure} measurement{'s' if p.to_measure != 1 else ''} to run"
            f" ({p.stored} stored already), about {tables._duration(total)} at "
            f"{p.seconds_each:.1f} s each (the run's median)"
            + ("" if p.has_test else "; no test split (the dataset was prepared before test "
               "splits): validation only"))


# -- measuring ----------------------------------------------------------------------------------
def measure(p: Plan, a: ActiveRun, worker: Worker, reporter: Reporter,
            on_done: Callable[[], None] | None = None) -> None:
    """Measure every arm's missing seeds on ``worker``: each arm is a report experiment (made
    on first use, its files committed and pinned), each measurement stored with purpose
    report as it ends, so a killed report resumes where it stopped."""
    split = "test" if p.has_test else "val"
    for arm in p.arms:
        if arm.files is None or arm.same_as is not None:
            continue
        missing = [s for s in p.seeds if s not in arm.val]
        if not missing:
            continue
        if arm.exp is None:
            arm.exp = a.store.add_experiment(
                run_id=a.id, kind=ExperimentKind.report, status=ES.measured,
                title=f"report: {arm.label}", parent_commit=a.run.champion_commit,
                proposal=json.dumps({"report": arm.key, "fingerprint": fingerprint(arm.files)}))
        exp_id = arm.exp.id
        assert exp_id is not None
        if arm.exp.commit:
            wt = a.ws.create_worktree(exp_id, arm.exp.commit, branch=None)
        else:
            done = a.ws.apply_files(exp_id, a.run.champion_commit, arm.files,
                                    message=f"report: {arm.label}")
            wt = done.wt
            arm.exp = a.store.update_experiment(exp_id, commit=done.commit, diff=done.diff)
        reporter.phase(exp_id, 0, f"report: {arm.label}", f"measuring fresh seeds {missing}")
        for seed in missing:
            values, failed = a.run_seeds(worker, exp_id, wt, [seed], Purpose.report,
                                         split=split)
            if failed is not None:
                arm.failed = f"{failed.status.value}: {one_line(failed.error or '')}"
                break
            arm.val.update(values)
            if on_done is not None:
                on_done()
        a.ws.remove_worktree(exp_id)
        _read_values(a.store, arm, p.seeds)  # the test values, as stored
        if arm.val:  # for history, show and the dashboard (the report reads the measurements)
            test = f", test {_mean(arm.test):.4f}" if arm.test else ""
            a.store.update_experiment(
                exp_id, val_bpb=_mean(arm.val), seconds=a.seconds(exp_id),
                reason=f"report: val {_mean(arm.val):.4f}{test} on fresh seeds "
                       f"{sorted(arm.val)}")
    for arm in p.arms:
        if arm.same_as is not None:
            first = next(x for x in p.arms if x.key == arm.same_as)
            arm.exp, arm.val, arm.test, arm.failed = first.exp, first.val, first.test, \
                first.failed


# -- the numbers --------------------------------------------------------------------------------
def gain(ref: dict[int, float], new: dict[int, float], seeds: list[int], noise_std: float,
         noise_df: int) -> dict[str, Any] | None:
    """How much lower ``new`` is than ``ref`` (positive: ``new`` is better), paired over the
    seeds both have, with a two-sided ``LEVEL`` interval: the keep rule's standard error (the
    paired stdev floored at sqrt(2)·noise_std) and t quantile (df = n - 1 + noise_df)."""
    paired = [s for s in seeds if s in ref and s in new]
    if not paired:
        return None
    d = [ref[s] - new[s] for s in paired]
    n = len(d)
    std = statistics.stdev(d) if n >= 2 else None
    floor = math.sqrt(2.0) * noise_std
    se = (max(std, floor) if std is not None else floor) / math.sqrt(n)
    df = (n - 1) + noise_df
    q = decide.t_quantile(0.5 + LEVEL / 2, df if df > 0 else None)
    mean = statistics.fmean(d)
    lo, hi = mean - q * se, mean + q * se
    flag = FLAGS[0] if lo > 0 else FLAGS[2] if hi < 0 else FLAGS[1]
    return {"mean": mean, "lo": lo, "hi": hi, "se": se, "df": df, "n": n, "flag": flag,
            "per_seed": dict(zip(map(str, paired), d, strict=True))}


def _mean(values: dict[int, float]) -> float | None:
    return statistics.fmean(values.values()) if values else None


def build(store: Store, ws: Workspace, p: Plan, noise: tuple[float | None, int]) -> dict[str, Any]:
    """Every number the report shows, as one dict."""
    run = p.run
    assert run.id is not None
    noise_std = noise[0] if noise[0] else decide.FALLBACK_REL_NOISE * (
        _mean(p.arms[0].val) or 1.0)
    noise_df = noise[1] if noise[0] else 0
    arms = {a.key: a for a in p.arms}
    base, champ = arms["baseline"], arms.get("champion")
    exps = store.experiments(run_id=run.id)
    base_exp = next((e for e in exps if e.kind is ExperimentKind.baseline), None)
    champ_exp = next((e for e in exps if e.id == run.champion_experiment_id), None)
    settings = json.loads(run.config or "{}")
    known, unknown, n_calls = store.run_cost(run.id)
    calls = store.calls(run_id=run.id)
    headline: dict[str, Any] = {
        "in_run": {"baseline": base_exp.val_bpb if base_exp else None,
                   "champion": champ_exp.val_bpb if champ_exp else None,
                   "seeds": run.seed_list},
        "baseline": {"val": _mean(base.val), "test": _mean(base.test)},
    }
    if champ is not None:
        headline["champion"] = {"val": _mean(champ.val), "test": _mean(champ.test)}
        headline["gain_val"] = gain(base.val, champ.val, p.seeds, noise_std, noise_df)
        headline["gain_test"] = gain(base.test, champ.test, p.seeds, noise_std, noise_df)
        if all(s in base.val and s in champ.val for s in p.seeds):
            verdict = decide.decide(champ.val, base.val, noise_std=noise_std,
                                    noise_df=noise_df, min_delta=run.min_delta, seeds=p.seeds)
            headline["verdict"] = {
                "keep": verdict.verdict == "keep", "reason": verdict.reason,
                "delta": verdict.delta, "threshold": verdict.threshold,
                "t_se": verdict.threshold - run.min_delta, "noise_std": noise_std}
        if run.champion_experiment_id is not None and champ_exp is not None and \
                champ_exp.val_bpb is not None and base_exp and base_exp.val_bpb is not None:
            headline["in_run"]["gain"] = base_exp.val_bpb - champ_exp.val_bpb
    ablation = []
    for e in p.kept:
        arm = arms[f"without-{e.id}"]
        row: dict[str, Any] = {"experiment": e.id, "title": e.title, "conflict": arm.conflict,
                               "failed": arm.failed, "same_as": arm.same_as,
                               "val": _mean(arm.val), "test": _mean(arm.test)}
        if champ is not None and arm.files is not None:
            row["carries_val"] = gain(arm.val, champ.val, p.seeds, noise_std, noise_df)
            row["carries_test"] = gain(arm.test, champ.test, p.seeds, noise_std, noise_df)
        row["flag"] = ("revert conflicts" if arm.conflict else (row.get("carries_val") or {})
                       .get("flag", "not measured"))
        ablation.append(row)
    warnings = _warnings(store, run, exps)
    failures = [f"{a.label}: {a.failed}" for a in p.arms if a.failed and a.same_as is None]
    return {
        "run": run.id,
        "question": {
            "baseline_commit": run.baseline_commit, "champion_commit": run.champion_commit,
            "champion_experiment": run.champion_experiment_id,
            "budget": f"{run.budget_amount:g} {'tokens' if run.budget_kind == 'tokens' else 's'}",
            "device": run.device, "dataset": run.dataset,
            "dataset_sha256": run.dataset_sha256, "agent": run.agent, "model": run.model,
            "run_seeds": run.seed_list, "experiments": sum(
                1 for e in exps if e.kind is ExperimentKind.candidate),
            "sandbox": "off" if settings.get("sandbox") is False else "on",
            "min_delta": run.min_delta, "noise_std": noise_std, "noise_df": noise_df,
        },
        "seeds": p.seeds,
        "test_split": p.has_test,
        "test_note": None if p.has_test else (
            "no test split: the run's dataset was prepared before test splits (a run on the "
            "dataset prepared again has one)"),
        "level": LEVEL,
        "headline": headline,
        "path": [{"experiment": e.id, "title": e.title, "rationale": e.rationale,
                  "delta": e.delta, "val_bpb": e.val_bpb} for e in p.kept],
        "ablation": ablation,
        "arms": {a.key: {"label": a.label, "experiment": a.exp.id if a.exp else None,
                         "commit": a.exp.commit if a.exp else None, "same_as": a.same_as,
                         "conflict": a.conflict, "failed": a.failed,
                         "val": {str(s): v for s, v in sorted(a.val.items())},
                         "test": {str(s): v for s, v in sorted(a.test.items())}}
                 for a in p.arms},
        "cost": {"device_time": tables.device_time(store, run), "calls": n_calls,
                 "input_tokens": sum(c.input_tokens or 0 for c in calls),
                 "output_tokens": sum(c.output_tokens or 0 for c in calls),
                 "usd": known, "calls_with_unknown_cost": unknown},
        "warnings": warnings,
        "failures": failures,
        "complete": not failures and all(
            len(a.val) == len(p.seeds) for a in p.arms if a.files is not None),
    }


def _warnings(store: Store, run: Run, exps: list[Experiment]) -> list[str]:
    """Every warning the run recorded: drift, unfenced measurements, failures, its stop."""
    assert run.id is not None
    out = []
    drifted = store.drifted(run.id)
    if drifted:
        where = ", ".join(f"#{d['experiment']} seed {d['seed']}" for d in drifted[:8])
        out.append(f"{len(drifted)} measurement{'s' if len(drifted) > 1 else ''} at a machine "
                   f"speed unlike the champion's (drift): {where}"
                   + (" …" if len(drifted) > 8 else "")
                   + (" (under a token budget the speed does not change val_bpb)"
                      if run.budget_kind == "tokens" else ""))
    n = unfenced.run_unfenced(store, run.id)
    if n:
        out.append(f"{n} measurement{'s' if n > 1 else ''} ran unfenced (no sandbox): "
                   "their results are not protected against code that reads the data")
    for e in exps:
        if e.status in _FAILED:
            out.append(f"#{e.id} {e.status.value}: {one_line(e.reason or '')}"[:200])
    if run.stop_reason:
        out.append(f"the run stopped: {run.stop_reason}")
    return out


# -- one call -----------------------------------------------------------------------------------
def _open(settings: Settings, store: Store, ws: Workspace, reporter: Reporter, run: Run
          ) -> tuple[Settings, ActiveRun]:
    """The run reopened with the settings it ran with (its sandbox, budget, setup cap) on one
    worker: a report measures as the loop did."""
    s = Settings.exactly(run.config).model_copy(update={
        "workspace": settings.workspace, "db": settings.db, "prices": settings.prices,
        "workers": 1})
    return s, reopen(s, store, ws, reporter, run)


def run_report(settings: Settings, store: Store, ws: Workspace, reporter: Reporter, run: Run,
               k: int, *, measure_now: bool = True) -> dict[str, Any]:
    """Plan, say what it will cost, measure what is missing (on one worker of the run's own
    backend and settings), and return the numbers."""
    s, a = _open(settings, store, ws, reporter, run)
    p = plan(store, ws, run, k, a.data.has_test)
    reporter.notice(announce(p))
    if measure_now and p.to_measure:
        worker = make_workers(s, run.device, ws.experiments_dir)[0]
        try:
            measure(p, a, worker, reporter)
        finally:
            worker.close()
    return build(store, ws, p, a.noise(run.champion_experiment_id or 0))


def minimal(settings: Settings, store: Store, ws: Workspace, reporter: Reporter, run: Run,
            k: int) -> dict[str, Any]:
    """The champion minus every kept change the ablation found to carry nothing measurable
    (or to hurt now), measured on the report's fresh seeds against the full champion: the
    smaller source is taken only if the keep rule would not keep the full champion over it
    (the dropped changes, together, carry no measurable gain). A change whose revert
    conflicts stays (its effect is unknown). Returns what to write:
    ``files`` (the source to take home), ``diff`` (from the baseline) and the verdict."""
    d = run_report(settings, store, ws, reporter, run, k)
    unmeasured = [a["label"] for a in d["arms"].values()
                  if a["conflict"] is None and len(a["val"]) < k]
    if d["failures"] or unmeasured:
        raise UsageError("the report is incomplete (" + "; ".join(
            d["failures"] or [f"{m}: not measured" for m in unmeasured]) +
            "): the minimal champion needs every kept change's ablation")
    drop = [r["experiment"] for r in d["ablation"] if r["flag"] in FLAGS[1:]]
    kept = {e.id: e for e in kept_changes(store, run)}
    result: dict[str, Any] = {"run": run.id, "dropped": drop, "report": d}
    if not drop:
        result |= {"files": ws.read_files(run.champion_commit), "taken": "champion",
                   "reason": "every kept change carries part of the gain: the minimal "
                             "champion is the champion", "commit": run.champion_commit}
        return _with_diff(ws, run, result)
    scratch = ws.experiments_dir / "report-scratch" / "minimal"
    commits = [kept[i].commit or "" for i in reversed(drop)]  # newest first
    try:
        files = revert(ws, run.champion_commit, commits, scratch)
    except ApplyConflict as e:
        raise UsageError(f"the changes that carry nothing do not revert together: {e}") from e
    s, a = _open(settings, store, ws, reporter, run)
    p = plan(store, ws, run, k, a.data.has_test)
    arm = Arm("minimal", "minimal champion (without " + ", ".join(f"#{i}" for i in drop) +
              ")", files)
    same = next((x for x in p.arms if x.files == files and x.same_as is None), None)
    if same is not None:  # e.g. the champion without its one idle change: measured already
        arm.exp, arm.val = same.exp, same.val
    else:
        arm.exp = _report_experiments(store, run.id or 0).get(fingerprint(files))
        _read_values(store, arm, p.seeds)
    p.arms = [arm]
    missing = len(p.seeds) - len(arm.val)
    if missing:
        reporter.notice(f"minimal champion: {missing} measurements to run, about "
                        f"{tables._duration(missing * p.seconds_each)}")
        worker = make_workers(s, run.device, ws.experiments_dir)[0]
        try:
            measure(p, a, worker, reporter)
        finally:
            worker.close()
    if arm.failed or len(arm.val) < len(p.seeds):
        raise UsageError(f"the minimal champion's measurement failed: {arm.failed}")
    champ = {int(k_): v for k_, v in d["arms"]["champion"]["val"].items()}
    q = d["question"]
    verdict = decide.decide(champ, arm.val, noise_std=q["noise_std"], noise_df=q["noise_df"],
                            min_delta=run.min_delta, seeds=p.seeds)
    result["verdict"] = verdict.reason
    result["minimal_val"] = _mean(arm.val)
    result["champion_val"] = _mean(champ)
    if verdict.verdict == "keep":  # the dropped changes together do carry a gain
        result |= {"files": ws.read_files(run.champion_commit), "taken": "champion",
                   "commit": run.champion_commit,
                   "reason": "the changes that carry nothing alone carry a gain together "
                             "(the full champion would be kept over the minimal one): "
                             "keeping the full champion"}
    else:
        assert arm.exp is not None
        result |= {"files": files, "taken": "minimal", "commit": arm.exp.commit,
                   "reason": "the full champion is no measurable improvement on the minimal "
                             "one: taking the minimal champion"}
    return _with_diff(ws, run, result)


def _with_diff(ws: Workspace, run: Run, result: dict[str, Any]) -> dict[str, Any]:
    result["diff"] = str(ws.repo.git.diff(run.baseline_commit, result["commit"])) + "\n"
    return result


