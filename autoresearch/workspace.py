"""The workspace on disk and its research git repository.

```
<workspace>/baseline/       the editable source a new run starts from (train.py)
<workspace>/prompts/        templates rendered for the agent
<workspace>/results.db      the store
<workspace>/experiments/repo/          the research git repo; branch "baseline" holds baseline/
<workspace>/experiments/<id>/          one experiment: worktree/, proposal.json, diff.patch,
                                       seed-<n>/run.log, seed-<n>/metrics.json
```

Each run has a branch ``run/<run id>`` whose head is the run's champion. Each experiment gets a
worktree on branch ``exp/<id>`` from the champion commit; keeping it fast-forwards the run
branch to the experiment's commit, discarding it removes the worktree and the branch.
"""

from __future__ import annotations

import contextlib
import filecmp
import functools
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import git

import autoresearch
from autoresearch.errors import AutoresearchError, UsageError

BASELINE_BRANCH = "baseline"
_AUTHOR = git.Actor("autoresearch", "autoresearch@localhost")
# the same identity for the commits made with git's command line
_IDENTITY = {f"GIT_{who}_{what.upper()}": getattr(_AUTHOR, what)
             for who in ("AUTHOR", "COMMITTER") for what in ("name", "email")}


class WorkspaceError(AutoresearchError):
    pass


class ApplyConflict(WorkspaceError):
    """A stored diff that does not apply onto a base, even three-way."""


@dataclass(frozen=True)
class Applied:
    """A change committed onto a base in an experiment's worktree."""

    commit: str
    diff: str  # the commit against its base
    files: dict[str, str]  # the editable files as committed
    wt: Path


def bundled(name: str) -> Path:
    """A folder shipped with the package (wheel) or, in a checkout, the top-level one."""
    pkg = Path(autoresearch.__file__).resolve().parent
    for candidate in (pkg / "_bundled" / name, pkg.parent / name):
        if candidate.is_dir():
            return candidate
    raise WorkspaceError(f"the package's {name}/ folder is missing; reinstall autoresearch")


def init_workspace(path: Path) -> list[str]:
    """Create (or complete) a workspace at ``path``; never overwrite a file the user changed.

    Returns the relative paths written. A file that exists with different content is left
    alone and reported as an error, unless it is identical (then it is simply skipped).
    """
    path.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    conflicts: list[str] = []
    for name in ("baseline", "prompts"):
        src_dir = bundled(name)
        for src in sorted(src_dir.rglob("*")):
            if not src.is_file() or "__pycache__" in src.parts:
                continue
            rel = src.relative_to(src_dir.parent)
            dst = path / rel
            if dst.exists():
                if not filecmp.cmp(src, dst, shallow=False):
                    conflicts.append(str(rel))
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            written.append(str(rel))
    (path / "experiments").mkdir(exist_ok=True)
    gitignore = path / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("results.db\nresults.db-*\nexperiments/\n", encoding="utf-8")
        written.append(".gitignore")
    if conflicts:
        raise UsageError(
            f"{path} already has changed files, left as they are: {', '.join(conflicts)}"
        )
    return written


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    @functools.wraps(method)
    def wrapper(self: Workspace, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)
    return cast(_F, wrapper)


