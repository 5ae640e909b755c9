"""Runs measured without the OS sandbox: refused for a real model's code unless the user says
so, and marked wherever their results are shown.

Without Landlock (macOS, old kernels, containers without it) the training process runs the
model's code as the user: it could search the disk for the validation split. A loop whose
proposals come from a real model (anthropic, openai) therefore refuses to start there unless
the user passes ``--no-sandbox``, accepting that. The mock and playbook agents are not refused:
their code is ours.

Each measurement records its ``sandbox`` (in its stored metrics): ``landlock vN``, ``none
(...)`` or ``off``. The last two are *unfenced*; ``show``, ``history``, ``runs`` and the
dashboard say so beside every such result.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from autoresearch import sandbox
from autoresearch.errors import UsageError
from autoresearch.store import Experiment, Measurement, Store

MODEL_AGENTS = ("anthropic", "openai")  # agents whose code is a model's, not ours


def check_loop(agent: str, sandbox_on: bool) -> None:
    """Refuse a loop of a real model's code on a machine without Landlock, unless the user
    turned the sandbox off (``--no-sandbox``) and so accepted running it unfenced."""
    if agent in MODEL_AGENTS and sandbox_on and sandbox.abi() == 0:
        raise UsageError(
            f"this system has no Landlock sandbox, so the {agent} model's code would train "
            "unfenced (able to read any file you can, the validation split included); pass "
            "--no-sandbox to accept that (every result is then marked unfenced), or run on "
            "Linux 5.13+ with Landlock enabled")


def is_unfenced(state: str | None) -> bool:
    """Whether a measurement's recorded sandbox is no fence ("off", "none (...)"); an empty
    value (a measurement older than the sandbox) is not claimed either way."""
    return bool(state) and (state == "off" or str(state).startswith("none"))


def _state() -> Any:
    return func.json_extract(col(Measurement.metrics), "$.sandbox")


def unfenced_experiments(store: Store, ids: Iterable[int]) -> set[int]:
    """Which of these experiments have a measurement that ran unfenced."""
    wanted = list(ids)
    if not wanted:
        return set()
    with Session(store.engine) as s:
        q = (select(Measurement.experiment_id, _state())
             .where(col(Measurement.experiment_id).in_(wanted)))
        return {int(e) for e, state in s.exec(q) if is_unfenced(state)}


def run_unfenced(store: Store, run_id: int) -> int:
    """How many of a run's measurements ran unfenced."""
    with Session(store.engine) as s:
        q = (select(_state())
             .join(Experiment, col(Experiment.id) == col(Measurement.experiment_id))
             .where(Experiment.run_id == run_id))
        return sum(1 for state in s.exec(q) if is_unfenced(state))


def note(count: int) -> str:
    """The words shown beside a result with ``count`` unfenced measurements ('' for none)."""
    if not count:
        return ""
    return (f"UNFENCED: {count} measurement{'s' if count > 1 else ''} ran without the sandbox "
            "(the training code could read any file, the validation split included)")
