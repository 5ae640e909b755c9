"""Reading results back: tables, one experiment in full, logs, export.

Everything here reads the store and the workspace; nothing here writes a result.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from autoresearch import curves, unfenced
from autoresearch.errors import UsageError
from autoresearch.explain import compare
from autoresearch.metrics import Metrics
from autoresearch.models import ExperimentKind, MeasurementRole, Purpose
from autoresearch.store import Experiment, Judged, Measurement, Run, Store, read_decision
from autoresearch.workspace import Workspace


def _f(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def _cost(known: float, unknown: int) -> str:
    if unknown and not known:
        return "?"
    return f"${known:.4f}" + ("+?" if unknown else "")


def metrics_text(m: Metrics) -> str:
    if not m.ok:
        return f"status {m.status.value}: {m.error or 'no reason given'}"
    test = f"test_bpb {m.test_bpb:.4f}  " if m.test_bpb is not None else ""
    return (f"val_bpb {m.val_bpb:.4f}  val_loss {m.val_loss:.4f}  {test}steps {m.steps}  "
            f"train_tokens {m.train_tokens:,}  "
            f"tokens/s {m.train_tokens / max(m.train_seconds, 1e-9):,.0f}  "
            f"train {m.train_seconds:.1f}s  total {m.total_seconds:.1f}s  params {m.params:,}  "
            f"peak {m.peak_memory_mb:.0f} MB  device {m.device}  data {m.dataset}  "
            f"sandbox {m.sandbox}{mfu_text(m.mfu, m.device, m.device_name)}")


def mfu_text(mfu: float | None, device: str, device_name: str | None) -> str:
    """'  MFU 41.3% (NVIDIA H100 80GB HBM3)' for a line about a measurement on a GPU; on a GPU
    whose peak is not known, says so; on a CPU, nothing (no peak there would be honest)."""
    if not device.startswith("cuda"):
        return ""
    if mfu is not None:
        return f"  MFU {mfu:.1%}" + (f" ({device_name})" if device_name else "")
    if device_name:
        return f"  MFU n/a (no peak FLOP/s known for {device_name})"
    return "  MFU n/a"


def mfu_fields(metrics_json: str) -> dict[str, Any]:
    """A stored measurement's MFU, forward FLOPs per token, device and GPU name."""
    try:
        stored = json.loads(metrics_json or "{}")
    except ValueError:
        stored = {}
    return {k: stored.get(k) for k in ("mfu", "flops_per_token", "device", "device_name")}


def experiment_dict(store: Store, e: Experiment, full: bool = False) -> dict[str, Any]:
    assert e.id is not None
    known, unknown = store.costs([e.id]).get(e.id, (0.0, 0))
    d: dict[str, Any] = {
        "id": e.id, "run": e.run_id, "kind": e.kind, "seq": e.seq, "title": e.title,
        "status": e.status.value, "val_bpb": e.val_bpb, "champion_bpb": e.champion_bpb,
        "delta": e.delta, "seconds": round(e.seconds, 2), "cost_usd": known,
        "calls_with_unknown_cost": unknown, "reason": e.reason, "commit": e.commit,
        "replay_of": e.replay_of, "measurements_count": store.measurement_count(e.id),
        "unfenced": e.id in unfenced.unfenced_experiments(store, [e.id]),  # no sandbox
    }
    c = compare(e)  # the candidate beside the champion on the same seeds, in words
    d |= {"paired_seeds": c.seeds, "value_on_seeds": c.value, "champion_on_seeds": c.champion,
          "needed": c.needed, "stage": c.stage, "explanation": c.words}
    if full:
        d["rationale"] = e.rationale
        d["parent_commit"] = e.parent_commit
        record = read_decision(e)
        d["decision"] = None if record is None else record.model_dump(mode="json")
        d["measurements"] = [
            {"seed": m.seed, "status": m.status, "val_bpb": m.val_bpb, "val_loss": m.val_loss,
             "steps": m.steps, "train_tokens": m.train_tokens, "train_seconds": m.train_seconds,
             "total_seconds": m.total_seconds, "params": m.params, "error": m.error,
             "role": m.role, "purpose": m.purpose, "speed_gflops": m.speed,
             "speed_ratio": m.speed_ratio,
             "drift": m.drift, "worker": m.worker, "threads": m.threads,
             "concurrency": m.concurrency, "breakdown": breakdown(m.metrics),
             "sandbox": _sandbox(m.metrics), **mfu_fields(m.metrics)}
            for m in store.measurements(e.id)
        ]
        d["agent_calls"] = [
            {"attempt": c.attempt, "provider": c.provider, "model": c.model,
             "input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
             "latency_s": c.latency_s, "cost_usd": c.cost_usd, "error": c.error,
             "reasoning_tokens": c.reasoning_tokens, "notes": c.notes}
            for c in store.calls(experiment_id=e.id)
        ]
        d["guidance"] = guidance_dicts(store, e.run_id, active_at=e.created_at)
        d["diff"] = e.diff
    return d


