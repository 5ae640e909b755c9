"""Datasets: fetch or build a text corpus once, split it, and store it as byte tokens.

A prepared dataset is a folder in the cache with four files:

    train.bin   the first 80% of the text's UTF-8 bytes (uint8, one token per byte)
    val.bin     the next 10%: what every decision is made on; only the trusted evaluation
                process ever opens it
    test.bin    the last 10%: held out from every decision; only the evaluation of a
                report measurement (``autoresearch report``, ``train --split test``) scores
                it (every evaluation hashes it, checking the dataset's identity)
    meta.json   name, sha256 (the dataset's identity), text_sha256, sizes, the split layout

A dataset's identity (``sha256``, what a run records and every measurement checks) is the
sha256 of its split layout and its text's sha256 together, so the same text split another way
is another dataset: its measurements are never compared with the first's. The folder is named
``<name>-<sha256[:12]>``, so preparing the same text again is a no-op.

Datasets prepared before the test split (two files, train 90% / val 10%, ``sha256`` the text's
own) keep working: the runs measured on them find them by that sha256, and a report of such a
run says it has no test split (a new run on the dataset prepared again has one).

The "offline" corpus is text *sampled* from a word-level Markov chain fitted on the standard
library's docstrings, with transition weights perturbed and words drawn from the operating
system's random source (``random.SystemRandom``: no seed, nothing stored). Each install's corpus
is different, and its exact text exists only in its cache folder, which the sandboxed training
process cannot open: it cannot be rebuilt from files every Python process reads. Preparing
"offline" again reuses the newest such folder; folders of older versions (plain docstrings,
which any process could rebuild) are never deleted, so old runs find theirs by sha256.
"""

from __future__ import annotations

import ast
import bisect
import functools
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autoresearch import pysource
from autoresearch.errors import DataError

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
OFFLINE_LIMIT = 1_000_000  # bytes of the "offline" corpus (and of the docstrings it is fitted on)
OFFLINE_GENERATOR = "docstring-markov/v1"  # meta.json "generator" of a sampled offline corpus
MARKOV_ORDER = 2  # words of context of the offline corpus's chain
TRAIN_FRACTION = 0.9  # the layout before the test split (folders prepared by older versions)
SPLITS = "train/val/test 80/10/10"  # the layout prepared now (meta.json "splits")
SPLIT_FRACTIONS = (0.8, 0.9)  # where val and test start, as fractions of the text
MIN_VAL_TOKENS = 8 * 256 + 1  # one evaluation batch (8 windows of 256) plus its last target
DOWNLOAD_TIMEOUT = 30.0  # seconds
# stdlib folders left out of the offline corpus: tests and vendored third-party code
_OFFLINE_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
                 "__pycache__", "ensurepip", "config-3"}


@dataclass(frozen=True)
class PreparedData:
    path: Path
    name: str
    sha256: str
    vocab_size: int
    train_tokens: int
    val_tokens: int
    bytes_per_token: float
    test_tokens: int = 0  # 0: prepared before the test split
    text_sha256: str = ""  # the whole text's sha256

    @property
    def has_test(self) -> bool:
        return self.test_tokens > 0


def identity(text_sha256: str, splits: str = SPLITS) -> str:
    """A dataset's identity: its split layout and its text, together (one sha256)."""
    return hashlib.sha256(f"{splits}\n{text_sha256}".encode()).hexdigest()


