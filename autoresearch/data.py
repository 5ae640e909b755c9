"""Datasets: fetch or build a text corpus once, split it, and store it as byte tokens.

A prepared dataset is a folder in the cache with three files:

    train.bin   the first 90% of the text's UTF-8 bytes (uint8, one token per byte)
    val.bin     the last 10%; only the trusted evaluation process ever opens it
    meta.json   name, sha256 of the whole text, sizes, vocab_size=256, bytes_per_token=1.0

The folder is named ``<name>-<sha256[:12]>``, so preparing the same text again is a no-op.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import http.client
import json
import os
import shutil
import sys
import sysconfig
import tempfile
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
OFFLINE_LIMIT = 1_000_000  # bytes of stdlib docstrings in the "offline" corpus
TRAIN_FRACTION = 0.9
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


def cache_dir() -> Path:
    """$AUTORESEARCH_CACHE, or ~/.cache/autoresearch."""
    env = os.environ.get("AUTORESEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoresearch"


def prepare(
    dataset: str = "shakespeare",
    *,
    cache: Path | None = None,
    notice: Callable[[str], None] | None = None,
) -> PreparedData:
    """Prepare ``dataset`` ("shakespeare", "offline" or a path) in the cache and describe it."""
    cache = cache or cache_dir()
    say = notice or (lambda msg: print(msg, file=sys.stderr))
    if dataset == "shakespeare":
        done = _existing(cache, "shakespeare", SHAKESPEARE_SHA256)
        if done:
            return done
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
        return _store(cache, "offline", _offline_text())
    path = Path(dataset).expanduser()
    if not path.exists():
        raise DataError(
            f"unknown dataset {dataset!r}: use 'shakespeare', 'offline', or a path to a UTF-8 "
            ".txt file or a folder of .txt files"
        )
    return _store(cache, path.stem if path.is_file() else path.resolve().name, _read_text(path))


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
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a prepared dataset (meta.json: {e})") from e


# --- sources of text ---------------------------------------------------------------------


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as resp:
        data: bytes = resp.read()
    return data


@functools.lru_cache(maxsize=1)
def _offline_text(limit: int = OFFLINE_LIMIT) -> bytes:
    """Docstrings of the standard library's modules, walked in sorted order, capped at limit."""
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


def _existing(cache: Path, name: str, sha: str) -> PreparedData | None:
    path = cache / f"{name}-{sha[:12]}"
    if not (path / "meta.json").is_file():
        return None
    data = load_prepared(path)
    return data if data.sha256 == sha else None


def _store(cache: Path, name: str, text: bytes) -> PreparedData:
    sha = hashlib.sha256(text).hexdigest()
    done = _existing(cache, name, sha)
    if done:
        return done
    split = int(len(text) * TRAIN_FRACTION)
    if len(text) - split < MIN_VAL_TOKENS:
        raise DataError(
            f"dataset {name!r} is too small ({len(text):,} bytes): its validation split (the "
            f"last 10%) needs at least {MIN_VAL_TOKENS:,} bytes, so give it at least "
            f"{MIN_VAL_TOKENS * 10:,} bytes of text"
        )
    meta = {
        "name": name,
        "sha256": sha,
        "vocab_size": 256,
        "bytes_per_token": 1.0,
        "tokenizer": "bytes",
        "train_tokens": split,
        "val_tokens": len(text) - split,
        "total_bytes": len(text),
    }
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"{name}-{sha[:12]}"
    # build next to the final folder, then rename: readers never see a half-written dataset
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        (tmp / "train.bin").write_bytes(text[:split])
        (tmp / "val.bin").write_bytes(text[split:])
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a concurrent prepare of the same text
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_prepared(final)
