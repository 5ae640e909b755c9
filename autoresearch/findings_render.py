"""The report's numbers (:func:`autoresearch.findings.build`) as markdown or as one HTML file.

Both are written from the same dict and show the same numbers (``--json`` prints the dict
itself). HTML is self-contained: inline SVG figures, a few lines of CSS written here, no
script.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from autoresearch.report import _duration
from autoresearch.store import Store
from autoresearch.workspace import Workspace

REPORTS_DIR = "reports"  # in the workspace: each run's latest report, for the dashboard


def _f(x: float | None, fmt: str = ".4f") -> str:
    return "—" if x is None else format(x, fmt)


def _ci(g: dict[str, Any] | None) -> str:
    if not g:
        return "—"
    return f"{g['mean']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}]"


def headline_lines(d: dict[str, Any]) -> list[str]:
    """The few sentences a reader takes away."""
    h = d["headline"]
    pct = f"{d['level']:.0%}"
    seeds = f"{len(d['seeds'])} fresh seeds"
    lines = []
    if "champion" not in h:
        lines.append(f"Nothing was kept: the champion is the baseline "
                     f"({_f(h['baseline']['val'])} val bpb on {seeds}).")
        return lines
    gv, gt = h.get("gain_val"), h.get("gain_test")
    ir = h["in_run"]
    lines.append(
        f"In the run: baseline {_f(ir['baseline'])} → champion {_f(ir['champion'])} val bpb "
        f"(gain {_f(ir.get('gain'), '+.4f')}, on the seeds the decisions were made on).")
    lines.append(
        f"On {seeds}, validation: baseline {_f(h['baseline']['val'])} → champion "
        f"{_f(h['champion']['val'])}, gain {_ci(gv)} ({pct} CI); the keep rule: "
        + (("keep" if h["verdict"]["keep"] else "not a keep") if "verdict" in h else "—") + ".")
    if d["test_split"]:
        lines.append(
            f"On {seeds}, held-out test split: baseline {_f(h['baseline']['test'])} → champion "
            f"{_f(h['champion']['test'])}, gain {_ci(gt)} ({pct} CI).")
    else:
        lines.append(f"Test split: {d['test_note']}.")
    carry = [r for r in d["ablation"] if r["flag"] == "carries"]
    idle = [r for r in d["ablation"] if r["flag"] in ("no measurable effect", "hurts now")]
    stuck = [r for r in d["ablation"] if r["flag"] == "revert conflicts"]

    def ids(rows: list[dict[str, Any]]) -> str:
        return ", ".join(f"#{r['experiment']}" for r in rows)

    if d["ablation"]:
        lines.append(f"Of {len(d['ablation'])} kept changes, {len(carry)} carr"
                     f"{'y' if len(carry) != 1 else 'ies'} part of the gain in the final "
                     "champion" + (f"; {ids(idle)} {'carry' if len(idle) > 1 else 'carries'}"
                                   " nothing measurable now" if idle else "")
                     + (f"; {ids(stuck)} could not be reverted (conflict)" if stuck else "")
                     + ".")
    return lines


def markdown(d: dict[str, Any], figures: dict[str, str] | None = None) -> str:
    """The report as markdown; ``figures``: name -> file the markdown links to."""
    q, h = d["question"], d["headline"]
    out = [f"# What run {d['run']} found", ""]
    out += [f"- {line}" for line in headline_lines(d)]
    if not d["complete"]:
        out += ["", "**Incomplete**: " + ("; ".join(d["failures"]) or
                "some measurements are missing (run the report again to resume)")]
    out += ["", "## The question", "",
            f"- baseline {q['baseline_commit'][:10]}, champion {q['champion_commit'][:10]}"
            f" (#{q['champion_experiment']})",
            f"- budget {q['budget']} per measurement on {q['device']}; data {q['dataset']} "
            f"({q['dataset_sha256'][:12]})",
            f"- agent {q['agent']}{' ' + q['model'] if q['model'] else ''}; "
            f"{q['experiments']} experiments; run seeds "
            f"{q['run_seeds']}; sandbox {q['sandbox']}",
            f"- report: fresh seeds {d['seeds']}; noise {q['noise_std']:.4f} "
            f"(df {q['noise_df']}); min_delta {q['min_delta']:g}", ""]
    out += ["## The answer", "",
            "| | baseline | champion | gain (CI) |", "| --- | --- | --- | --- |"]
    if "champion" in h:
        out.append(f"| in the run (decision seeds) | {_f(h['in_run']['baseline'])} | "
                   f"{_f(h['in_run']['champion'])} | {_f(h['in_run'].get('gain'), '+.4f')} |")
        out.append(f"| validation, fresh seeds | {_f(h['baseline']['val'])} | "
                   f"{_f(h['champion']['val'])} | {_ci(h.get('gain_val'))} |")
        out.append(f"| test, fresh seeds | {_f(h['baseline']['test'])} | "
                   f"{_f(h['champion']['test'])} | {_ci(h.get('gain_test'))} |")
        if "verdict" in h:
            out += ["", f"Keep rule on the fresh seeds: {h['verdict']['reason']}"]
    else:
        out.append(f"| validation, fresh seeds | {_f(h['baseline']['val'])} | — | — |")
    out += ["", "## The path", ""]
    if d["path"]:
        out += ["| # | change | Δ when kept | val_bpb when kept |", "| --- | --- | --- | --- |"]
        out += [f"| {r['experiment']} | {_cell(r['title'])} | {_f(r['delta'], '+.4f')} | "
                f"{_f(r['val_bpb'])} |" for r in d["path"]]
        out += [""] + [f"- #{r['experiment']} {r['title']}: {_one(r['rationale'])}"
                       for r in d["path"] if r["rationale"]]
    else:
        out.append("No change was kept.")
    out += ["", "## The ablation", "",
            "The final champion with each kept change reverted (three-way), on the fresh "
            "seeds: what the change carries in the final combination (positive: it helps).", ""]
    if d["ablation"]:
        out += ["| # | change | without it (val) | carries, val (CI) | carries, test (CI) | flag |",
                "| --- | --- | --- | --- | --- | --- |"]
        for r in d["ablation"]:
            note = f" (same files as the {r['same_as']})" if r["same_as"] else ""
            out.append(f"| {r['experiment']} | {_cell(r['title'])}{note} | {_f(r['val'])} | "
                       f"{_ci(r.get('carries_val'))} | {_ci(r.get('carries_test'))} | "
                       f"{r['flag']} |")
        conflicts = [f"- #{r['experiment']}: {r['conflict']}" for r in d["ablation"]
                     if r["conflict"]]
        out += ["", *conflicts] if conflicts else []
    else:
        out.append("Nothing to ablate.")
    c = d["cost"]
    dt = c["device_time"]
    out += ["", "## The cost", "",
            f"{_duration(dt['seconds'])} of device time; {c['calls']} agent calls, "
            f"{c['input_tokens']:,} input + {c['output_tokens']:,} output tokens, "
            f"${c['usd']:.2f}" + (f" (+{c['calls_with_unknown_cost']} calls of unknown cost)"
                                  if c["calls_with_unknown_cost"] else ""), "",
            "| phase | measurements | device time |", "| --- | --- | --- |"]
    out += [f"| {p} | {v['measurements']} | {_duration(v['seconds'])} |"
            for p, v in dt["by_purpose"].items()]
    out += ["", "## Warnings", ""]
    out += [f"- {w}" for w in d["warnings"]] or ["None recorded."]
    if figures:
        out += ["", "## Figures", ""]
        out += [f"![{name}]({path})" for name, path in figures.items()]
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _one(text: str) -> str:
    return " ".join(text.split())[:300]


_CSS = """body{font:15px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#1f2328}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #d0d7de;padding:4px 8px;
text-align:left}th{background:#f6f8fa}.carries{color:#1a7f37}.hurts{color:#c62828}
.idle{color:#9a6700}ul.head li{margin:.3em 0;font-size:16px}svg{max-width:100%;height:auto}"""


def to_html(d: dict[str, Any], svgs: dict[str, str]) -> str:
    """The report as one HTML page: the markdown's sections as tables, figures inline."""
    md = markdown(d)
    body: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, *rows = table
            body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td{_cls(c)}>{c}</td>" for c in r)
                                  + "</tr>" for r in rows) + "</table>")
            table.clear()

    in_list = False
    for line in md.splitlines():
        if line.startswith("| ---"):
            continue
        if line.startswith("|"):
            table.append([html.escape(c.strip().replace("\\|", "|"))
                          for c in line.strip("|").split(" | ")])
            continue
        flush()
        if line.startswith("- "):
            if not in_list:
                body.append('<ul class="head">' if len(body) == 1 else "<ul>")
                in_list = True
            body.append(f"<li>{html.escape(line[2:])}</li>")
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    flush()
    if in_list:
        body.append("</ul>")
    if svgs:
        body.append("<h2>Figures</h2>")
        body += [f"<figure>{svg}<figcaption>{html.escape(name)}</figcaption></figure>"
                 for name, svg in svgs.items()]
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>What run {d['run']} "
            f"found</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def _cls(cell: str) -> str:
    return {"carries": ' class="carries"', "hurts now": ' class="hurts"',
            "no measurable effect": ' class="idle"'}.get(cell, "")