def cache_dir() -> Path:
    """$AUTORESEARCH_CACHE, or ~/.cache/autoresearch."""
    env = os.environ.get("AUTORESEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoresearch"


def prepare(
    dataset: str = "shakespeare",
    *,
    cache: Path | None = None,
    notice: Callable[[str], None] | None = None,
    sha256: str | None = None,
) -> PreparedData:
    """Prepare ``dataset`` ("shakespeare", "offline" or a path) in the cache and describe it.
    ``sha256``: the text a run was measured on; when the cache holds it, it is returned as it
    is (an older offline corpus, a text file changed since)."""
    cache = cache or cache_dir()
    say = notice or (lambda msg: print(msg, file=sys.stderr))
    if sha256:
        done = _existing(cache, _name_of(dataset), sha256)
        if done:
            return done
    if dataset == "shakespeare":
        done = _existing(cache, "shakespeare", identity(SHAKESPEARE_SHA256))
        if done:
            return done
        old = _existing(cache, "shakespeare", SHAKESPEARE_SHA256)  # prepared before test splits
        if old:
            return _store(cache, "shakespeare", _text_of(old))
        url = os.environ.get("AUTORESEARCH_SHAKESPEARE_URL", SHAKESPEARE_URL)
        try:
            text = _download(url)
        except http.client.HTTPException as e:  # e.g. the connection broke off mid-file
            raise DataError(f"the download from {url} is corrupt: {e!r}") from e
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            say(f"could not download tiny-shakespeare from {url} ({reason}); "
                "using the offline corpus (Python standard library docstrings) instead")
            return prepare("offline", cache=cache, notice=notice)
        sha = hashlib.sha256(text).hexdigest()
        if sha != SHAKESPEARE_SHA256:
            raise DataError(
                f"the file downloaded from {url} is corrupt or not tiny-shakespeare: sha256 "
                f"{sha[:16]}…, {len(text):,} bytes; expected {SHAKESPEARE_SHA256[:16]}…"
            )
        return _store(cache, "shakespeare", text)
    if dataset == "offline":
        return _offline(cache, say)
    path = Path(dataset).expanduser()
    if not path.exists():
        raise DataError(
            f"unknown dataset {dataset!r}: use 'shakespeare', 'offline', or a path to a UTF-8 "
            ".txt file or a folder of .txt files"
        )
    return _store(cache, _name_of(dataset), _read_text(path))


def _name_of(dataset: str) -> str:
    """The name a dataset's folders start with: "shakespeare", "offline", a file's stem or a
    folder's name."""
    if dataset in ("shakespeare", "offline"):
        return dataset
    path = Path(dataset).expanduser()
    return path.stem if path.is_file() else path.resolve().name


def load_prepared(path: Path) -> PreparedData:
    """Describe the prepared dataset in ``path`` (reads ``path/meta.json``)."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        return PreparedData(
            path=path,
            name=str(meta["name"]),
            sha256=str(meta["sha256"]),
            vocab_size=int(meta["vocab_size"]),
            train_tokens=int(meta["train_tokens"]),
            val_tokens=int(meta["val_tokens"]),
            bytes_per_token=float(meta["bytes_per_token"]),
            test_tokens=int(meta.get("test_tokens", 0)),
            text_sha256=str(meta.get("text_sha256", meta["sha256"])),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a prepared dataset (meta.json: {e})") from e


# --- sources of text ---------------------------------------------------------------------


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as resp:
        data: bytes = resp.read()
    return data


@functools.lru_cache(maxsize=1)
def _docstrings(limit: int = OFFLINE_LIMIT) -> bytes:
    """Docstrings of the standard library's modules, walked in sorted order, capped at limit:
    what the offline corpus's chain is fitted on (every Python process can read these)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[bytes] = []
    size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _OFFLINE_SKIP
                             and not d.startswith("config-"))
        for name in sorted(f for f in filenames if f.endswith(".py")):
            try:
                tree = pysource.parse(Path(dirpath, name).read_bytes())
            except (SyntaxError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        chunk = (doc + "\n\n").encode("utf-8", "replace")
                        out.append(chunk)
                        size += len(chunk)
                        if size >= limit:
                            return b"".join(out)[:limit]
    if size < MIN_VAL_TOKENS * 20:
        raise DataError(f"the offline corpus is too small: only {size} bytes of docstrings "
                        f"found under {root}")
    return b"".join(out)


_END = "\x00"  # end of a docstring, in the chain
_WORD = re.compile(r"\S+|\n")
_BACKOFF = 1.0  # a context seen n times is left for a shorter one with probability 1/(n+1)


def _offline_text(limit: int = OFFLINE_LIMIT, rng: random.Random | None = None) -> bytes:
    """``limit`` bytes sampled from a word-level Markov chain fitted on the standard library's
    docstrings: up to ``MARKOV_ORDER`` words of context, and a context seen n times hands the
    draw to the next shorter one with probability 1/(n+1), so rare contexts (a docstring's own
    wording) do not replay their source word for word. Each context's successor weights are its
    counts times independent Exp(1) draws (a random reweighting, learnable only from the corpus
    itself), and every draw comes from ``rng``, by default the operating system's random
    source: no seed exists that could rebuild the text."""
    rng = rng or random.SystemRandom()
    counts: list[dict[tuple[str, ...], dict[str, int]]] = [{} for _ in range(MARKOV_ORDER + 1)]
    for doc in _docstrings().decode("utf-8", "replace").split("\n\n"):
        history = [""] * MARKOV_ORDER
        for word in [*_WORD.findall(doc), _END]:
            for order in range(MARKOV_ORDER + 1):
                ctx = tuple(history[len(history) - order:])
                nxt = counts[order].setdefault(ctx, {})
                nxt[word] = nxt.get(word, 0) + 1
            history.append(word)
    # per order, per context: (successors, cumulative weights, times the context was seen)
    chain: list[dict[tuple[str, ...], tuple[list[str], list[float], int]]] = []
    for table in counts:
        level = {}
        for ctx, nxt in table.items():
            total, cum = 0.0, []
            for n in nxt.values():
                total += n * rng.expovariate(1.0)
                cum.append(total)
            level[ctx] = (list(nxt), cum, sum(nxt.values()))
        chain.append(level)
    out: list[bytes] = []
    size = 0
    while size < limit:
        history, words = [""] * MARKOV_ORDER, []
        while True:
            order = MARKOV_ORDER
            while order > 0:  # a context never seen (after a back-off) is left at once
                node = chain[order].get(tuple(history[len(history) - order:]))
                if node is not None and rng.random() * (node[2] + _BACKOFF) >= _BACKOFF:
                    break
                order -= 1
            choices, cum, _ = chain[order][tuple(history[len(history) - order:])]
            word = choices[min(bisect.bisect(cum, rng.random() * cum[-1]), len(cum) - 1)]
            if word == _END:
                break
            words.append(word)
            history.append(word)
        chunk = re.sub(r" ?\n ?", "\n", " ".join(words)).strip() + "\n\n"
        out.append(chunk.encode("utf-8"))
        size += len(out[-1])
    return b"".join(out)[:limit]


def _offline(cache: Path, say: Callable[[str], None]) -> PreparedData:
    """The newest sampled offline corpus in the cache, or a new one."""
    current: list[tuple[float, str, PreparedData]] = []
    older: list[Path] = []
    for meta in sorted(cache.glob("offline-*/meta.json")):
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            found = load_prepared(meta.parent)
        except (OSError, ValueError, DataError):
            continue
        if info.get("generator") == OFFLINE_GENERATOR:
            current.append((float(info.get("prepared_at", 0.0)), meta.parent.name, found))
        else:
            older.append(meta.parent)
    if current:
        newest = max(current, key=lambda c: c[:2])[2]
        if newest.has_test:
            return newest
        # the same sampled text, split with a test split (the old folder stays for its runs)
        info = json.loads((newest.path / "meta.json").read_text(encoding="utf-8"))
        return _store(cache, "offline", _text_of(newest),
                      extra={"generator": OFFLINE_GENERATOR,
                             "prepared_at": float(info.get("prepared_at", 0.0)) + 1e-3})
    text = _offline_text()
    if older:
        say(f"built a new offline corpus (sampled, unique to this cache); {older[0]} and any "
            "other offline folder made by an older version stay for the runs measured on them, "
            "but new runs do not use them: their validation text can be rebuilt from the "
            "Python standard library")
    return _store(cache, "offline", text,
                  extra={"generator": OFFLINE_GENERATOR, "prepared_at": time.time()})


def _read_text(path: Path) -> bytes:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"{path} holds no .txt files")
    texts = []
    for f in files:
        raw = f.read_bytes()
        if not raw.strip():
            raise DataError(f"{f} is empty")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{f} is not UTF-8 text (byte {e.start}: {e.reason})") from e
        texts.append(raw)
    return b"\n".join(texts)


