"""The research loop: ``start`` a run or ``resume`` the last unfinished one, then
``execute`` the ``ResearchLoop`` they return (the one way in, for the CLI, tests and
benchmarks alike).

A new run measures the baseline on every seed; then each experiment goes through the six
steps of DESIGN, each in the module named for it:

- ask, check, apply: ``propose`` (the agent within the cost cap; parse, guard, dry-run,
  dedupe, with repair round trips; the commit in a worktree) -> a ``Candidate``
- measure, judge: ``trial`` (the measurement plan, the keep rule against the champion it
  was proposed on, the port onto a champion that moved meanwhile)
- record: ``record`` (every way an experiment ends is written there, a keep included)

around them: ``run`` (the active run, its champion, running seeds on a worker), ``scheduler``
(workers kept busy, proposals asked for while jobs train, stopping), ``limits`` (the budget
and the cost cap, under one lock), ``context`` (what the agent is shown), ``drift`` (the
machine's speed), ``replay`` (a stored diff measured again).
Every state change is committed to the store before the next step, so a loop killed at any
moment resumes with nothing lost or doubled.
"""

from __future__ import annotations

from typing import Any

from autoresearch import runner, unfenced
from autoresearch.agents import make_agent
from autoresearch.agents.base import Agent
from autoresearch.agents.pricing import price_of
from autoresearch.backends import Worker, cpu_cores, make_workers
from autoresearch.config import Settings
from autoresearch.errors import UsageError
from autoresearch.loop import record
from autoresearch.loop.context import HISTORY_RECENT, log_tail
from autoresearch.loop.replay import replay
from autoresearch.loop.run import ActiveRun, LoopStopped, Reporter, open_run, reopen
from autoresearch.loop.scheduler import BaselineFailed, ResearchLoop
from autoresearch.models import ExperimentKind, Proposal, RunState
from autoresearch.store import Experiment, Run, Store, is_done
from autoresearch.workspace import Workspace

__all__ = [
    "HISTORY_RECENT", "ActiveRun", "BaselineFailed", "LoopStopped", "Reporter", "ResearchLoop",
    "check_cost_cap", "cpu_cores", "log_tail", "make_workers", "next_prompt", "reopen", "replay",
    "replay_once", "resume", "start",
]

# what a resumed run may change from the settings it started with: where things are, prices,
# spending, patience, where jobs run
RESUMABLE = ("max_cost", "repairs", "keep_worktrees", "sandbox", "pipeline", "ray_address",
             "workers", "gpu", "backend", "prompt_tokens", "plateau_after", "thinking_tokens",
             "reasoning_effort")


def start(settings: Settings, store: Store, ws: Workspace, agent: Agent, reporter: Reporter,
          experiments: int, workers: list[Worker] | None = None) -> ResearchLoop:
    """A new run, ready to ``execute``: on ``workers`` (default: what the settings ask for).
    An agent made from the settings is checked with ``check_cost_cap`` first."""
    unfenced.check_loop(agent.name, settings.sandbox)  # no Landlock: only with --no-sandbox
    device = runner.resolve_device(settings.device)
    pool = workers if workers is not None else make_workers(settings, device,
                                                            ws.experiments_dir)
    _warn_shared_cores(settings, device, pool, reporter)
    active = open_run(settings, store, ws, reporter, agent=agent.name, model=agent.model,
                      experiments=experiments, workers=pool)
    return ResearchLoop(active, agent, pool)


