"""The command line. Thin commands; the only place errors become exit codes.

Exit codes: 0 ok, 1 failed, 2 bad usage (unknown id, missing workspace, bad flags).

Just over 400 lines: one thin function per command, and the option types they share.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from autoresearch import data as data_mod
from autoresearch import loop as loop_mod
from autoresearch import report, runner
from autoresearch.agents import AgentError, make_agent
from autoresearch.config import Settings, load_settings
from autoresearch.errors import AutoresearchError, UsageError
from autoresearch.loop import LoopStopped
from autoresearch.models import ExperimentStatus
from autoresearch.progress import make_reporter
from autoresearch.store import Experiment, Run, Store
from autoresearch.workspace import Workspace, init_workspace

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Automated ML research on a nanoGPT training script, with a trusted harness.",
)
# tables are not squeezed to 80 columns when the output goes to a file or a pipe
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class _State:
    workspace: Path | None = None
    db: Path | None = None


state = _State()


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except UsageError as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(2) from None
    except (AutoresearchError, AgentError) as e:  # AgentFatal: bad key, unknown model
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(1) from None


def _settings(**cli: Any) -> Settings:
    return load_settings({"workspace": state.workspace, "db": state.db, **cli})


def _store(settings: Settings, must_exist: bool = True) -> Store:
    path = settings.db_path
    if must_exist and not path.is_file():
        raise UsageError(f"no results database at {path}; run `autoresearch loop` first "
                         "(or pass --workspace/--db)")
    return Store(path)


@app.callback()
def _global(
    workspace: Annotated[Path | None, typer.Option(
        "--workspace", "-w", envvar="AUTORESEARCH_WORKSPACE",
        help="Workspace folder (default: the current directory).")] = None,
    db: Annotated[Path | None, typer.Option(
        help="Results database (default: <workspace>/results.db).")] = None,
) -> None:
    state.workspace = workspace
    state.db = db


TimeBudget = Annotated[float | None, typer.Option(
    "--time-budget", help="Training budget in wall-clock seconds (default 60 CPU, 300 CUDA).")]
TokenBudget = Annotated[int | None, typer.Option(
    "--token-budget", help="Training budget in tokens (reproducible; exclusive with time).")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, mps or auto.")]
Dataset = Annotated[str | None, typer.Option(
    help="shakespeare (downloaded), offline (built in), or a .txt file/folder.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _check_budgets(time_budget: float | None, token_budget: int | None) -> None:
    if time_budget is not None and token_budget is not None:
        raise UsageError("give either --time-budget or --token-budget, not both")


# -- init / prepare / train ---------------------------------------------------------------------
@app.command()
def init(path: Annotated[Path | None, typer.Argument(help="Folder to create.")] = None) -> None:
    """Create a workspace: baseline/train.py and prompts/, ready for `loop`."""
    with _errors():
        target = path or state.workspace or Path(".")
        written = init_workspace(target)
        out.print(f"workspace ready at {target.resolve()} ({len(written)} files written)")


@app.command()
def prepare(dataset: Dataset = None) -> None:
    """Download/build a dataset and split it into train, validation and a held-out test split."""
    with _errors():
        s = _settings(dataset=dataset)
        d = data_mod.prepare(s.dataset, notice=lambda m: err.print(m, markup=False))
        out.print(f"{d.name}: {d.train_tokens:,} train / {d.val_tokens:,} val / "
                  f"{d.test_tokens:,} test tokens, sha256 {d.sha256[:16]}…, at {d.path}")


SandboxOpt = Annotated[bool | None, typer.Option(
    "--sandbox/--no-sandbox",
    help="Fence training in with Landlock (Linux) so it can open nothing but its own "
         "folders; --no-sandbox only to troubleshoot a setup it blocks.")]


@app.command()
def train(
    source: Annotated[Path | None, typer.Option(
        help="Folder with train.py (default: the workspace's baseline/).")] = None,
    time_budget: TimeBudget = None,
    token_budget: TokenBudget = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    device: Device = None,
    dataset: Dataset = None,
    sandbox: SandboxOpt = None,
    split: Annotated[str, typer.Option(
        help="val, or test: also score the held-out test split (your own check; the loop "
             "never does).")] = "val",
    as_json: JsonOut = False,
) -> None:
    """Measure one training source once: train under the budget, evaluate, print metrics."""
    with _errors():
        _check_budgets(time_budget, token_budget)
        if split not in ("val", "test"):
            raise UsageError(f"--split is val or test, not {split!r}")
        s = _settings(time_budget=time_budget, token_budget=token_budget, device=device,
                      dataset=dataset, sandbox=sandbox)
        src = source or (s.workspace / "baseline")
        if not (src / "train.py").is_file():
            raise UsageError(f"{src} has no train.py")
        dev = runner.resolve_device(s.device)
        d = data_mod.prepare(s.dataset, notice=lambda m: err.print(m, markup=False))
        budget = s.budget(dev)
        out_dir = s.workspace / "experiments" / "train" / f"seed-{seed}"
        if not as_json:
            err.print(f"training {src} on {dev} for {budget.describe()} ({d.name}); "
                      f"log: {out_dir / 'run.log'}", markup=False)
        m = runner.measure(runner.Job(
            source=src.resolve(), data=d.path, budget=budget, seed=seed, device=dev,
            out_dir=out_dir, setup_cap=s.setup_cap, timeout=s.timeout, sandbox=s.sandbox,
            split=split), gpu=s.gpu)
        if as_json:
            out.print_json(m.model_dump_json())
        else:
            out.print(report.metrics_text(m), markup=False)
        if not m.ok:
            raise typer.Exit(1)


@app.command()
def doctor(
    device: Device = None,
    agent: Annotated[str | None, typer.Option(
        help="The agent the loop will use (its API key is then needed).")] = None,
    base_url: Annotated[str | None, typer.Option(
        help="An OpenAI-compatible server URL to check.")] = None,
    backend: Annotated[str | None, typer.Option(help="local or ray.")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="A Ray cluster's address to check, e.g. 10.0.0.1:6379.")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="Skip the torch.compile check (seconds to a minute).")] = False,
    as_json: JsonOut = False,
) -> None:
    """Check this machine for `loop`: torch and GPUs, bf16, compile, sandbox, git, disk, data,
    API keys, Ray. Exit 1 when something the loop needs is missing."""
    with _errors():
        from autoresearch import doctor as doctor_mod

        s = _settings(device=device, agent=agent, base_url=base_url, backend=backend,
                      ray_address=ray_address)
        found = doctor_mod.diagnose(s, compile_check=not quick)
        if as_json:
            out.print_json(json.dumps(found.to_dict()))
        else:
            for check in found.checks:
                out.print(check.line(), markup=False)
            out.print(found.summary(), markup=False)
        if not found.ready:
            raise typer.Exit(1)


# -- loop -----------------------------------------------------------------------------------------
@app.command()
def loop(
    budget: Annotated[int | None, typer.Option(
        "--budget", "-n", help="Experiments to run (failures count; repairs do not).")] = None,
    agent: Annotated[str | None, typer.Option(
        help="auto, playbook, mock, anthropic or openai (auto: by which API key is set, "
             "else the offline playbook).")] = None,
    script: Annotated[Path | None, typer.Option(
        help="Mock agent: JSON list or JSONL of proposals to replay.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name for anthropic/openai.")] = None,
    base_url: Annotated[str | None, typer.Option(
        help="OpenAI-compatible server URL (vLLM, Ollama, llama.cpp, a proxy).")] = None,
    time_budget: TimeBudget = None,
    token_budget: TokenBudget = None,
    seed: Annotated[int | None, typer.Option(help="First seed.")] = None,
    seeds: Annotated[int | None, typer.Option(
        help="Seeds per measurement of the baseline and of promising candidates.")] = None,
    device: Device = None,
    gpu: Annotated[str | None, typer.Option(
        help="GPUs to train on, one worker each: 0,1,2,3 (each job sees only its own).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Experiments at once (default: one per --gpu, else 1; on CPU they split the "
        "cores).")] = None,
    pipeline: Annotated[bool | None, typer.Option(
        "--pipeline/--no-pipeline",
        help="Ask the agent for the next proposal while jobs train (default on).")] = None,
    backend: Annotated[str | None, typer.Option(
        help="Where jobs run: local, or ray (a Ray cluster; pip install 'autoresearch[ray]')."
    )] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="The Ray cluster's address, e.g. 10.0.0.1:6379 (default: Ray's own lookup).")
    ] = None,
    dataset: Dataset = None,
    tag: Annotated[str | None, typer.Option(help="A name for this run.")] = None,
    min_delta: Annotated[float | None, typer.Option(
        help="Smallest improvement in val_bpb worth keeping.")] = None,
    repairs: Annotated[int | None, typer.Option(
        help="Repair round trips for an unusable answer.")] = None,
    max_cost: Annotated[float | None, typer.Option(
        help="Stop cleanly before agent calls would cost more than this (USD).")] = None,
    keep_worktrees: Annotated[bool | None, typer.Option(
        "--keep-worktrees", help="Keep finished experiments' worktrees.")] = None,
    sandbox: SandboxOpt = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the last unfinished run.")] = False,
    prompt_tokens: Annotated[int | None, typer.Option(
        help="Bound of one agent prompt in tokens (the history gets what the code and facts "
             "leave; default 30000).")] = None,
    plateau_after: Annotated[int | None, typer.Option(
        help="Experiments without a keep after which the prompt asks for a bolder change "
             "(default 8; 0: never).")] = None,
    thinking_tokens: Annotated[int | None, typer.Option(
        help="Anthropic extended thinking: budget in tokens (>= 1024).")] = None,
    reasoning_effort: Annotated[str | None, typer.Option(
        help="OpenAI reasoning models: low, medium or high.")] = None,
    with_report: Annotated[bool, typer.Option(
        "--report", help="When the loop ends, run `autoresearch report` on the run (fresh "
        "seeds, the test split, the ablation; kept in reports/ for the dashboard).")] = False,
) -> None:
    """Run the research loop: propose, apply, train, measure, keep or revert."""
    with _errors():
        _check_budgets(time_budget, token_budget)
        if budget is not None and budget < 1:
            raise UsageError("--budget must be at least 1")
        if script is not None and agent not in (None, "mock"):
            raise UsageError("--script is for the mock agent (--agent mock)")
        s = _settings(agent="mock" if script and agent is None else agent, script=script,
                      model=model, base_url=base_url, time_budget=time_budget,
                      token_budget=token_budget, seed=seed, seeds=seeds, device=device,
                      gpu=gpu, dataset=dataset, tag=tag, min_delta=min_delta, repairs=repairs,
                      max_cost=max_cost, keep_worktrees=keep_worktrees, sandbox=sandbox,
                      workers=workers, pipeline=pipeline, backend=backend,
                      ray_address=ray_address, prompt_tokens=prompt_tokens,
                      plateau_after=plateau_after, thinking_tokens=thinking_tokens,
                      reasoning_effort=reasoning_effort)
        ws = Workspace(s.workspace, s.editable)
        store = Store(s.db_path)
        reporter = make_reporter(out, err)
        try:
            if resume:
                lp = loop_mod.resume(s, store, ws, reporter, experiments=budget, changed={
                    "max_cost": max_cost, "repairs": repairs, "keep_worktrees": keep_worktrees,
                    "sandbox": sandbox, "pipeline": pipeline, "ray_address": ray_address,
                    "workers": workers, "gpu": gpu, "backend": backend,
                    "prompt_tokens": prompt_tokens, "plateau_after": plateau_after,
                    "thinking_tokens": thinking_tokens, "reasoning_effort": reasoning_effort})
                s = lp.active.settings
            else:
                ag = make_agent(s.agent, settings=s, notice=reporter.notice,
                                prompts_dir=ws.root / "prompts")
                loop_mod.check_cost_cap(s, ag)
                lp = loop_mod.start(s, store, ws, ag, reporter,
                                    budget if budget is not None else 20)
            try:
                done = lp.execute()
            except KeyboardInterrupt:
                reporter.close()
                err.print("interrupted: what was in flight is recorded; "
                          "continue with `autoresearch loop --resume`", markup=False)
                raise typer.Exit(130) from None
            except LoopStopped as e:
                reporter.close()
                err.print(f"stopped: {e}", markup=False)
                raise typer.Exit(1) from None
            reporter.close()
            out.print(report.run_summary(store, done), markup=False)
            if with_report:
                _report_after_loop(s, store, ws, done)
        finally:
            reporter.close()
            store.close()


# -- inspect ------------------------------------------------------------------------------------
@app.command()
def history(
    run: Annotated[int | None, typer.Option("--run", help="Only this run.")] = None,
    status: Annotated[list[str] | None, typer.Option(
        help="Only these statuses (repeatable).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many, newest.")] = None,
    as_json: JsonOut = False,
) -> None:
    """List experiments: val_bpb beside the champion's on the same seeds, why, seconds, cost."""
    with _errors():
        statuses = [_status(x) for x in status or []]
        if limit is not None and limit < 1:
            raise UsageError("--limit must be at least 1")
        store = _store(_settings())
        if run is not None and store.get_run(run) is None:
            raise UsageError(f"no run {run}")
        rows = store.experiments(run_id=run, status=statuses, limit=limit, newest_first=True)
        rows.reverse()
        if as_json:
            out.print_json(json.dumps([report.experiment_dict(store, e) for e in rows]))
            return
        out.print(report.history_table(store, rows))