# --- the prepared folder ------------------------------------------------------------------


def _text_of(prepared: PreparedData) -> bytes:
    """The whole text of a prepared dataset (its splits in order)."""
    parts = ["train.bin", "val.bin"] + (["test.bin"] if prepared.has_test else [])
    return b"".join((prepared.path / p).read_bytes() for p in parts)


def _existing(cache: Path, name: str, sha: str) -> PreparedData | None:
    path = cache / f"{name}-{sha[:12]}"
    if not (path / "meta.json").is_file():
        return None
    data = load_prepared(path)
    return data if data.sha256 == sha else None


def _store(cache: Path, name: str, text: bytes, extra: dict[str, object] | None = None
           ) -> PreparedData:
    text_sha = hashlib.sha256(text).hexdigest()
    sha = identity(text_sha)
    done = _existing(cache, name, sha)
    if done:
        return done
    val_at, test_at = (int(len(text) * f) for f in SPLIT_FRACTIONS)
    if min(test_at - val_at, len(text) - test_at) < MIN_VAL_TOKENS:
        raise DataError(
            f"dataset {name!r} is too small ({len(text):,} bytes): its validation and test "
            f"splits (10% each) need at least {MIN_VAL_TOKENS:,} bytes, so give it at least "
            f"{MIN_VAL_TOKENS * 10 + 10:,} bytes of text"
        )
    meta = {
        "name": name,
        "sha256": sha,
        "text_sha256": text_sha,
        "splits": SPLITS,
        "vocab_size": 256,
        "bytes_per_token": 1.0,
        "tokenizer": "bytes",
        "train_tokens": val_at,
        "val_tokens": test_at - val_at,
        "test_tokens": len(text) - test_at,
        "total_bytes": len(text),
        **(extra or {}),
    }
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"{name}-{sha[:12]}"
    # build next to the final folder, then rename: readers never see a half-written dataset
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        (tmp / "train.bin").write_bytes(text[:val_at])
        (tmp / "val.bin").write_bytes(text[val_at:test_at])
        (tmp / "test.bin").write_bytes(text[test_at:])
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a concurrent prepare of the same text
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_prepared(final)


def files_identity(meta: dict[str, object], train: bytes, val: bytes, test: bytes | None
                   ) -> str:
    """The identity of a prepared dataset computed from its files and its meta.json (the
    trusted evaluator and a Ray node check it against the run's): a folder from before the
    test split is its text's sha256."""
    if test is None:
        return hashlib.sha256(train + val).hexdigest()
    return identity(hashlib.sha256(train + val + test).hexdigest(), str(meta.get("splits")))
