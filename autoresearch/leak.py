"""Refusing a proposal that carries the validation text.

The training process never gets the validation split, and under Landlock cannot open it. An
agent that knows the text anyway (tiny-shakespeare is public and a model may have read it)
could still paste it into ``train.py`` and train on it. Before anything trains, the loop
checks the text a proposal adds against an index of every :data:`WINDOW`-byte window of the
run's ``val.bin`` and refuses a proposal that adds a run of that many bytes or more, with a
:class:`ValidationLeak` (a ``GuardViolation``: rule id ``validation-text`` and a message
written for the model).

What is searched, in every file the proposal changes (runs the file already had are not
counted, so a validation split that happens to share lines with the baseline refuses nothing):

- the source text as it is;
- the values of its string and bytes literals (escapes decoded, f-string parts included),
  joined in source order, so text split over several literals is found too;
- its comments, without the ``#``, one per line;
- its integer literals from 0 to 255, read as bytes in source order (``bytes([70, 105, ...])``).

It does not catch text that is encoded (base64, hex, a cipher, a changed case), computed at run
time, or pasted in pieces shorter than the window: the guard and this check are tripwires; the
sandbox and the separate evaluation process are what keep the split itself out of reach.

An index is built once per dataset per process (:func:`index_for`) and reused by every
proposal of a run: a sorted array of 64-bit rolling hashes, one per window, with the window's
offset beside it; a hash hit is confirmed byte for byte.
"""

from __future__ import annotations

import ast
import functools
import io
import tokenize
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoresearch import pysource
from autoresearch.data import PreparedData
from autoresearch.guard import GuardViolation

WINDOW = 64  # bytes: a proposal adding a run this long of the validation split is refused
RULE = "validation-text"
_P = 0x100000001B3  # the hash's multiplier (odd: a unit mod 2**64)
_MASK = (1 << 64) - 1


class ValidationLeak(GuardViolation):
    """A proposal adds text of the validation split."""

    def __init__(self, message: str, *, line: int | None, offset: int, length: int) -> None:
        super().__init__(RULE, message, line=line)
        self.offset = offset  # where the run starts in val.bin
        self.length = length  # how many bytes of it the proposal holds there


@dataclass(frozen=True)
class Hit:
    """A run of the validation split found in a text: where in each, and how long."""

    val_offset: int
    text_offset: int
    length: int


def window_hashes(data: np.ndarray, window: int) -> np.ndarray:
    """The polynomial hash (mod 2**64) of every ``window``-byte window of ``data`` (uint8):
    ``len(data) - window + 1`` values, built by doubling (log2(window) passes)."""
    n = len(data)
    if window < 1 or n < window:
        return np.empty(0, dtype=np.uint64)
    block = data.astype(np.uint64) + np.uint64(1)  # windows of 1 byte
    size = 1
    acc: np.ndarray | None = None
    acc_len = 0
    rest = window
    with np.errstate(over="ignore"):
        while True:
            if rest & 1:  # append a block of `size` bytes after the windows built so far
                if acc is None:
                    acc, acc_len = block.copy(), size
                else:
                    m = n - (acc_len + size) + 1
                    acc = acc[:m] * np.uint64(pow(_P, size, 1 << 64)) + block[acc_len:acc_len + m]
                    acc_len += size
            rest >>= 1
            if not rest:
                break
            m = n - 2 * size + 1
            block = block[:m] * np.uint64(pow(_P, size, 1 << 64)) + block[size:size + m]
            size *= 2
    assert acc is not None and acc_len == window
    return acc[: n - window + 1]


class LeakIndex:
    """Every ``window``-byte window of a text (the validation split), for :meth:`find`."""

    def __init__(self, text: bytes, window: int = WINDOW, val_len: int | None = None) -> None:
        self.text = text
        self.window = window
        self.val_len = len(text) if val_len is None else val_len  # the rest is the test split
        self._buf = np.frombuffer(text, dtype=np.uint8)
        hashes = window_hashes(self._buf, window)
        self._order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[self._order]

    @classmethod
    def of(cls, data: PreparedData, window: int = WINDOW) -> LeakIndex:
        return _held_out(str(data.path), window)

    def hits(self, text: str | bytes) -> Iterator[Hit]:
        """Every place ``text`` holds a window of the indexed text, in order, each extended to
        the whole run it is part of (later windows inside a run already reported are skipped)."""
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        if len(data) < self.window or not len(self._hashes):
            return
        hashes = window_hashes(np.frombuffer(data, dtype=np.uint8), self.window)
        where = np.searchsorted(self._hashes, hashes)
        where = np.minimum(where, len(self._hashes) - 1)
        candidates = np.flatnonzero(self._hashes[where] == hashes)
        covered = -1
        for i in candidates.tolist():
            if i < covered:
                continue
            piece = data[i:i + self.window]
            j = int(where[i])
            while j < len(self._hashes) and self._hashes[j] == hashes[i]:
                at = int(self._order[j])
                if self.text[at:at + self.window] == piece:
                    start, val_start, end = i, at, i + self.window
                    while (start > 0 and val_start > 0
                           and data[start - 1] == self.text[val_start - 1]):
                        start, val_start = start - 1, val_start - 1
                    while (end < len(data) and val_start + end - start < len(self.text)
                           and data[end] == self.text[val_start + end - start]):
                        end += 1
                    covered = end - self.window + 1
                    yield Hit(val_start, start, end - start)
                    break
                j += 1

    def find(self, text: str | bytes) -> tuple[int, str] | None:
        """(offset in the indexed text, the run found) of the first run of at least
        ``window`` bytes of it that ``text`` holds; None if there is none."""
        for hit in self.hits(text):
            return hit.val_offset, self.text[hit.val_offset:hit.val_offset + hit.length].decode(
                "utf-8", "replace")
        return None


