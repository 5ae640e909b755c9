"""Integrity checks around a measurement, named for what they guard.

- the installed-code tripwire: the code the evaluation process runs (this package, torch,
  numpy, pydantic, the standard library, the import path) must not change while agent code
  trains (``installed_signature`` before and after, ``changed_path``);
- environment scrubbing: no secret reaches either process, and the training process gets none
  of our settings and a HOME of its own (``child_env``, ``training_env``);
- dataset placement: a dataset inside a folder the sandbox leaves readable is reported
  (``dataset_exposed``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import sys
import sysconfig
from pathlib import Path

from autoresearch import sandbox

SECRET_ENV = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # the folder holding the package
# Installed code the evaluation process runs, watched for changes made during training.
WATCHED_PACKAGES = ("torch", "torchgen", "numpy", "pydantic", "pydantic_core", "annotated_types",
                    "typing_inspection", "typing_extensions")



def child_env(gpu: str | None, threads: int | None = None) -> dict[str, str]:
    """The environment of both processes: no secrets (the training code is untrusted);
    ``gpu``: the only CUDA devices they see; ``threads``: their torch/OpenMP threads (jobs
    side by side on shared cores would otherwise each start one thread per core)."""
    env = {k: v for k, v in os.environ.items() if not SECRET_ENV.search(k)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONHASHSEED"] = "0"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    return env


def training_env(env: dict[str, str], scratch: Path) -> dict[str, str]:
    """The training process's environment: none of our settings (they name the dataset cache
    and the workspace), and a HOME, temporary folder and compiler caches (Triton, Inductor)
    inside its scratch folder, so that the usual places to look (~/.cache/autoresearch, the
    shell history, dotfiles) lead nowhere, and nothing one measurement writes is there for the
    next to read: the scratch folder is removed with the measurement. (A shared compiler cache
    would carry whatever a job wrote into it to every later job, trained weights included;
    torch.compile pays its compile in every measurement's setup instead.)"""
    train_env = {k: v for k, v in env.items() if not k.startswith("AUTORESEARCH_")}
    home, tmp, cache = scratch / "home", scratch / "tmp", scratch / "cache"
    for folder in (home, tmp, cache / "triton", cache / "inductor"):
        folder.mkdir(parents=True, exist_ok=True)
    train_env["TRITON_CACHE_DIR"] = str(cache / "triton")
    train_env["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    train_env["HOME"] = str(home)
    train_env["XDG_CACHE_HOME"] = str(home / ".cache")
    train_env["TMPDIR"] = str(tmp)  # compilers' temporary files stay inside the sandbox
    return train_env


def dataset_exposed(data: Path, source: Path, scratch: Path) -> str:
    """A warning when a folder the sandbox leaves readable holds the dataset (its cache inside
    the Python prefix or the import path, say): the fence would not hide the validation split."""
    read, _ = sandbox.default_paths(source, scratch)
    here = Path(data).resolve()
    for folder in read:
        with contextlib.suppress(OSError):
            if here.is_relative_to(Path(folder).resolve()):
                return f" (but the dataset is inside {folder}, which training may read)"
    return ""


def eval_path() -> list[str]:
    """The evaluation process's sys.path: the package root, then this process's path as it was
    resolved at start-up (before any training ran), without the current folder."""
    here = {"", ".", os.getcwd()}
    return [PACKAGE_ROOT, *(p for p in sys.path if p not in here and p != PACKAGE_ROOT)]


@functools.cache
def watched_roots() -> tuple[Path, ...]:
    """This package, the installed packages and the standard library the evaluation process
    imports from."""
    roots = [Path(PACKAGE_ROOT, "autoresearch")]
    for name in WATCHED_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            origin = Path(spec.origin)
            roots.append(origin.parent if origin.name == "__init__.py" else origin)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return (*roots, stdlib)


def installed_signature() -> dict[str, tuple[object, ...]]:
    """A tripwire for the training process changing code the evaluation runs: size, mtime,
    ctime and inode of every file under the watched roots (ctime cannot be set back from user
    space), and the importable names in each sys.path folder (a module that would shadow
    torch, say; other files there, a README being edited or a job's scratch folder in a temp
    folder on the path, do not count). Stats only: ~0.08 s."""
    found: dict[str, tuple[object, ...]] = {}

    def note(path: str) -> None:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            found[path] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    for folder in eval_path():
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            found[folder] = tuple(sorted(e.name for e in entries if _importable(e)))
    for root in watched_roots():
        note(str(root))
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in _UNWATCHED]
            for name in filenames:
                note(os.path.join(dirpath, name))
    return found


Signature = dict[str, tuple[object, ...]]


def _importable(entry: os.DirEntry[str]) -> bool:
    """Whether an import statement could load this entry of a path folder (a module, a
    package or a namespace package, by a name that is an identifier), or it is a .pth file."""
    if entry.name.endswith(".pth"):
        return True
    if entry.name.endswith((".py", ".pyc", ".so")):
        return entry.name.split(".", 1)[0].isidentifier()
    return entry.name.isidentifier() and entry.is_dir()


def changed_path(before: Signature, after: Signature) -> str:
    """The first path that differs ("" if none)."""
    if before == after:
        return ""
    return min(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


# under the watched roots: C headers, and other installs and tests the evaluation never imports
_UNWATCHED = frozenset({"include", "site-packages", "dist-packages", "test", "tests", "idlelib",
                        "tkinter", "turtledemo", "ensurepip", "lib2to3"})