def figures(store: Store, ws: Workspace, d: dict[str, Any]) -> dict[str, str]:
    """name -> SVG: the run's progress, and the champion's training curves against the
    baseline's on the fresh seeds."""
    from autoresearch import plot  # matplotlib: only when a figure is drawn

    run = store.get_run(d["run"])
    assert run is not None
    out = {"progress": plot.to_svg(plot.progress_figure(store, run, ws.root))}
    champ, base = d["arms"].get("champion"), d["arms"]["baseline"]
    if champ and champ["experiment"] and base["experiment"]:
        ce, be = store.get_experiment(champ["experiment"]), store.get_experiment(
            base["experiment"])
        if ce is not None and be is not None and any(
                pairs for _, pairs, _ in plot.experiment_lines(ws.root, [ce, be])):
            fig = plot.curve_figure(ws.root, ce, be)
            out["champion vs baseline, fresh seeds"] = plot.to_svg(fig)
    return out


def write(d: dict[str, Any], path: Path, store: Store, ws: Workspace) -> list[Path]:
    """Write the report to ``path`` (.md: figures as .svg files beside it; .html: inline)."""
    from autoresearch.errors import UsageError

    if path.suffix.lower() not in (".md", ".html"):
        raise UsageError(f"{path}: the report is written as .md or .html, by its extension")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    svgs = figures(store, ws, d)
    if path.suffix.lower() == ".html":
        path.write_text(to_html(d, svgs), encoding="utf-8")
        return [path]
    written = [path]
    links = {}
    for name, svg in svgs.items():
        f = path.with_name(f"{path.stem}-{name.split(',')[0].replace(' ', '-')}.svg")
        f.write_text(svg, encoding="utf-8")
        links[name] = f.name
        written.append(f)
    path.write_text(markdown(d, links), encoding="utf-8")
    return written


def save_latest(d: dict[str, Any], store: Store, ws: Workspace) -> Path:
    """Keep the report as ``<workspace>/reports/run-N.html`` and ``.json`` (the dashboard
    links the newest); returns the HTML's path."""
    import json

    folder = ws.root / REPORTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / f"run-{d['run']}.html"
    page.write_text(to_html(d, figures(store, ws, d)), encoding="utf-8")
    (folder / f"run-{d['run']}.json").write_text(json.dumps(d, indent=2), encoding="utf-8")
    return page