@app.command()
def runs(as_json: JsonOut = False) -> None:
    """List runs with their champion, experiment counts and cost."""
    with _errors():
        store = _store(_settings())
        rows = store.runs()
        if as_json:
            out.print_json(json.dumps([report.run_dict(store, r) for r in rows]))
            return
        out.print(report.runs_table(store, rows))
        for r in rows:
            out.print(report.device_time_text(store, r), markup=False)
            assert r.id is not None
            if store.guidance(r.id, everything=True):
                out.print(report.guidance_text(store, r.id), markup=False)


@app.command()
def show(
    exp_id: Annotated[int, typer.Argument(metavar="ID", help="Experiment id.")],
    diff: Annotated[bool, typer.Option("--diff", help="Print the diff.")] = False,
    log: Annotated[bool, typer.Option("--log", help="Print the training logs.")] = False,
    as_json: JsonOut = False,
) -> None:
    """One experiment: proposal, measurements, decision and its evidence, cost."""
    with _errors():
        s = _settings()
        store = _store(s)
        exp = _experiment(store, exp_id)
        if as_json:
            d = report.experiment_dict(store, exp, full=True)
            if log:
                d["logs"] = report.logs(s.workspace, exp)
            d["curves"] = report.curves_dict(s.workspace, exp)
            out.print_json(json.dumps(d))
            return
        out.print(report.experiment_text(store, exp), markup=False)
        out.print(report.curves_text(s.workspace, exp), markup=False)
        if diff:
            out.print(exp.diff or "(no diff)", markup=False)
        if log:
            for name, text in report.logs(s.workspace, exp).items():
                out.print(f"── {name} ──", markup=False)
                out.print(text, markup=False)