BREAKDOWN = ("start_seconds", "setup_seconds", "train_seconds", "export_seconds",
             "eval_start_seconds", "eval_seconds", "exposed_seconds", "warm")


def breakdown(metrics_json: str) -> dict[str, Any]:
    """Where a measurement's wall time went (runner.measure), from its stored Metrics: process
    start and imports, setup before the first batch, training, export, evaluation start-up,
    evaluation, and the wall time minus training that the slot waited (exposed)."""
    try:
        stored = json.loads(metrics_json or "{}")
    except ValueError:
        stored = {}
    return {k: stored.get(k) for k in BREAKDOWN}


def _sandbox(metrics_json: str) -> str:
    """The sandbox a measurement's training ran in, from its stored Metrics."""
    try:
        return str(json.loads(metrics_json or "{}").get("sandbox") or "")
    except (ValueError, AttributeError):
        return ""


def history_table(store: Store, rows: list[Experiment]) -> Table:
    costs = store.costs([e.id for e in rows if e.id is not None])
    bare = unfenced.unfenced_experiments(store, [e.id for e in rows if e.id is not None])
    t = Table(show_edge=False, header_style="bold")
    for col in ("id", "run", "title", "status", "val_bpb", "champion", "seeds", "Δ", "why",
                "seconds", "cost"):
        t.add_column(col, justify="left" if col in ("title", "status", "seeds", "why")
                     else "right")
    for e in rows:
        assert e.id is not None
        known, unknown = costs.get(e.id, (0.0, 0))
        c = compare(e)  # both values on the same seeds
        value = _f(c.value if c.seeds else e.val_bpb)
        champ = "" if e.kind == "baseline" else _f(c.champion)
        delta = "" if e.kind == "baseline" else _f(c.delta if c.seeds else e.delta, "+.4f")
        seeds = ",".join(map(str, c.seeds))
        title = e.title if len(e.title) <= 48 else e.title[:47] + "…"
        why = (e.reason or c.short) if c.stage == "failed" else c.short
        why = why if len(why) <= 48 else why[:47] + "…"
        status = e.status.value + (" (unfenced)" if e.id in bare else "")
        t.add_row(str(e.id), str(e.run_id), title, status, value, champ, seeds, delta,
                  why, f"{e.seconds:.0f}", _cost(known, unknown))
    if not rows:
        t.add_row("", "", "(no experiments)", "", "", "", "", "", "", "", "")
    return t


PURPOSE_ORDER = [p.value for p in Purpose]


def _purpose(kind: ExperimentKind, m: Measurement, first_seed: int) -> str:
    """Why a measurement ran; for rows from before it was recorded, inferred from its role."""
    if m.purpose is not None:
        return m.purpose.value
    if kind is ExperimentKind.baseline:
        return (Purpose.filler if m.role is MeasurementRole.filler else Purpose.baseline).value
    if kind is ExperimentKind.replay:
        return Purpose.replay.value
    if m.role in (MeasurementRole.champion, MeasurementRole.stale_champion):
        return Purpose.champion.value
    return (Purpose.screen if m.seed == first_seed else Purpose.confirmation).value


