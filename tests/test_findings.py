"""``autoresearch report``: fresh seeds, the held-out test split, the ablation, the cost.

The run is built through the store and the workspace (real git commits, a real SQLite file),
with three kept changes of known effect on the loop tests' bigram source: one that helps, one
that does nothing (kept by noise, as happens), and one that only helps together with the first.
The report then measures for real, through the runner, on fresh seeds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import LOOP_SOURCE, invoke, loop_workspace

from autoresearch import findings
from autoresearch.config import Settings
from autoresearch.data import prepare
from autoresearch.metrics import Metrics
from autoresearch.models import (
    ExperimentKind,
    ExperimentStatus,
    MeasurementRole,
    Purpose,
    RunState,
    RunStatus,
)
from autoresearch.store import Store
from autoresearch.workspace import ApplyConflict, Workspace

ES = ExperimentStatus
BASE = LOOP_SOURCE.read_text(encoding="utf-8")
OPT = "opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)"
HELPS = ("raise the learning rate",
         lambda t: t.replace("LEARNING_RATE = 1e-5", "LEARNING_RATE = 3e-3"))
NOTHING = ("name the batch", lambda t: t.replace("BATCH_SIZE = 8\n",
                                                 "BATCH_SIZE = 8\nNOTE = 'tidied'\n"))
TOGETHER = ("boost a raised rate", lambda t: t.replace(
    OPT, "opt = torch.optim.Adam(model.parameters(), "
         "lr=LEARNING_RATE * (10 if LEARNING_RATE > 1e-4 else 1))"))


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))


def build_run(tmp: Path, changes: list, *, drifted: bool = False) -> tuple[Path, int]:
    """A finished run whose kept changes are ``changes`` (title, edit), in order; its baseline
    values are stored (two seeds, one of them unfenced and drifted when ``drifted``)."""
    root = loop_workspace(tmp)
    s = Settings.exactly({"workspace": root, "dataset": str(tmp / "corpus.txt"),
                          "token_budget": 4096, "device": "cpu", "seeds": 2, "agent": "mock"})
    store = Store(root / "results.db")
    ws = Workspace(root)
    data = prepare(s.dataset)
    base = ws.commit_baseline()
    run = store.add_run(agent="mock", model="", budget_kind="tokens", budget_amount=4096,
                        seeds="[0, 1]", device="cpu", dataset=s.dataset,
                        dataset_sha256=data.sha256, experiments_planned=len(changes),
                        branch="", baseline_commit=base, champion_commit=base,
                        config=s.model_dump_json(exclude={"prices"}))
    assert run.id is not None
    b = store.add_experiment(run_id=run.id, kind=ExperimentKind.baseline, status=ES.kept,
                             val_bpb=7.9, title="baseline")
    assert b.id is not None
    for seed, v in ((0, 7.90), (1, 7.92)):
        m = Metrics(status=RunStatus.ok, val_bpb=v, val_loss=v * 0.69, seed=seed,
                    total_seconds=3.0, sandbox="off" if drifted and seed else "landlock v4")
        store.add_measurement(b.id, m, role=MeasurementRole.candidate, purpose=Purpose.baseline,
                              drift="machine 40% slower" if drifted and seed else None)
    text, champ = BASE, base
    for i, (title, edit) in enumerate(changes, 1):
        e = store.add_experiment(run_id=run.id, seq=i, title=title, rationale=f"why {i}",
                                 parent_commit=champ)
        assert e.id is not None
        text = edit(text)
        done = ws.apply_files(e.id, champ, {"train.py": text}, message=title)
        ws.remove_worktree(e.id)
        champ = done.commit
        store.update_experiment(e.id, status=ES.kept, commit=champ, diff=done.diff,
                                delta=-0.1 * i, val_bpb=7.9 - 0.1 * i)
        store.update_run(run.id, champion_commit=champ, champion_experiment_id=e.id)
    store.update_run(run.id, noise_std=0.014, state=RunState.finished)
    store.close()
    return root, run.id


@pytest.mark.slow  # 10 real measurements of the bigram source
def test_the_ablation_tells_what_each_kept_change_carries(tmp_path: Path) -> None:
    root, run_id = build_run(tmp_path, [HELPS, NOTHING, TOGETHER], drifted=True)
    code, text = invoke("--workspace", str(root), "report", "--seeds", "2", "--json")
    assert code == 0, text
    d = _json(text)
    assert "5 configurations x 2 fresh seeds" in text and "10 measurements to run" in text
    assert d["seeds"] == [1000, 1001] and d["test_split"] is True
    h = d["headline"]
    assert h["gain_val"]["flag"] == "carries" and h["gain_test"]["flag"] == "carries"
    assert h["verdict"]["keep"] is True
    flags = {r["title"]: r["flag"] for r in d["ablation"]}
    assert flags == {HELPS[0]: "carries", NOTHING[0]: "no measurable effect",
                     TOGETHER[0]: "carries"}, d["ablation"]
    # the warnings the run recorded
    assert any("drift" in w for w in d["warnings"]) and any("unfenced" in w
                                                            for w in d["warnings"])
    # every report measurement is stored with its purpose and a test value; none other has one
    store = Store(root / "results.db")
    rows = store.run_measurements(run_id)
    report = [m for kind, _, m in rows if kind is ExperimentKind.report]
    assert len(report) == 10 and all(m.purpose is Purpose.report and m.test_bpb is not None
                                     for m in report)
    assert all(m.test_bpb is None for kind, _, m in rows if kind is not ExperimentKind.report)
    assert {m.seed for m in report} == {1000, 1001}
    store.close()
    # again: nothing to measure, the same numbers (resumed from the store)
    code, again = invoke("--workspace", str(root), "report", "--seeds", "2", "--json")
    assert code == 0 and "0 measurements to run (10 stored already)" in again
    assert _json(again)["headline"] == h
    # the markdown shows the same numbers the JSON carries, and the warnings
    code, md = invoke("--workspace", str(root), "report", "--seeds", "2", "--no-measure")
    assert code == 0 and "## The ablation" in md and "drift" in md
    numbers = set(re.findall(r"[+-]?\d+\.\d{4}(?!\d)", md))  # the 4-decimal figures
    values = [x for v in _floats(d) for x in (v, -v)]  # the rule says "needs < -threshold"
    known = {f"{v:.4f}" for v in values} | {f"{v:+.4f}" for v in values}
    assert numbers and numbers <= known, numbers - known
    # HTML beside it, self-contained
    code, _ = invoke("--workspace", str(root), "report", "--seeds", "2", "--no-measure",
                     "--out", str(tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text()
    assert code == 0 and "<svg" in page and "<script" not in page and "carries" in page
    assert (root / "reports" / f"run-{run_id}.html").is_file()
    # the minimal champion: without the change that carries nothing, verified, nothing re-run
    out = tmp_path / "minimal"
    code, said = invoke("--workspace", str(root), "export", "best", "--minimal", "--seeds", "2",
                        "--out", str(out))
    assert code == 0, said
    assert "dropped #3" in said and "taking the minimal champion" in said
    assert (out / "train.py").read_text() == TOGETHER[1](HELPS[1](BASE))
    patch = (out / "minimal.patch").read_text()
    assert "+LEARNING_RATE = 3e-3" in patch and "NOTE" not in patch


def _json(output: str) -> dict:
    """The JSON document in a CLI call's output (its notices are on stderr beside it)."""
    found, _ = json.JSONDecoder().raw_decode(output[output.index("{"):])
    return found