class Workspace:
    def __init__(self, root: Path, editable: list[str] | None = None) -> None:
        self.root = root.resolve()
        self.editable = editable or ["train.py"]
        if not (self.root / "baseline").is_dir():
            raise UsageError(
                f"{self.root} is not a workspace (no baseline/ folder); "
                f"create one with: autoresearch init {root}"
            )
        self.experiments_dir = self.root / "experiments"
        self.repo_dir = self.experiments_dir / "repo"
        self._repo: git.Repo | None = None
        self.lock = threading.RLock()  # a loop's workers share the repo: one git step at a time

    # -- the research repository ------------------------------------------------------------
    @property
    def repo(self) -> git.Repo:
        if self._repo is None:
            self._repo = self._open_or_create_repo()
        return self._repo

    def _open_or_create_repo(self) -> git.Repo:
        if (self.repo_dir / ".git").exists():
            return git.Repo(self.repo_dir)
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        repo = git.Repo.init(self.repo_dir, initial_branch=BASELINE_BRANCH)
        with repo.config_writer() as cw:
            cw.set_value("user", "name", "autoresearch")
            cw.set_value("user", "email", "autoresearch@localhost")
            cw.set_value("commit", "gpgsign", "false")
        return repo

    def baseline_files(self) -> dict[str, str]:
        files = {}
        for rel in self.editable:
            p = self.root / "baseline" / rel
            if not p.is_file():
                raise UsageError(f"baseline/{rel} is missing from workspace {self.root}")
            files[rel] = p.read_text(encoding="utf-8")
        return files

    @_locked
    def commit_baseline(self) -> str:
        """Commit the workspace's baseline/ to the baseline branch (if it changed); its sha."""
        repo = self.repo
        files = self.baseline_files()
        for rel, text in files.items():
            dst = self.repo_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text, encoding="utf-8")
        repo.index.add(list(files))
        if repo.head.is_valid() and not repo.index.diff("HEAD"):
            return repo.head.commit.hexsha
        c = repo.index.commit("baseline", author=_AUTHOR, committer=_AUTHOR)
        return c.hexsha

    @_locked
    def read_files(self, commit: str) -> dict[str, str]:
        c = self.repo.commit(commit)
        out = {}
        for rel in self.editable:
            try:
                out[rel] = (c.tree / rel).data_stream.read().decode("utf-8")
            except KeyError:
                out[rel] = ""
        return out

    @_locked
    def resolve(self, ref: str) -> str:
        try:
            return self.repo.commit(ref).hexsha
        except (git.BadName, ValueError) as e:
            raise UsageError(f"unknown git ref {ref!r} in {self.repo_dir}") from e

    # -- branches ---------------------------------------------------------------------------
    @staticmethod
    def run_branch(run_id: int) -> str:
        return f"run/{run_id}"

    @_locked
    def create_branch(self, name: str, commit: str) -> None:
        self.repo.git.branch("-f", name, commit)

    @_locked
    def advance(self, branch: str, commit: str) -> None:
        """Fast-forward ``branch`` to ``commit`` (refuses anything that is not a fast-forward)."""
        head = self.repo.commit(branch).hexsha
        if not self.repo.is_ancestor(head, commit):  # type: ignore[arg-type]
            raise WorkspaceError(f"{commit[:10]} does not descend from {branch} ({head[:10]})")
        self.repo.git.update_ref(f"refs/heads/{branch}", commit, head)

    # -- experiments ------------------------------------------------------------------------
    def exp_dir(self, exp_id: int) -> Path:
        return self.experiments_dir / str(exp_id)

    def worktree_path(self, exp_id: int, name: str = "worktree") -> Path:
        return self.exp_dir(exp_id) / name

    @_locked
    def create_worktree(self, exp_id: int, base: str, branch: str | None,
                        name: str = "worktree") -> Path:
        """A fresh worktree for an experiment: on ``branch`` from ``base``, or detached.
        ``name`` gives an experiment a second one (the champion it is measured alongside)."""
        wt = self.worktree_path(exp_id, name)
        if wt.exists():
            self.remove_worktree(exp_id, branch, name=name)
        wt.parent.mkdir(parents=True, exist_ok=True)
        self._prune()
        if branch:
            self.repo.git.worktree("add", "-f", "-B", branch, str(wt), base)
        else:
            self.repo.git.worktree("add", "-f", "--detach", str(wt), base)
        return wt

    @_locked
    def commit_files(self, wt: Path, files: dict[str, str], message: str) -> tuple[str, str]:
        """Write ``files`` into worktree ``wt`` and commit; (commit sha, diff vs parent)."""
        for rel, text in files.items():
            dst = wt / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text, encoding="utf-8")
        g = git.Git(wt)  # git's command line in the worktree (no Repo: no helper processes)
        # exactly these paths, ignore rules or not
        g.execute(["git", "--literal-pathspecs", "add", "-f", "--", *files])
        with tempfile.TemporaryFile() as msg:
            msg.write(message.encode("utf-8"))
            msg.seek(0)
            # as GitPython's index commit did: the message byte for byte, a commit even if
            # nothing changed, and no automatic gc or maintenance run after it
            g.execute(["git", "-c", "maintenance.auto=false", "-c", "gc.auto=0", "commit",
                       "-q", "--allow-empty", "--allow-empty-message", "--cleanup=verbatim",
                       "-F", "-"], istream=msg, env=_IDENTITY)
        # the new HEAD read from the worktree's ref files (GitPython, no process)
        sha = git.SymbolicReference.dereference_recursive(git.Repo(wt), "HEAD")
        diff = g.diff(f"{sha}~1", sha)
        return sha, diff + ("\n" if diff else "")

    @_locked
    def pin(self, exp_id: int, commit: str) -> None:
        """Keep an experiment's commit reachable after its branch is gone (replay, export)."""
        self.repo.git.update_ref(f"refs/experiments/{exp_id}", commit)

    @_locked
    def remove_worktree(self, exp_id: int, branch: str | None = None,
                        delete_branch: bool = False, name: str = "worktree") -> None:
        wt = self.worktree_path(exp_id, name)
        if wt.exists():
            try:
                self.repo.git.worktree("remove", "--force", str(wt))
            except git.GitCommandError:
                shutil.rmtree(wt, ignore_errors=True)
        self._prune()
        if branch and delete_branch:
            with contextlib.suppress(git.GitCommandError):  # already gone
                self.repo.git.branch("-D", branch)

    @_locked
    def format_patch(self, commit: str) -> str:
        return str(self.repo.git.format_patch("-1", "--stdout", commit))

    def apply_files(self, exp_id: int, base: str, change: dict[str, str] | str, *,
                    message: str, branch: str | None = None,
                    check: Callable[[dict[str, str]], None] | None = None) -> Applied:
        """Commit a change onto ``base`` in experiment ``exp_id``'s worktree (on ``branch``, or
        detached) and pin it: ``change`` is the editable files' new text, or a stored diff
        (applied three-way; ApplyConflict when it does not apply). ``check`` sees the files
        before anything is committed and may raise to refuse them."""
        wt = self.create_worktree(exp_id, base, branch=branch)
        if isinstance(change, str):
            self.apply_diff(wt, change)
            files = {p: (wt / p).read_text(encoding="utf-8") for p in self.editable}
        else:
            files = change
        if check is not None:
            check(files)
        commit, diff = self.commit_files(wt, files, message)
        self.pin(exp_id, commit)
        return Applied(commit, diff, files, wt)

    @_locked
    def apply_diff(self, wt: Path, diff: str) -> None:
        """Apply a stored diff in worktree ``wt`` (3-way, so it also lands on a moved champion)."""
        patch = wt.parent / "replay.patch"
        patch.write_text(diff, encoding="utf-8")
        try:
            git.Git(wt).apply("--3way", "--whitespace=nowarn", str(patch))
        except git.GitCommandError as e:
            msg = (e.stderr or str(e)).strip().splitlines()
            raise ApplyConflict(f"the diff does not apply: {msg[-1] if msg else e}") from e

    def _prune(self) -> None:
        """``git worktree prune``, run only when it has something to clear: an entry for a
        worktree whose folder is gone (after a kill mid-removal, a folder removed by hand, or
        the rmtree fallback above). Checked on disk as prune itself checks: an entry is
        stale unless it is locked or its gitdir file names a path that exists."""
        admin = Path(self.repo.git_dir) / "worktrees"
        try:
            entries = list(admin.iterdir())
        except FileNotFoundError:  # no linked worktree at all
            return
        for entry in entries:
            if (entry / "locked").exists():
                continue
            try:
                gitdir = (entry / "gitdir").read_text(encoding="utf-8").rstrip("\r\n")
            except OSError:
                gitdir = ""
            if not gitdir or not (entry / gitdir).exists():
                self.repo.git.worktree("prune")
                return