def device_time(store: Store, r: Run) -> dict[str, Any]:
    """Device time by purpose (measurements and seconds, setup and evaluation included) and
    the measurements spent per candidate experiment."""
    assert r.id is not None
    first = r.seed_list[0] if r.seed_list else 0
    by: dict[str, dict[str, float]] = {}
    per_candidate = 0
    measured: set[int] = set()
    for kind, exp_id, m in store.run_measurements(r.id):
        p = _purpose(kind, m, first)
        slot = by.setdefault(p, {"measurements": 0, "seconds": 0.0})
        slot["measurements"] += 1
        slot["seconds"] += m.total_seconds
        if kind is ExperimentKind.candidate:
            per_candidate += 1
            measured.add(exp_id)
    candidates = len(measured)
    order = {p: i for i, p in enumerate(PURPOSE_ORDER)}
    return {
        "by_purpose": {p: {"measurements": int(v["measurements"]),
                           "seconds": round(v["seconds"], 1)}
                       for p, v in sorted(by.items(), key=lambda kv: order.get(kv[0], 99))},
        "seconds": round(sum(v["seconds"] for v in by.values()), 1),
        "measured_candidates": candidates,
        "measurements_per_candidate": (round(per_candidate / candidates, 2) if candidates
                                       else None),
    }


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.0f}s"


def device_time_text(store: Store, r: Run) -> str:
    """'run 3: 1h02m of device time, 2.1 measurements per candidate: screen 20m (10), ...'"""
    d = device_time(store, r)
    parts = [f"{p} {_duration(v['seconds'])} ({v['measurements']})"
             for p, v in d["by_purpose"].items()]
    per = d["measurements_per_candidate"]
    return (f"run {r.id}: {_duration(d['seconds'])} of device time"
            + (f", {per:.2f} measurements per candidate" if per is not None else "")
            + (": " + ", ".join(parts) if parts else ""))


def run_dict(store: Store, r: Run) -> dict[str, Any]:
    assert r.id is not None
    exps = store.experiments(run_id=r.id)
    counts: dict[str, int] = {}
    for e in exps:
        if e.kind == "candidate":
            counts[e.status.value] = counts.get(e.status.value, 0) + 1
    champ = next((e for e in exps if e.id == r.champion_experiment_id), None)
    base = next((e for e in exps if e.kind == "baseline" and e.val_bpb is not None), None)
    known, unknown, n_calls = store.run_cost(r.id)
    return {
        "id": r.id, "tag": r.tag, "state": r.state.value, "created_at": r.created_at.isoformat(),
        "agent": r.agent, "model": r.model, "device": r.device, "dataset": r.dataset,
        "dataset_sha256": r.dataset_sha256, "budget": f"{r.budget_amount:g} {r.budget_kind}",
        "seeds": r.seed_list, "planned": r.experiments_planned, "statuses": counts,
        "baseline_bpb": base.val_bpb if base else None, "noise_std": r.noise_std,
        "champion_bpb": champ.val_bpb if champ else None,
        "champion_experiment": r.champion_experiment_id, "champion_commit": r.champion_commit,
        "cost_usd": known, "calls": n_calls, "calls_with_unknown_cost": unknown,
        "stop_reason": r.stop_reason, "drifted_measurements": store.drifted(r.id),
        "workers": store.workers(r.id),
        "unfenced_measurements": unfenced.run_unfenced(store, r.id),
        "device_time": device_time(store, r),
        "guidance": guidance_dicts(store, r.id, everything=True),
        "notes": notes.notes if (notes := store.latest_notes(r.id)) is not None else None,
    }