def _floats(obj: object) -> list[float]:
    if isinstance(obj, float):
        return [obj]
    if isinstance(obj, dict):
        return [f for v in obj.values() for f in _floats(v)]
    if isinstance(obj, list):
        return [f for v in obj for f in _floats(v)]
    return []


def test_a_revert_that_conflicts_is_reported_as_such(tmp_path: Path) -> None:
    retune = ("retune the rate", lambda t: t.replace("LEARNING_RATE = 3e-3",
                                                     "LEARNING_RATE = 2e-3"))
    root, run_id = build_run(tmp_path, [HELPS, retune])
    store, ws = Store(root / "results.db"), Workspace(root)
    run = store.get_run(run_id)
    assert run is not None
    kept = findings.kept_changes(store, run)
    assert [e.title for e in kept] == [HELPS[0], retune[0]]
    with pytest.raises(ApplyConflict, match="conflicts"):
        findings.revert(ws, run.champion_commit, [kept[0].commit or ""], tmp_path / "wt")
    p = findings.plan(store, ws, run, 2, has_test=True)
    arms = {a.key: a for a in p.arms}
    assert arms[f"without-{kept[0].id}"].conflict is not None
    # the champion without its last change is the champion before it: files, not a guess
    assert arms[f"without-{kept[1].id}"].files == {"train.py": HELPS[1](BASE)}
    assert p.to_measure == 3 * 2  # baseline, champion, one revert; the conflict measures nothing
    d = findings.build(store, ws, p, (0.014, 1))
    assert d["ablation"][0]["flag"] == "revert conflicts" and not d["complete"]
    assert not (tmp_path / "wt").exists()
    store.close()