@functools.lru_cache(maxsize=4)
def _index(path: str, sha256: str, window: int) -> LeakIndex:
    return _held_out(path, window)


def _held_out(path: str, window: int) -> LeakIndex:
    """The validation split followed by the test split where the dataset has one: a proposal
    may carry neither (the report scores the test split)."""
    val = (Path(path) / "val.bin").read_bytes()
    test = Path(path) / "test.bin"
    return LeakIndex(val + (test.read_bytes() if test.is_file() else b""), window, len(val))


def index_for(data: PreparedData) -> LeakIndex:
    """The index of ``data``'s validation split, built once per dataset and process."""
    return _index(str(data.path), data.sha256, WINDOW)


# -- what a source file says, in the forms text can hide in ----------------------------------


@dataclass(frozen=True)
class View:
    """One way of reading a source file as bytes; ``lines``: (offset, line) where each piece
    starts, for the message."""

    what: str
    data: bytes
    lines: tuple[tuple[int, int], ...]

    def line_at(self, offset: int) -> int | None:
        line = None
        for start, n in self.lines:
            if start > offset:
                break
            line = n
        return line


def views(source: str) -> list[View]:
    """The source as text, its string literals, its comments and its byte-sized integers."""
    raw = source.encode("utf-8", "surrogatepass")
    starts, at = [], 0
    for n, text in enumerate(source.splitlines(keepends=True), 1):
        starts.append((at, n))
        at += len(text.encode("utf-8", "surrogatepass"))
    out = [View("in the source", raw, tuple(starts))]
    try:
        tree = pysource.parse(source)
    except (SyntaxError, ValueError):
        tree = None
    if tree is not None:
        strings: list[tuple[int, int, bytes]] = []
        numbers: list[tuple[int, int, int]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant):
                pos = (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))
                if isinstance(node.value, str):
                    strings.append((*pos, node.value.encode("utf-8", "surrogatepass")))
                elif isinstance(node.value, bytes):
                    strings.append((*pos, node.value))
                elif (isinstance(node.value, int) and not isinstance(node.value, bool)
                      and 0 <= node.value <= 255):
                    numbers.append((*pos, node.value))
        out.append(_joined("in string literals", sorted(strings)))
        out.append(View("in integer literals read as bytes",
                        bytes(v for *_, v in sorted(numbers)),
                        tuple((k, line) for k, (line, _, _) in enumerate(sorted(numbers)))))
    comments: list[tuple[int, int, bytes]] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                text = tok.string[1:]
                text = text[1:] if text.startswith(" ") else text
                comments.append((tok.start[0], tok.start[1],
                                 (text + "\n").encode("utf-8", "surrogatepass")))
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass
    out.append(_joined("in comments", comments))
    return out


def _joined(what: str, pieces: list[tuple[int, int, bytes]]) -> View:
    lines, at = [], 0
    for line, _, data in pieces:
        lines.append((at, line))
        at += len(data)
    return View(what, b"".join(d for *_, d in pieces), tuple(lines))


# -- the check --------------------------------------------------------------------------------


def find_added(index: LeakIndex, path: str, old: str | None, new: str) -> ValidationLeak | None:
    """The first run of the validation split that ``new`` adds to ``old`` (the file before the
    proposal; None for a new file), read in every way :func:`views` reads a file."""
    before = {v.what: v.data for v in views(old)} if old else {}
    for view in views(new):
        for hit in index.hits(view.data):
            run = view.data[hit.text_offset:hit.text_offset + hit.length]
            if run in before.get(view.what, b""):
                continue  # the file had this whole run before the proposal
            return _violation(path, view, hit, index)
    return None


def _violation(path: str, view: View, hit: Hit, index: LeakIndex) -> ValidationLeak:
    line = view.line_at(hit.text_offset)
    where = f"{path} line {line}" if line else path
    text = index.text[hit.val_offset:hit.val_offset + hit.length].decode("utf-8", "replace")
    snippet = text if len(text) <= 60 else text[:57] + "..."
    split, at = ("validation", hit.val_offset) if hit.val_offset < index.val_len else (
        "test", hit.val_offset - index.val_len)
    message = (
        f"{where}: {hit.length} bytes copied from the {split} split (its bytes "
        f"{at:,} to {at + hit.length:,}), {view.what}: {snippet!r}: "
        f"text of the validation split, {index.window} bytes or more in a row, is not allowed "
        f"[{RULE}]. Every proposal is scored on that split; a model that has seen its text "
        "would be scored on memory, not on learning, so a proposal may not carry it in code, "
        "strings, comments or numbers. Train on what run.get_batch serves."
    )
    return ValidationLeak(message, line=line, offset=hit.val_offset, length=hit.length)


def check_files(data: PreparedData, base: Mapping[str, str], files: Mapping[str, str]) -> None:
    """Raise :class:`ValidationLeak` when a file of ``files`` adds to its version in ``base``
    a run of :data:`WINDOW` bytes or more of ``data``'s validation split."""
    index = index_for(data)
    for path in sorted(files):
        if files[path] != base.get(path):
            found = find_added(index, path, base.get(path), files[path])
            if found is not None:
                raise found