def runs_table(store: Store, rows: list[Run]) -> Table:
    t = Table(show_edge=False, header_style="bold")
    for col in ("run", "tag", "state", "agent", "budget", "done", "kept", "baseline",
                "champion", "meas/cand", "cost", "workers", "drift"):
        t.add_column(col)
    for r in rows:
        d = run_dict(store, r)
        done = sum(d["statuses"].values()) - d["statuses"].get("interrupted", 0)
        agent = r.agent if r.agent == "mock" else f"{r.agent} {r.model}"
        state = d["state"] + (" (unfenced)" if d["unfenced_measurements"] else "")
        t.add_row(str(r.id), r.tag or "", state, agent,
                  d["budget"], f"{done}/{r.experiments_planned}",
                  str(d["statuses"].get("kept", 0)), _f(d["baseline_bpb"]),
                  _f(d["champion_bpb"]), _f(d["device_time"]["measurements_per_candidate"], ".2f"),
                  _cost(d["cost_usd"], d["calls_with_unknown_cost"]),
                  _workers(d["workers"]), _drift(d["drifted_measurements"]))
    if not rows:
        t.add_row("", "", "(no runs)", "", "", "", "", "", "", "", "", "", "")
    return t


def _workers(names: list[str]) -> str:
    """'w0, w1' for the runs table: where its measurements ran."""
    if not names:
        return ""
    return ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")


def _where(m: dict[str, Any]) -> str:
    """'  on w1 (1 thread, 2 jobs at once)' for a measurement line."""
    if not m["worker"]:
        return ""
    bits = []
    if m["threads"]:
        bits.append(f"{m['threads']} thread{'s' if m['threads'] > 1 else ''}")
    if m["concurrency"] > 1:
        bits.append(f"{m['concurrency']} jobs at once")
    return f"  on {m['worker']}" + (f" ({', '.join(bits)})" if bits else "")


ROLE_LABEL = {"candidate": "", "champion": " champion", "stale": " on older champion",
              "stale-champion": " older champion", "filler": " filler (not a value)"}


def _drift(drifted: list[dict[str, int]]) -> str:
    """'#4 s0, #5 s1' for the runs table: measurements whose machine speed drifted."""
    if not drifted:
        return ""
    where = [f"#{d['experiment']} s{d['seed']}" for d in drifted[:3]]
    return ", ".join(where) + (f" +{len(drifted) - 3}" if len(drifted) > 3 else "")