def test_fresh_seeds_are_seeds_the_run_never_used(tmp_path: Path) -> None:
    root, run_id = build_run(tmp_path, [HELPS])
    store = Store(root / "results.db")
    run = store.get_run(run_id)
    assert run is not None
    assert findings.fresh_seeds(store, run, 3) == [1000, 1001, 1002]
    b = store.experiments(run_id=run_id)[0]
    assert b.id is not None
    store.add_measurement(b.id, Metrics(status=RunStatus.ok, val_bpb=7.9, seed=1000))
    assert findings.fresh_seeds(store, run, 2) == [2000, 2001]
    store.close()


def test_a_run_on_a_dataset_without_a_test_split_says_so(tmp_path: Path) -> None:
    root, run_id = build_run(tmp_path, [HELPS])
    store, ws = Store(root / "results.db"), Workspace(root)
    run = store.get_run(run_id)
    assert run is not None
    p = findings.plan(store, ws, run, 2, has_test=False)
    assert "no test split" in findings.announce(p)
    d = findings.build(store, ws, p, (0.014, 1))
    from autoresearch import findings_render

    assert "re-prepare" not in (d["test_note"] or "") and "prepared before" in d["test_note"]
    assert "Test split: no test split" in findings_render.markdown(d)
    store.close()


@pytest.mark.slow  # a mock loop of one experiment, then its report (about 12 measurements)
def test_loop_report_runs_the_report_when_the_loop_ends(tmp_path: Path) -> None:
    root = loop_workspace(tmp_path)
    raise_lr = {"title": "Raise the learning rate", "rationale": "1e-5 learns nothing",
                "edits": [{"path": "train.py", "search": "LEARNING_RATE = 1e-5",
                           "replace": "LEARNING_RATE = 3e-2"}]}
    s = tmp_path / "s.jsonl"
    s.write_text(json.dumps(raise_lr), encoding="utf-8")
    code, out = invoke("--workspace", str(root), "loop", "--agent", "mock", "--script", str(s),
                       "--budget", "1", "--token-budget", "12000", "--seeds", "2", "--device",
                       "cpu", "--dataset", str(tmp_path / "corpus.txt"), "--report")
    assert code == 0, out
    # the champion without its only change is the baseline: two configurations, measured once
    assert "2 configurations x 3 fresh seeds [1000, 1001, 1002]: 6 measurements" in out
    assert "held-out test split: baseline" in out and "Of 1 kept changes, 1 carries" in out
    d = json.loads((root / "reports" / "run-1.json").read_text())
    assert d["ablation"][0]["same_as"] == "baseline" and d["ablation"][0]["flag"] == "carries"
    # the loop's own decisions never saw a test value
    store = Store(root / "results.db")
    rows = store.run_measurements(1)
    assert all((m.test_bpb is not None) == (kind is ExperimentKind.report) for kind, _, m in rows)
    store.close()


def test_the_gain_interval_is_the_keep_rules_t_interval() -> None:
    from autoresearch.decide import t_quantile

    seeds = [1, 2, 3]
    ref = {1: 5.0, 2: 5.1, 3: 4.9}
    better = {s: v - 0.2 for s, v in ref.items()}
    g = findings.gain(ref, better, seeds, noise_std=0.01, noise_df=4)
    assert g is not None and g["mean"] == pytest.approx(0.2) and g["flag"] == "carries"
    se = (2 ** 0.5 * 0.01) / 3 ** 0.5  # identical differences: the floor sets the spread
    assert g["hi"] - g["lo"] == pytest.approx(2 * t_quantile(0.975, 2 + 4) * se)
    same = findings.gain(ref, dict(ref), seeds, noise_std=0.01, noise_df=4)
    assert same is not None and same["flag"] == "no measurable effect"
    worse = findings.gain(ref, {s: v + 0.2 for s, v in ref.items()}, seeds, 0.01, 4)
    assert worse is not None and worse["flag"] == "hurts now"
    assert findings.gain(ref, {}, seeds, 0.01, 4) is None