def resume(settings: Settings, store: Store, ws: Workspace, reporter: Reporter, *,
           experiments: int | None = None, changed: dict[str, Any] | None = None,
           workers: list[Worker] | None = None) -> ResearchLoop:
    """The last unfinished run, ready to ``execute`` again: with the settings it started with
    except those in ``changed`` (names from RESUMABLE), its agent where it stopped (a mock
    agent's script continues), and what the killed loop left in flight closed as interrupted
    (an interrupted proposal is measured again, once: its slot in the budget was freed)."""
    run = store.last_unfinished_run()
    if run is None or run.id is None:
        raise UsageError("there is no unfinished run to resume")
    given = {k: v for k, v in (changed or {}).items() if v is not None}
    unknown = set(given) - set(RESUMABLE)
    if unknown:
        raise UsageError(f"a resumed run keeps its {', '.join(sorted(unknown))}")
    s = Settings.exactly(run.config).model_copy(update={
        "workspace": settings.workspace, "db": settings.db, "prices": settings.prices, **given})
    store.update_run(run.id, config=s.model_dump_json(exclude={"prices"}))
    done_calls = 0 if run.agent != "mock" else sum(
        1 for c in store.calls(run_id=run.id) if c.provider == "mock")
    agent = make_agent(run.agent, settings=s, notice=reporter.notice,
                       prompts_dir=ws.root / "prompts", start=done_calls,
                       model=run.model or None)
    check_cost_cap(s, agent)
    unfenced.check_loop(agent.name, s.sandbox)  # no Landlock: only with --no-sandbox
    pool = workers if workers is not None else make_workers(s, run.device, ws.experiments_dir)
    runner.kill_stale(ws.experiments_dir / runner.WARM_DIR)  # a killed loop's spares
    fields: dict[str, Any] = {"state": RunState.running, "stop_reason": None}
    if experiments is not None:
        fields["experiments_planned"] = experiments
    active = reopen(s, store, ws, reporter, store.update_run(run.id, **fields))
    redo: list[tuple[int, Proposal]] = []
    for exp in store.experiments(run_id=active.id):
        if is_done(exp):
            continue
        assert exp.id is not None
        runner.kill_stale(ws.exp_dir(exp.id))
        record.interrupted(active, exp.id, f"the loop stopped while it was {exp.status.value}")
        again = (exp.kind == ExperimentKind.candidate and exp.commit is not None
                 and bool(exp.proposal))
        if again:
            redo.append((exp.id, Proposal.model_validate_json(exp.proposal)))
        reporter.notice(f"experiment {exp.id} was in flight: closed as interrupted"
                        + ("; its proposal will be measured again" if again else ""))
    reporter.notice(f"resuming run {active.id}: {store.count_candidates(active.id)} of "
                    f"{active.run.experiments_planned} experiments done")
    return ResearchLoop(active, agent, pool, redo=redo)


def replay_once(settings: Settings, store: Store, ws: Workspace, reporter: Reporter,
                exp: Experiment, *, onto: str, seeds: int | None) -> dict[str, Any]:
    """``exp``'s diff measured again onto ``onto``, on one worker of the settings' backend."""
    run = store.get_run(exp.run_id)
    assert run is not None
    active = reopen(settings, store, ws, reporter, run)
    worker = make_workers(settings.model_copy(update={"workers": 1}), run.device,
                          ws.experiments_dir)[0]
    try:
        return replay(active, worker, exp, onto=onto, seeds=seeds)
    finally:
        worker.close()


def next_prompt(settings: Settings, store: Store, ws: Workspace, reporter: Reporter,
                run: Run) -> tuple[str, list[dict[str, str]]]:
    """The system prompt and messages a model agent would get next in ``run``, built exactly as
    the loop builds them (the run's settings, its champion, the store as it is now)."""
    from autoresearch.agents.prompts import prompts_dir, render_conversation
    from autoresearch.loop.context import build

    s = Settings.exactly(run.config).model_copy(update={
        "workspace": settings.workspace, "db": settings.db})
    if run.champion_experiment_id is None:
        raise UsageError(f"run {run.id} has no measured baseline yet: there is no prompt to show")
    active = reopen(s, store, ws, reporter, run)
    context = build(active, ws.read_files(run.champion_commit))
    own = ws.root / "prompts"
    return render_conversation(context, directory=own if own.is_dir() else prompts_dir())


def check_cost_cap(s: Settings, agent: Agent) -> None:
    """A cost cap needs the model's price in the settings' table: refuse before anything
    runs."""
    if s.max_cost is not None and agent.name in ("anthropic", "openai") and (
            price_of(agent.model, s.prices) is None):
        raise UsageError(f"--max-cost needs a price for model {agent.model!r}; add it under "
                         "[tool.autoresearch.prices] as \"model\" = [USD per M input tokens, "
                         "USD per M output tokens]")


def _warn_shared_cores(s: Settings, device: str, workers: list[Worker], reporter: Reporter
                       ) -> None:
    """Jobs side by side on shared CPU cores slow each other: under a wall-clock budget that
    becomes val_bpb. The keep rule still compares like with like (the champion re-measured
    alongside, on the same worker, while the others are as busy), but say so."""
    n = len(workers)
    if (n > 1 and device == "cpu" and s.token_budget is None
            and all(w.shares_host_cores for w in workers)):
        reporter.notice(
            f"note: {n} workers share this machine's CPU cores under a wall-clock "
            "budget: each job trains fewer steps than it would alone, and its val_bpb depends "
            "on what the other workers run; a promising candidate is confirmed against the "
            "champion re-measured alongside it, but --token-budget compares the code alone")