def experiment_text(store: Store, e: Experiment) -> str:
    d = experiment_dict(store, e, full=True)
    lines = [f"experiment {e.id} (run {e.run_id}, {e.kind} #{e.seq}): {e.title}",
             f"status   {e.status.value}", f"reason   {e.reason}"]
    if e.replay_of:
        lines.append(f"replay of experiment {e.replay_of}")
    if e.rationale:
        lines.append(f"why      {e.rationale}")
    lines.append(f"commit   {e.commit or '-'} (parent {e.parent_commit[:12] or '-'})")
    c = compare(e)
    if c.seeds and e.kind != "baseline":
        where = ("seed " if len(c.seeds) == 1 else "seeds ") + ", ".join(map(str, c.seeds))
        lines.append(f"val_bpb  {_f(c.value)} vs champion {_f(c.champion)} on {where}   "
                     f"Δ {_f(c.delta, '+.4f')}")
    else:
        lines.append(f"val_bpb  {_f(e.val_bpb)}")
    lines.append(f"verdict  {c.words}")
    bare = [m for m in d["measurements"] if unfenced.is_unfenced(m["sandbox"])]
    if bare:
        lines.append(f"sandbox  {unfenced.note(len(bare))}")
    champ_by_seed = champion_by_seed(e)
    for m in d["measurements"]:
        extra = f"  {m['error'].splitlines()[0][:160]}" if m["error"] else ""
        versus = (f" (champion {champ_by_seed[m['seed']]:.4f})"
                  if m["seed"] in champ_by_seed and m["role"] == "candidate" else "")
        who = ROLE_LABEL.get(m["role"], f" {m['role']}")
        why = f" [{m['purpose']}]" if m["purpose"] else ""
        lines.append(f"  seed {m['seed']}{who}{why}: {m['status']:<13} val_bpb {_f(m['val_bpb'])}"
                     f"{versus}  steps {m['steps']}  tokens {m['train_tokens']:,}  "
                     f"{m['total_seconds']:.1f}s{_speed(m)}"
                     f"{mfu_text(m['mfu'], m['device'] or '', m['device_name'])}"
                     f"{_where(m)}{_fence(m)}{extra}")
        if m["drift"]:
            lines.append(f"    ! machine speed: {m['drift']}")
    dec = d["decision"]
    for old in (dec or {}).get("stale") or []:
        delta = f"Δ {old['delta']:+.4f}" if old.get("delta") is not None else "Δ -"
        lines.append(f"on older champion #{old['champion']}: {delta}: {old.get('reason', '')}")
    if dec and e.kind != "baseline" and "evidence" in dec:
        lines.append(f"evidence ({dec.get('verdict') or 'reproduction'}):")
        for k, v in (dec.get("evidence") or {}).items():
            lines.append(f"  {k}: {_short(v)}")
    calls = d["agent_calls"]
    if calls:
        known, unknown = d["cost_usd"], d["calls_with_unknown_cost"]
        tokens_in = sum(c["input_tokens"] or 0 for c in calls)
        tokens_out = sum(c["output_tokens"] or 0 for c in calls)
        lines.append(f"agent    {len(calls)} call(s), {tokens_in:,} in / {tokens_out:,} out "
                     f"tokens, cost {_cost(known, unknown)}")
        thinking = sum(c["reasoning_tokens"] or 0 for c in calls)
        if thinking:
            lines.append(f"         of which {thinking:,} thinking/reasoning tokens")
        for c in calls:
            if c["error"]:
                lines.append(f"  attempt {c['attempt']}: {c['error'].splitlines()[0][:160]}")
        written = [c["notes"] for c in calls if c["notes"]]
        if written:
            lines.append("notes    (the agent's NOTES with this proposal)")
            lines.extend(f"  {ln}" for ln in written[-1].splitlines())
    if d["guidance"]:
        lines.append("guidance (active when it was proposed)")
        lines.extend(f"  #{g['id']} {g['created_at'][:19]}Z {g['text']}" for g in d["guidance"])
    return "\n".join(lines)


def champion_by_seed(e: Experiment) -> dict[int, float]:
    """seed -> the champion's value on that seed, from a candidate's decision evidence."""
    record = read_decision(e)
    if not isinstance(record, Judged):
        return {}
    try:
        ev = record.evidence
        return {int(s): float(v) for s, v in zip(ev["seeds"], ev["champion"], strict=True)}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def _fence(m: dict[str, Any]) -> str:
    """'  UNFENCED (sandbox off)' for a measurement line that ran without the sandbox."""
    return f"  UNFENCED (sandbox {m['sandbox']})" if unfenced.is_unfenced(m["sandbox"]) else ""


def _speed(m: dict[str, Any]) -> str:
    """'  speed 31.2 GFLOP/s (1.02x champion)' for a measurement line."""
    if m["speed_gflops"] is None:
        return ""
    rel = f" ({m['speed_ratio']:.2f}x champion)" if m["speed_ratio"] is not None else ""
    return f"  speed {m['speed_gflops']:.3g} GFLOP/s{rel}"


def _short(v: Any) -> str:
    """Evidence values for people: floats to 4 decimals, lists of them too."""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.4f}"
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)


def logs(workspace: Path, e: Experiment) -> dict[str, str]:
    d = workspace / "experiments" / str(e.id)
    return {str(p.relative_to(d)): p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(d.glob("seed-*/run.log"))}


def experiment_curves(workspace: Path, e: Experiment) -> dict[int, list[curves.Point]]:
    """seed -> training curve of an experiment (display data, see autoresearch/curves.py)."""
    return curves.experiment_curves(workspace / "experiments" / str(e.id))


def curves_dict(workspace: Path, e: Experiment) -> dict[str, Any]:
    """For --json: per seed, how many points, and the loss curve in a few dozen points."""
    return {str(seed): {"points": len(pts), "loss": curves.compact_loss(pts, 32)}
            for seed, pts in experiment_curves(workspace, e).items()}