@app.command()
def replay(
    exp_id: Annotated[int, typer.Argument(metavar="ID", help="Experiment whose diff to replay.")],
    onto: Annotated[str, typer.Option(
        help="baseline, champion, or any git ref of the research repo.")] = "champion",
    seeds: Annotated[int | None, typer.Option(
        help="Seeds to measure (default: the run's).")] = None,
    as_json: JsonOut = False,
) -> None:
    """Apply a stored diff in a new worktree, measure it, compare with the original."""
    with _errors():
        if seeds is not None and seeds < 1:
            raise UsageError("--seeds must be at least 1")
        s = _settings()
        store = _store(s)
        ws = Workspace(s.workspace, s.editable)
        exp = _experiment(store, exp_id)
        reporter = make_reporter(out, err) if not as_json else make_reporter(None, err)
        try:
            result = loop_mod.replay_once(s, store, ws, reporter, exp, onto=onto, seeds=seeds)
        finally:
            reporter.close()
        if as_json:
            out.print_json(json.dumps(result))
        else:
            out.print(report.replay_text(result), markup=False)
        if not result["ok"]:
            raise typer.Exit(1)


@app.command()
def export(
    what: Annotated[str, typer.Argument(metavar="ID|best",
                                        help="An experiment id, or best (a run's champion).")],
    run: Annotated[int | None, typer.Option("--run", help="With best: which run "
                                            "(default: the latest).")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write here, not stdout "
                                                  "(with --minimal: a folder).")] = None,
    minimal: Annotated[bool, typer.Option(
        "--minimal", help="With best: the champion minus the kept changes the report's "
        "ablation found to carry nothing, verified by measurement against the full champion; "
        "writes minimal.patch and the files.")] = False,
    seeds: Annotated[int, typer.Option(help="With --minimal: the report's fresh seeds.")] = 3,
) -> None:
    """A git-format patch of an experiment, or the champion's editable files."""
    with _errors():
        s = _settings()
        store = _store(s)
        ws = Workspace(s.workspace, s.editable)
        if minimal:
            _export_minimal(s, store, ws, what, run, out_path, seeds)
            return
        text = report.export(store, ws, what, run)
        if out_path is None:
            sys.stdout.write(text)
        else:
            out_path.write_text(text, encoding="utf-8")
            err.print(f"wrote {out_path}", markup=False)


