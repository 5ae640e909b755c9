"""The validation text may not travel in a proposal: the index, the views of a source, and the
refusal through a real loop (mock agent, real git, SQLite and training subprocesses)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import generated_text
from typer.testing import CliRunner

from autoresearch import data, leak
from autoresearch.agents.prompts import render_conversation
from autoresearch.cli import app
from autoresearch.guard import GuardViolation
from autoresearch.models import Context
from autoresearch.store import Store
from autoresearch.workspace import init_workspace

HERE = Path(__file__).parent
LOOP_SOURCE = HERE / "loop_source" / "train.py"
ANCHOR = "LEARNING_RATE = 1e-5"


def _poly(b: bytes) -> int:
    h = 0
    for c in b:
        h = (h * leak._P + c + 1) & leak._MASK
    return h


@pytest.mark.parametrize("window", [1, 3, 7, 63, 64, 65, 100])
def test_window_hashes_are_the_polynomial_hash_of_each_window(window: int) -> None:
    rng = random.Random(window)
    text = bytes(rng.randrange(256) for _ in range(300))
    got = leak.window_hashes(np.frombuffer(text, dtype=np.uint8), window)
    assert [int(h) for h in got] == [_poly(text[i:i + window])
                                     for i in range(len(text) - window + 1)]
    assert len(leak.window_hashes(np.frombuffer(text[:window - 1], dtype=np.uint8), window)) == 0


def test_find_reports_64_bytes_of_the_split_where_they_are_and_not_63() -> None:
    val = generated_text(20_000, seed=3).encode()
    index = leak.LeakIndex(val)
    at = 12_345
    assert index.find(b"xx" + val[at:at + 64] + b"yy") == (at, val[at:at + 64].decode())
    assert index.find(b"xx" + val[at:at + 63] + b"\x00") is None
    # the whole run is reported, from where it starts to where it ends
    hits = list(index.hits(b"\x00" * 10 + val[at:at + 200] + b"\x01" + val[100:180]))
    assert [(h.val_offset, h.text_offset, h.length) for h in hits] == [
        (at, 10, 200), (100, 211, 80)]
    # text of the same kind, not from the split, is not a hit
    assert index.find(generated_text(20_000, seed=4).encode()) is None


@pytest.fixture(scope="module")
def val_data(tmp_path_factory: pytest.TempPathFactory) -> data.PreparedData:
    root = tmp_path_factory.mktemp("leakdata")
    src = root / "words.txt"
    src.write_text(generated_text(60_000, seed=5), encoding="utf-8")
    return data.prepare(str(src), cache=root / "cache")


def _val(d: data.PreparedData) -> str:
    return (d.path / "val.bin").read_bytes().decode()


def _short_lines(val: str, n: int) -> str:
    """``n`` characters of ``val`` spanning lines, each shorter than the window: found only
    when the form the text hides in is read back (a repr, comments, numbers)."""
    for i in range(len(val) - n):
        text = val[i:i + n]
        if text.count("\n") >= 2 and all(len(line) < 50 for line in text.split("\n")):
            return text
    raise AssertionError("no such run")


BASE = f"import torch\n\n{ANCHOR}\n\n\ndef train(run):\n    return torch.nn.Linear(1, 1)\n"


@pytest.mark.parametrize(("make", "where"), [
    (lambda t: f"MEMO = {t!r}\n", "in string literals"),  # escapes: \n in the source
    (lambda t: "MEMO = (" + " ".join(repr(t[i:i + 5]) for i in range(0, len(t), 5)) + ")\n",
     "in string literals"),  # split over many literals
    (lambda t: "MEMO = ''.join([" + ", ".join(repr(c) for c in t) + "])\n", "in string literals"),
    (lambda t: "".join(f"# {line}\n" for line in t.split("\n")), "in comments"),
    (lambda t: f"MEMO = bytes({list(t.encode())})\n", "in integer literals read as bytes"),
    (lambda t: f'MEMO = """{t}"""\n', "in the source"),
])
def test_text_of_the_split_hidden_by_simple_means_is_found(
        val_data: data.PreparedData, make, where: str) -> None:  # type: ignore[no-untyped-def]
    text = _short_lines(_val(val_data), 100)
    new = BASE.replace(ANCHOR, ANCHOR + "\n" + make(text))
    with pytest.raises(leak.ValidationLeak) as err:
        leak.check_files(val_data, {"train.py": BASE}, {"train.py": new})
    e = err.value
    assert isinstance(e, GuardViolation) and e.rule == "validation-text"
    assert where in e.message and "validation split" in e.message and e.line is not None
    assert e.length >= 100 and text in _val(val_data)[e.offset:e.offset + e.length]


def test_a_run_the_file_already_had_is_not_counted_and_63_bytes_pass(
        val_data: data.PreparedData) -> None:
    val = _val(val_data)
    old = BASE.replace(ANCHOR, ANCHOR + f"\nOLD = {val[1000:1100]!r}")
    # an unrelated edit to a file that already held a run (a corpus that shares text with
    # the baseline must not refuse every proposal)
    leak.check_files(val_data, {"train.py": old}, {"train.py": old.replace("1e-5", "3e-2")})
    # extending the run it held is new text of the split
    longer = old.replace(f"OLD = {val[1000:1100]!r}", f"OLD = {val[1000:1110]!r}")
    with pytest.raises(leak.ValidationLeak):
        leak.check_files(val_data, {"train.py": old}, {"train.py": longer})
    # 63 bytes in a row are allowed, 64 are not
    snippet = next(val[i:i + 64] for i in range(3000, 4000)
                   if val[i - 1] == "\n" and val[i + 64] == "\n")
    for n, refused in ((63, False), (64, True)):
        new = BASE.replace(ANCHOR, ANCHOR + f"\nMEMO = {snippet[:n]!r}")
        try:
            leak.check_files(val_data, {"train.py": BASE}, {"train.py": new})
            assert not refused, n
        except leak.ValidationLeak:
            assert refused, n


def test_the_index_is_built_once_per_dataset(val_data: data.PreparedData) -> None:
    leak._index.cache_clear()
    first = leak.index_for(val_data)
    assert leak.index_for(val_data) is first
    assert leak._index.cache_info().misses == 1


def test_the_agent_is_told_that_validation_text_is_refused() -> None:
    # the rules are generated (autoresearch/contract.py): the rendered system prompt says it
    text, _ = render_conversation(Context(files={"train.py": ""}))
    assert f"{leak.WINDOW} bytes" in text and "validation" in text and "refused" in text


# -- through a real loop ------------------------------------------------------------------------


def _memo(snippet: str, title: str) -> dict[str, object]:
    return {"title": title, "rationale": "keep some text around",
            "edits": [{"path": "train.py", "search": ANCHOR,
                       "replace": f"{ANCHOR}\nMEMO = {snippet!r}"}]}


def test_a_proposal_pasting_validation_text_is_refused_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    ws = tmp_path / "ws"
    init_workspace(ws)
    shutil.copy(LOOP_SOURCE, ws / "baseline" / "train.py")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(generated_text(60_000, seed=6), encoding="utf-8")
    prepared = data.prepare(str(corpus), cache=cache)  # what the loop will prepare
    val = _val(prepared)
    snippet = next(val[i:i + 64] for i in range(2000, 4000)
                   if val[i - 1] == "\n" and val[i + 64] == "\n")
    base = {"train.py": LOOP_SOURCE.read_text()}
    for n in (63, 64):  # the proposals' files, checked as the loop will
        edit = _memo(snippet[:n], "")["edits"][0]  # type: ignore[index]
        files = {"train.py": base["train.py"].replace(ANCHOR, edit["replace"])}
        assert (leak.find_added(leak.index_for(prepared), "train.py", base["train.py"],
                                files["train.py"]) is None) == (n == 63)
    script = tmp_path / "s.jsonl"
    script.write_text("\n".join(json.dumps(e) for e in (
        _memo(snippet, "paste 64 bytes"), _memo(snippet[:63], "paste 63 bytes"))))
    result = CliRunner().invoke(app, [
        "--workspace", str(ws), "loop", "--agent", "mock", "--script", str(script),
        "--token-budget", "6000", "--seeds", "1", "--device", "cpu", "--dataset", str(corpus),
        "--repairs", "0", "--budget", "2"])
    assert result.exit_code == 0, result.output

    store = Store(ws / "results.db")
    base, pasted, short = store.experiments(run_id=1)
    assert pasted.status.value == "rejected" and pasted.commit is None
    assert "[validation-text]" in pasted.reason and "64 bytes" in pasted.reason
    assert not store.measurements(pasted.id)  # nothing trained
    told = json.loads((ws / "experiments" / str(pasted.id) / "proposal.json").read_text())
    assert "validation split" in told["message"] and snippet[:20] in told["message"]
    history, _ = store.history(1, recent=10)
    assert any("[validation-text]" in (h.reason or "") for h in history)  # what the agent sees
    assert short.status.value in ("kept", "discarded") and store.measurements(short.id)

    # replay runs the same check on the diff it applies (here with a shorter window, so the
    # stored 63-byte paste counts)
    monkeypatch.setattr(leak, "WINDOW", 32)
    result = CliRunner().invoke(app, ["--workspace", str(ws), "replay", str(short.id),
                                      "--onto", "baseline"])
    assert result.exit_code == 2 and "validation-text" in result.output, result.output
    replayed = store.experiments(run_id=1)[-1]
    assert replayed.kind == "replay" and replayed.status.value == "rejected"
    assert not store.measurements(replayed.id)
    store.close()