def curves_text(workspace: Path, e: Experiment) -> str:
    """``show``'s curve summary: per seed, each logged scalar first -> last, min, sparkline."""
    found = experiment_curves(workspace, e)
    if not found:
        return "curves   none recorded (train() did not call run.log with numbers)"
    lines = ["curves   (as train() logged them; display only, not the metric)"]
    for seed, points in found.items():
        head, *rest = curves.summary(points).splitlines()
        lines.append(f"  seed {seed}: {head}")
        lines.extend(f"  {line}" for line in rest)
    return "\n".join(lines)


def run_summary(store: Store, r: Run) -> str:
    d = run_dict(store, r)
    return (f"run {r.id} {d['state']}: {sum(d['statuses'].values())} experiments "
            f"({', '.join(f'{v} {k}' for k, v in sorted(d['statuses'].items())) or 'none'}); "
            f"baseline {_f(d['baseline_bpb'])} -> champion {_f(d['champion_bpb'])} "
            f"(experiment {d['champion_experiment']}); agent cost "
            f"{_cost(d['cost_usd'], d['calls_with_unknown_cost'])}")


def replay_text(result: dict[str, Any]) -> str:
    lines = [f"replay of experiment {result['original']} as experiment {result['replay']} "
             f"onto {result['onto']}",
             f"{'seed':>6}  {'original':>10}  {'replay':>10}"]
    orig, rep = result["original_values"], result["replay_values"]
    for seed in sorted({*map(int, orig), *map(int, rep)}):
        lines.append(f"{seed:>6}  {_f(orig.get(str(seed)) or orig.get(seed)):>10}  "
                     f"{_f(rep.get(str(seed)) or rep.get(seed)):>10}")
    lines.append(result["verdict"])
    return "\n".join(lines)


def latest_run(store: Store, run_id: int | None) -> Run:
    """Run ``run_id``, or the newest run; a one-line error when there is none."""
    runs = store.runs()
    if run_id is not None:
        runs = [r for r in runs if r.id == run_id]
        if not runs:
            raise UsageError(f"no run {run_id}")
    if not runs:
        raise UsageError("no runs yet")
    return runs[-1]


def export(store: Store, ws: Workspace, what: str, run_id: int | None) -> str:
    if what == "best":
        files = ws.read_files(latest_run(store, run_id).champion_commit)
        if len(files) == 1:
            return next(iter(files.values()))
        return "".join(f"# ==== {p} ====\n{t}" for p, t in files.items())
    try:
        exp_id = int(what)
    except ValueError:
        raise UsageError(f"export takes an experiment id or 'best', not {what!r}") from None
    exp = store.get_experiment(exp_id)
    if exp is None:
        raise UsageError(f"no experiment {exp_id}")
    if exp.kind == "baseline" or not exp.commit:
        raise UsageError(f"experiment {exp_id} has no change to export ({exp.status.value})")
    return ws.format_patch(exp.commit)


# -- the user's guidance (``autoresearch steer``) -----------------------------------------------
def guidance_dicts(store: Store, run_id: int, *, active_at: datetime | None = None,
                   everything: bool = False) -> list[dict[str, Any]]:
    return [{"id": g.id, "text": g.text, "created_at": _utc(g.created_at).isoformat(),
             "cleared_at": None if g.cleared_at is None else _utc(g.cleared_at).isoformat()}
            for g in store.guidance(run_id, active_at=active_at, everything=everything)]


def guidance_text(store: Store, run_id: int) -> str:
    """Every guidance entry of a run with when it was added (and cleared)."""
    rows = guidance_dicts(store, run_id, everything=True)
    if not rows:
        return f"run {run_id}: no guidance (add some with: autoresearch steer \"TEXT\")"
    lines = [f"run {run_id} guidance:"]
    for g in rows:
        state = "active" if g["cleared_at"] is None else f"cleared {g['cleared_at'][:19]}Z"
        lines.append(f"  #{g['id']} {g['created_at'][:19]}Z [{state}] {g['text']}")
    return "\n".join(lines)


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)
