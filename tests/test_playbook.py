"""The playbook agent: every catalogue entry against the shipped baseline, and its policy.

The catalogue test trains each primary entry for a few steps of the CPU preset through the real
runner (train process, export, evaluation with the causality probe), two at a time. The policy
tests are pure: Context objects in, proposals out.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoresearch import edits, guard, runner
from autoresearch.agents import AgentExhausted, make_agent
from autoresearch.agents.llm import KEY_VARS, choose_auto
from autoresearch.agents.playbook import CATALOGUE, PlaybookAgent, policy, proposal_for
from autoresearch.agents.playbook.catalogue import BY_ID, PRIMARY, Entry
from autoresearch.cli import app
from autoresearch.config import Settings
from autoresearch.data import PreparedData
from autoresearch.metrics import Budget, Metrics, RunStatus
from autoresearch.models import Context, HistoryItem, Stats
from autoresearch.workspace import bundled

BASELINE = (bundled("baseline") / "train.py").read_text(encoding="utf-8")
FILES = {"train.py": BASELINE}
TOKENS = Budget(kind="tokens", amount=4096)  # four steps of the CPU preset


def test_the_catalogue_is_large_unique_and_documented() -> None:
    assert len(PRIMARY) >= 20
    assert len({e.id for e in CATALOGUE}) == len(CATALOGUE)
    assert len({e.full_title for e in CATALOGUE}) == len(CATALOGUE)
    for e in CATALOGUE:
        assert e.title and e.rationale and e.origin, e.id
        for parent in (e.after_win, e.after_loss):
            assert parent is None or parent in BY_ID, e.id


@pytest.mark.parametrize("entry", [e for e in CATALOGUE if e.follow_up], ids=lambda e: e.id)
def test_a_follow_up_applies_once_its_parent_did(entry: Entry) -> None:
    parent = BY_ID[entry.after_win or entry.after_loss or ""]
    files = dict(FILES)
    if entry.after_win:  # a next step edits the champion that holds its parent's change
        first = proposal_for(parent, files)
        assert first is not None
        files = edits.apply_edits(files, first.edits)
    proposal = proposal_for(entry, files)
    assert proposal is not None, f"{entry.id} does not apply after {parent.id}"
    guard.check_source("train.py", edits.apply_edits(files, proposal.edits)["train.py"])


@pytest.fixture(scope="module")
def trained(prepared_data: PreparedData, tmp_path_factory: pytest.TempPathFactory,
            ) -> dict[str, Metrics]:
    """Every primary entry applied to the baseline and trained for four steps, two at a time."""
    root = tmp_path_factory.mktemp("playbook")

    def one(entry: Entry) -> tuple[str, Metrics]:
        proposal = proposal_for(entry, FILES)
        assert proposal is not None, f"{entry.id} does not apply to the baseline"
        src = root / entry.id / "src"
        src.mkdir(parents=True)
        (src / "train.py").write_text(edits.apply_edits(FILES, proposal.edits)["train.py"])
        return entry.id, runner.measure(runner.Job(
            source=src, data=prepared_data.path, budget=TOKENS, seed=0, device="cpu",
            out_dir=root / entry.id / "out"))

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, PRIMARY))


@pytest.mark.parametrize("entry", PRIMARY, ids=lambda e: e.id)
@pytest.mark.slow  # every playbook entry trains
def test_an_entry_applies_to_the_baseline_passes_the_guard_and_trains_causally(
        entry: Entry, trained: dict[str, Metrics]) -> None:
    proposal = proposal_for(entry, FILES)
    assert proposal is not None
    assert proposal.title.startswith(f"[{entry.id}] ")
    for edit in proposal.edits:  # each SEARCH matches exactly once, in order
        assert edit.search is not None and edit.search.strip()
    new = edits.apply_edits(FILES, proposal.edits)["train.py"]
    assert new != BASELINE
    guard.check_source("train.py", new)
    m = trained[entry.id]
    assert m.status == RunStatus.ok, m.error
    assert m.causal_ok is True and m.train_tokens == TOKENS.amount


def _namespace(source: str) -> dict[str, object]:
    ns: dict[str, object] = {}
    exec(compile(source, "train.py", "exec"), ns)  # our own catalogue's code, not an agent's
    return ns


def test_muon_orthogonalises_a_stack_of_matrices_at_once() -> None:
    # the batched Newton-Schulz gives each matrix of a stack what it would get alone, and
    # pushes its singular values towards 1 (wide and tall stacks alike)
    torch = pytest.importorskip("torch")
    muon = proposal_for(BY_ID["muon"], FILES)
    assert muon is not None
    orthogonalize = _namespace(edits.apply_edits(FILES, muon.edits)["train.py"])["orthogonalize"]
    gen = torch.Generator().manual_seed(0)
    for shape in ((3, 16, 48), (3, 48, 16)):
        g = torch.randn(*shape, generator=gen)
        together = orthogonalize(g, 5)  # type: ignore[operator]
        for i in range(shape[0]):
            alone = orthogonalize(g[i:i + 1], 5)[0]  # type: ignore[operator]
            assert torch.allclose(together[i], alone, atol=1e-5)
        sv = torch.linalg.svdvals(together)
        assert sv.min() > 0.5 and sv.max() < 1.5


def test_muon_takes_fewer_newton_schulz_steps_on_the_cpu() -> None:
    cpu, cuda = (proposal_for(BY_ID["muon"], FILES, device) for device in ("cpu", "cuda"))
    assert cpu is not None and cuda is not None
    assert "MUON_STEPS = 3" in edits.apply_edits(FILES, cpu.edits)["train.py"]
    assert "MUON_STEPS = 5" in edits.apply_edits(FILES, cuda.edits)["train.py"]


def test_one_thread_is_a_cpu_knob() -> None:
    one = proposal_for(BY_ID["one-thread"], FILES)
    assert one is not None
    ns = _namespace(edits.apply_edits(FILES, one.edits)["train.py"])
    assert ns["CPU"]["THREADS"] == 1 and ns["CUDA"]["THREADS"] == 0  # type: ignore[index]
    assert proposal_for(BY_ID["one-thread"], FILES, "cuda") is None


# -- policy ----------------------------------------------------------------------------------


def _item(n: int, tag: str, status: str, delta: float | None) -> HistoryItem:
    return HistoryItem(id=n, title=f"[{tag}] {BY_ID[tag].title}", status=status, delta=delta)


def _context(files: dict[str, str], *history: HistoryItem) -> Context:
    return Context(files=files, champion=Stats(mean=2.5, std=0.02, n=3), history=list(history))


def _tag(agent: PlaybookAgent, context: Context) -> str:
    answer = agent.propose(context)
    assert answer.proposal is not None and answer.calls == []
    return answer.proposal.title.split("]")[0][1:]


def test_it_never_repeats_a_tried_idea_and_ends_when_none_is_left() -> None:
    agent = PlaybookAgent()
    history: list[HistoryItem] = []
    seen = []
    while True:
        try:
            tag = _tag(agent, _context(FILES, *history))
        except AgentExhausted:
            break
        assert tag not in seen
        seen.append(tag)
        # everything is discarded as "a little worse" except that it failed to crash; the
        # champion never moves, so every primary entry gets its turn, and each reverse once
        history.append(_item(len(history) + 1, tag, "discarded", 0.01))
    assert set(seen) >= {e.id for e in PRIMARY if not e.cpu_bf16}
    reverses = {e.id for e in CATALOGUE if e.after_loss}
    assert reverses <= set(seen)
    assert not any(BY_ID[t].after_win for t in seen)  # nothing won, so no next steps


def test_the_first_proposal_is_the_highest_prior() -> None:
    best = max((e for e in PRIMARY if not e.cpu_bf16), key=lambda e: e.prior)
    assert _tag(PlaybookAgent(), _context(FILES)) == best.id


def test_a_win_is_followed_by_its_next_step() -> None:
    agent = PlaybookAgent()
    first = proposal_for(BY_ID["lr-down"], FILES)
    assert first is not None
    champion = edits.apply_edits(FILES, first.edits)
    ctx = _context(champion, _item(1, "muon", "discarded", 0.03),
                   _item(2, "lr-down", "kept", -0.05))
    answer = agent.propose(ctx)
    assert answer.proposal is not None and answer.proposal.title.startswith("[lr-down-2]")
    new = edits.apply_edits(champion, answer.proposal.edits)["train.py"]
    assert "LR=0.00267," in new  # 6e-3 -> 4e-3 -> 2.67e-3: the same direction again


def test_a_loss_is_tried_the_other_way_once() -> None:
    agent = PlaybookAgent()
    lost = _item(1, "batch-down", "discarded", 0.04)
    answer = agent.propose(_context(FILES, lost))
    assert answer.proposal is not None and answer.proposal.title.startswith("[batch-up]")
    assert "BATCH_SIZE=8," in edits.apply_edits(FILES, answer.proposal.edits)["train.py"]
    # the reverse lost too: neither direction is tried again
    again = _context(FILES, lost, _item(2, "batch-up", "discarded", 0.02))
    tags = set()
    for _ in range(60):
        try:
            tag = _tag(agent, again)
        except AgentExhausted:
            break
        tags.add(tag)
        again.history.append(_item(len(again.history) + 1, tag, "discarded", 0.01))
    assert not tags & {"batch-down", "batch-up", "batch-down-2", "batch-up-2"}


def test_an_improvement_too_small_to_keep_is_neither_a_win_nor_a_loss() -> None:
    ctx = _context(FILES, _item(1, "lr-down", "discarded", -0.001))
    tag = _tag(PlaybookAgent(), ctx)
    assert tag not in ("lr-down-2", "lr-up", "lr-down")


def test_results_reorder_the_rest_by_family() -> None:
    # a crash of Muon sinks the rest of its family (optimizer) below entries with a smaller
    # prior; a win of ReLU² lifts the rest of its family (mlp) above them
    before = [e.id for e in policy.ranked(CATALOGUE, _context(FILES))]
    after = [e.id for e in policy.ranked(CATALOGUE, _context(
        FILES, _item(1, "muon", "crashed", None), _item(2, "relu2", "discarded", -0.2)))]
    assert "muon" not in after and "relu2" not in after
    below = [e.id for e in PRIMARY if BY_ID["adam-betas"].prior > e.prior > 0]
    assert below and all(after.index("adam-betas") > after.index(x) for x in below)
    assert before.index("swiglu") > before.index("wsd") > after.index("swiglu")


def test_entries_that_no_longer_apply_are_skipped() -> None:
    # the champion already has a SwiGLU MLP (not by the playbook): relu2 and swiglu no longer
    # find the GELU MLP and are skipped, never sent as a broken edit
    swiglu = proposal_for(BY_ID["swiglu"], FILES)
    assert swiglu is not None
    champion = edits.apply_edits(FILES, swiglu.edits)
    agent = PlaybookAgent()
    history: list[HistoryItem] = []
    seen = set()
    while True:
        try:
            answer = agent.propose(_context(champion, *history))
        except AgentExhausted:
            break
        assert answer.proposal is not None
        edits.apply_edits(champion, answer.proposal.edits)  # applies cleanly
        tag = answer.proposal.title.split("]")[0][1:]
        seen.add(tag)
        history.append(_item(len(history) + 1, tag, "discarded", 0.01))
    assert "relu2" not in seen and "swiglu" not in seen and "muon" in seen


def test_a_repair_moves_on_to_the_next_idea() -> None:
    agent = PlaybookAgent()
    ctx = _context(FILES)
    first = agent.propose(ctx)
    assert first.proposal is not None
    repair = ctx.model_copy(update={"repair": "Edit 1 of 1: SEARCH not found",
                                    "previous_answer": first.proposal.model_dump_json(indent=1)})
    second = agent.propose(repair)
    assert second.proposal is not None and second.proposal.title != first.proposal.title
    assert agent.propose(ctx).proposal.title != first.proposal.title  # type: ignore[union-attr]


def test_nothing_applies_to_a_foreign_source() -> None:
    with pytest.raises(AgentExhausted, match="no idea left"):
        PlaybookAgent().propose(Context(files={"train.py": "def train(run):\n    pass\n"}))


# -- auto ------------------------------------------------------------------------------------


def test_auto_without_a_key_is_the_playbook(tmp_path: Path) -> None:
    assert choose_auto({})[0] == "playbook"
    assert choose_auto({KEY_VARS["openai"]: "k"})[0] == "openai"
    notices: list[str] = []
    agent = make_agent("auto", settings=Settings(), notice=notices.append)
    assert agent.name == "playbook" and "playbook" in notices[0]


def test_the_loop_with_auto_and_no_key_runs_the_playbook(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import generated_text

    for var in KEY_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(generated_text(60_000), encoding="utf-8")
    ws = tmp_path / "ws"
    result = CliRunner().invoke(app, ["--workspace", str(ws), "init"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, [
        "--workspace", str(ws), "loop", "--budget", "1", "--seeds", "1", "--token-budget",
        "4096", "--device", "cpu", "--dataset", str(corpus)])
    assert result.exit_code == 0, result.output
    assert "agent: playbook" in result.output
    result = CliRunner().invoke(app, ["--workspace", str(ws), "history", "--json"])
    rows = json.loads(result.stdout)
    candidate = [r for r in rows if r["title"] != "baseline"]
    first = max((e for e in PRIMARY if not e.cpu_bf16), key=lambda e: e.prior)
    assert len(candidate) == 1 and candidate[0]["title"].startswith(first.tag)
    assert candidate[0]["status"] in ("kept", "discarded")
