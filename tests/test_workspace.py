"""Workspace and research repo: real git, real worktrees."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoresearch.errors import UsageError
from autoresearch.workspace import ApplyConflict, Workspace, WorkspaceError, init_workspace


def test_init_creates_a_workspace_and_refuses_to_overwrite_user_changes(tmp_path: Path) -> None:
    ws_dir = tmp_path / "ws"
    written = init_workspace(ws_dir)
    assert "baseline/train.py" in written and "prompts/system.md" in written
    assert init_workspace(ws_dir) == []  # a second init is harmless
    train = ws_dir / "baseline" / "train.py"
    train.write_text(train.read_text() + "\n# my change\n")
    with pytest.raises(UsageError, match=r"baseline/train\.py"):
        init_workspace(ws_dir)
    assert train.read_text().endswith("# my change\n")


def test_a_folder_without_baseline_is_not_a_workspace(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="autoresearch init"):
        Workspace(tmp_path)


def _ws(tmp_path: Path, source: str = "LR = 1\n") -> Workspace:
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "train.py").write_text(source)
    return Workspace(tmp_path)


def test_baseline_commit_is_idempotent_and_tracks_changes(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    first = ws.commit_baseline()
    assert ws.commit_baseline() == first
    (tmp_path / "baseline" / "train.py").write_text("LR = 2\n")
    second = ws.commit_baseline()
    assert second != first
    assert ws.read_files(second) == {"train.py": "LR = 2\n"}


def test_keep_fast_forwards_the_run_branch_and_discard_leaves_it(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    base = ws.commit_baseline()
    ws.create_branch("run/1", base)
    wt = ws.create_worktree(7, base, branch="exp/7")
    commit, diff = ws.commit_files(wt, {"train.py": "LR = 3\n"}, "raise lr")
    assert "-LR = 1" in diff and "+LR = 3" in diff
    ws.pin(7, commit)
    ws.remove_worktree(7, "exp/7", delete_branch=True)
    assert not wt.exists()
    assert "exp/7" not in [h.name for h in ws.repo.heads]
    # the pinned commit survives its branch: it can still be kept, exported and replayed
    ws.advance("run/1", commit)
    assert ws.repo.commit("run/1").hexsha == commit
    assert "+LR = 3" in ws.format_patch(commit)


def test_advance_refuses_anything_but_a_fast_forward(tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    base = ws.commit_baseline()
    ws.create_branch("run/1", base)
    a = ws.commit_files(ws.create_worktree(1, base, "exp/1"), {"train.py": "LR = 4\n"}, "a")[0]
    b = ws.commit_files(ws.create_worktree(2, base, "exp/2"), {"train.py": "LR = 5\n"}, "b")[0]
    ws.advance("run/1", a)
    with pytest.raises(WorkspaceError, match="does not descend"):
        ws.advance("run/1", b)


def test_a_stored_diff_applies_onto_a_moved_champion(tmp_path: Path) -> None:
    ws = _ws(tmp_path, "A = 1\nB = 1\nC = 1\nD = 1\nE = 1\n")
    base = ws.commit_baseline()
    _, diff = ws.commit_files(ws.create_worktree(1, base, "exp/1"),
                              {"train.py": "A = 2\nB = 1\nC = 1\nD = 1\nE = 1\n"}, "a")
    moved, _ = ws.commit_files(ws.create_worktree(2, base, "exp/2"),
                               {"train.py": "A = 1\nB = 1\nC = 1\nD = 1\nE = 9\n"}, "e")
    wt = ws.create_worktree(3, moved, branch=None)
    ws.apply_diff(wt, diff)
    assert (wt / "train.py").read_text() == "A = 2\nB = 1\nC = 1\nD = 1\nE = 9\n"
    wt4 = ws.create_worktree(4, moved, branch=None)
    (wt4 / "train.py").write_text("nothing alike\n")
    ws.commit_files(wt4, {"train.py": "nothing alike\n"}, "other")
    with pytest.raises(ApplyConflict, match="does not apply"):
        ws.apply_diff(wt4, diff)