# -- see ------------------------------------------------------------------------------------------
@app.command()
def plot(
    run: Annotated[int | None, typer.Option("--run", help="Which run (default: the latest).")
                   ] = None,
    out_path: Annotated[Path, typer.Option(
        "--out", help="The figure: .png or .svg, by its extension.")] = Path("progress.png"),
    curves: Annotated[list[str] | None, typer.Option(
        "--curves", metavar="ID[,ID...]",
        help="Also draw these experiments' training-loss curves (repeatable).")] = None,
) -> None:
    """Draw a run's progress: every experiment, kept ones labelled, running best, baseline band."""
    with _errors():
        from autoresearch import plot as plot_mod  # matplotlib loads only for this command

        s = _settings()
        store = _store(s)
        r = _run(store, run)
        ids = [_int_id(x) for item in curves or [] for x in item.split(",") if x.strip()]
        fig = plot_mod.progress_figure(store, r, s.workspace, ids)
        plot_mod.save(fig, out_path)
        out.print(f"wrote {out_path} (run {r.id}"
                  + (f", curves of {', '.join(f'#{i}' for i in ids)})" if ids else ")"),
                  markup=False)


@app.command()
def dashboard(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(
        help="Address to bind (127.0.0.1: this machine only; the dashboard has no login).")
                    ] = "127.0.0.1",
) -> None:
    """A read-only web view of the workspace's runs that updates while a loop runs."""
    with _errors():
        from autoresearch.dashboard import serve  # the web stack loads only for this command

        s = _settings()
        if not 0 < port < 65536:
            raise UsageError("--port must be between 1 and 65535")
        err.print(f"dashboard of {s.db_path} at http://{host}:{port}/ (read-only; Ctrl-C "
                  "stops it)", markup=False)
        serve(s.workspace, s.db_path, host=host, port=port)


