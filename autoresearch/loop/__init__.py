"""The research loop.

A new run measures the baseline on every seed, then each experiment goes through six steps:
ask (the agent, with the run's history in its context), check (parse, guard, dry-run apply,
no duplicate), apply (commit in a worktree) — ``experiment.Proposer``, while workers train —
then measure (first seed, then confirmation seeds; under a time budget beside the champion
re-measured), judge (the keep rule, against the champion it was proposed on; ported onto a
champion that moved meanwhile) and record — ``experiment.trial``, on a worker. The scheduler
(``scheduler.ResearchLoop``) keeps every worker busy. Every state change is committed to the
store before the next step, so a loop killed at any moment resumes (``--resume``) with
nothing lost or doubled.

- ``active``: the run being worked on (start, resume, reopen) and its measure step
- ``context``: what the agent is shown
- ``experiment``: the steps of one experiment
- ``scheduler``: workers, pipelined proposals, stopping
- ``replay``: a stored diff measured again on another base
"""

from __future__ import annotations

from pathlib import Path

from autoresearch import runner
from autoresearch.agents.base import Agent
from autoresearch.config import Settings
from autoresearch.jobs import Worker, cpu_cores, local_workers
from autoresearch.loop.active import ActiveRun, LoopStopped, Reporter, reopen, resume, start
from autoresearch.loop.context import HISTORY_RECENT, log_tail
from autoresearch.loop.replay import replay
from autoresearch.loop.scheduler import BaselineFailed, ResearchLoop
from autoresearch.store import Store
from autoresearch.workspace import Workspace

__all__ = [
    "HISTORY_RECENT", "ActiveRun", "BaselineFailed", "LoopStopped", "Reporter", "ResearchLoop",
    "begin", "cpu_cores", "log_tail", "make_workers", "reopen", "replay", "resume", "start",
]


def begin(settings: Settings, store: Store, ws: Workspace, agent: Agent, reporter: Reporter,
          experiments: int, workers: list[Worker] | None = None) -> ResearchLoop:
    """A new run, ready to ``execute``: on ``workers`` (default: what the settings ask for)."""
    pool = workers if workers is not None else make_workers(
        settings, runner.resolve_device(settings.device), ws.experiments_dir)
    active = start(settings, store, ws, reporter, agent=agent.name, model=agent.model,
                   experiments=experiments, workers=pool)
    return ResearchLoop(active, agent, pool)


def make_workers(settings: Settings, device: str, folder: Path) -> list[Worker]:
    """The workers ``--workers``, ``--gpu`` and ``--backend`` ask for."""
    if settings.backend == "ray":
        from autoresearch.ray_backend import ray_workers

        n = settings.workers or 1
        threads = None if device.startswith("cuda") or n == 1 else max(1, cpu_cores() // n)
        return list(ray_workers(settings.ray_address, n, device=device, threads=threads,
                                folder=folder))
    return list(local_workers(folder, device, settings.workers, settings.gpu))