# -- steering and the agent's prompt (issue 21) ---------------------------------------------------
STEER_CHARS = 2000


@app.command()
def steer(
    text: Annotated[str | None, typer.Argument(help="Guidance for the agent.")] = None,
    run: Annotated[int | None, typer.Option("--run", help="Which run (default: the newest).")
                   ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the run's guidance.")] = False,
    clear: Annotated[bool, typer.Option("--clear", help="Clear the active guidance.")] = False,
) -> None:
    """Guide the agent of a run, also while it runs: every later prompt shows the guidance."""
    with _errors():
        if sum([text is not None, list_, clear]) != 1:
            raise UsageError('give exactly one of: "TEXT", --list, --clear')
        store = _store(_settings())
        try:
            r = _run(store, run)
            assert r.id is not None
            if text is not None:
                clean = " ".join(text.split())
                if not clean:
                    raise UsageError("the guidance is empty")
                if len(clean) > STEER_CHARS:
                    raise UsageError(f"the guidance is {len(clean)} characters; keep it under "
                                     f"{STEER_CHARS}")
                g = store.add_guidance(r.id, clean)
                out.print(f"run {r.id}: guidance {g.id} added; the agent's next prompt shows it",
                          markup=False)
            elif clear:
                n = store.clear_guidance(r.id)
                out.print(f"run {r.id}: {n} guidance entr{'y' if n == 1 else 'ies'} cleared",
                          markup=False)
            else:
                out.print(report.guidance_text(store, r.id), markup=False)
        finally:
            store.close()


@app.command()
def prompt(
    run: Annotated[int | None, typer.Option("--run", help="Which run (default: the newest).")
                   ] = None,
) -> None:
    """Print the exact system and user messages a model agent would get next in a run."""
    with _errors():
        s = _settings()
        store = _store(s)
        try:
            r = _run(store, run)
            ws = Workspace(s.workspace, Settings.exactly(r.config).editable)
            system, messages = loop_mod.next_prompt(s, store, ws, make_reporter(None, err), r)
            if r.agent not in ("anthropic", "openai"):
                err.print(f"note: run {r.id} uses the {r.agent} agent, which does not read "
                          "this prompt; a model agent would get it", markup=False)
            out.print("=== system ===", markup=False)
            out.print(system, markup=False)
            for m in messages:
                out.print(f"=== {m['role']} ===", markup=False)
                out.print(m["content"], markup=False)
        finally:
            store.close()


def _run(store: Store, run_id: int | None) -> Run:
    if run_id is not None:
        r = store.get_run(run_id)
        if r is None:
            raise UsageError(f"no run {run_id}")
        return r
    runs_ = store.runs()
    if not runs_:
        raise UsageError("no runs yet: start one with `autoresearch loop`")
    return runs_[-1]


def _int_id(text: str) -> int:
    try:
        return int(text.strip().lstrip("#"))
    except ValueError:
        raise UsageError(f"--curves takes experiment ids, not {text!r}") from None


def _status(name: str) -> ExperimentStatus:
    try:
        return ExperimentStatus(name)
    except ValueError:
        names = ", ".join(x.value for x in ExperimentStatus)
        raise UsageError(f"unknown status {name!r}; one of: {names}") from None


def _experiment(store: Store, exp_id: int) -> Experiment:
    exp = store.get_experiment(exp_id)
    if exp is None:
        raise UsageError(f"no experiment {exp_id}")
    return exp


# -- the research report (issue 22: autoresearch/findings.py) ----------------------------------
@app.command("report")
def report_cmd(
    run: Annotated[int | None, typer.Option("--run", help="Which run (default: the latest).")
                   ] = None,
    out_path: Annotated[Path | None, typer.Option(
        "--out", help="report.md (figures as .svg beside it) or report.html; default: the "
                      "markdown on stdout.")] = None,
    seeds: Annotated[int, typer.Option(
        help="Fresh seeds (never used by the run) per configuration.")] = 3,
    no_measure: Annotated[bool, typer.Option(
        "--no-measure", help="Render what is stored; measure nothing.")] = False,
    as_json: JsonOut = False,
) -> None:
    """What a run found: champion vs baseline on fresh seeds and the held-out test split, the
    ablation of every kept change, the cost. Measurements are stored: run it again to resume."""
    with _errors():
        from autoresearch import findings, findings_render

        s = _settings()
        store = _store(s)
        ws = Workspace(s.workspace, s.editable)
        r = report.latest_run(store, run)
        reporter = make_reporter(None, err)
        try:
            d = findings.run_report(s, store, ws, reporter, r, seeds,
                                    measure_now=not no_measure)
        finally:
            reporter.close()
        saved = findings_render.save_latest(d, store, ws)
        if as_json:
            out.print_json(json.dumps(d))
        elif out_path is None:
            out.print(findings_render.markdown(d), markup=False)
        else:
            for f in findings_render.write(d, out_path, store, ws):
                err.print(f"wrote {f}", markup=False)
        err.print(f"kept for the dashboard: {saved}", markup=False)
        if not d["complete"]:
            raise typer.Exit(1)


def _report_after_loop(s: Settings, store: Store, ws: Workspace, run: Run) -> None:
    """``loop --report``: the report of the run just finished, its headline printed."""
    from autoresearch import findings, findings_render

    reporter = make_reporter(None, err)
    try:
        d = findings.run_report(s, store, ws, reporter, run, findings.DEFAULT_SEEDS)
    finally:
        reporter.close()
    saved = findings_render.save_latest(d, store, ws)
    for line in findings_render.headline_lines(d):
        out.print(line, markup=False)
    out.print(f"report: {saved} (`autoresearch report --out report.md` to write it again)",
              markup=False)


def _export_minimal(s: Settings, store: Store, ws: Workspace, what: str, run: int | None,
                    out_path: Path | None, seeds: int) -> None:
    from autoresearch import findings

    if what != "best":
        raise UsageError("--minimal goes with best (a run's champion)")
    r = report.latest_run(store, run)
    folder = out_path or Path(f"minimal-run-{r.id}")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file; --minimal writes a folder")
    reporter = make_reporter(None, err)
    try:
        got = findings.minimal(s, store, ws, reporter, r, seeds)
    finally:
        reporter.close()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "minimal.patch").write_text(got["diff"], encoding="utf-8")
    for rel, text in got["files"].items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text, encoding="utf-8")
    dropped = ", ".join(f"#{i}" for i in got["dropped"]) or "nothing"
    err.print(f"dropped {dropped}: {got['reason']}"
              + (f" ({got['verdict']})" if "verdict" in got else ""), markup=False)
    err.print(f"wrote {folder / 'minimal.patch'} and {', '.join(got['files'])} in {folder}",
              markup=False)


def main() -> None:
    try:
        app(prog_name="autoresearch")
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
