"""Finding code by its structure and turning a rewritten source into SEARCH/REPLACE edits.

Every helper takes the source text and returns the new text, or None when what it looks for is
not there (the catalogue entry then does not apply). Nothing is found by line number: knobs by
their name in a preset ``dict(...)`` or as a module constant, code by the class or function
that holds it (``ast``), fragments by exact text inside that scope.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Callable

from autoresearch import pysource
from autoresearch.edits import EditError, apply_edit
from autoresearch.models import Edit

Number = int | float


def _parse(src: str) -> ast.Module | None:
    try:
        return pysource.parse(src)
    except SyntaxError:
        return None


def _offsets(src: str) -> list[int]:
    """Offset of the start of each line (1-based line numbers index it as [lineno - 1])."""
    starts = [0]
    for line in src.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _span(src: str, node: ast.AST) -> tuple[int, int]:
    starts = _offsets(src)
    a = starts[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
    b = starts[node.end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
    return a, b


def preset_name(device: str) -> str:
    return "CUDA" if device.startswith("cuda") else "CPU"


def _knob_node(src: str, name: str, device: str) -> ast.expr | None:
    """The value node of knob ``name``: in the run's preset ``dict(...)``, else a constant."""
    tree = _parse(src)
    if tree is None:
        return None
    preset = preset_name(device)
    constant = None
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            continue
        target = node.targets[0].id
        if (target == preset and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "dict"):
            for kw in node.value.keywords:
                if kw.arg == name:
                    return kw.value
        if target == name:
            constant = node.value
    return constant


def get_knob(src: str, name: str, device: str = "cpu") -> object | None:
    """The literal value of a knob (a number, bool or tuple), or None."""
    node = _knob_node(src, name, device)
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def fmt(value: object) -> str:
    if isinstance(value, (bool, int)):
        return repr(value)
    if isinstance(value, float):
        text = f"{value:.3g}"
        return text if any(c in text for c in ".e") else text + ".0"
    if isinstance(value, tuple):
        return "(" + ", ".join(fmt(v) for v in value) + ")"
    return repr(value)


def set_knob(src: str, name: str, new: Callable[[object], object | None],
             device: str = "cpu") -> str | None:
    """Replace knob ``name``'s value by ``new(old)``; None when absent or unchanged."""
    node = _knob_node(src, name, device)
    if node is None:
        return None
    try:
        old = ast.literal_eval(node)
    except ValueError:
        return None
    value = new(old)
    if value is None or value == old:
        return None
    a, b = _span(src, node)
    return src[:a] + fmt(value) + src[b:]


def scale_knob(name: str, factor: float, *, integer: bool = False, lo: float | None = None,
               multiple_of: Callable[[str, str], int] | None = None,
               ) -> Callable[[str, str], str | None]:
    """An entry's edit: multiply a numeric knob by ``factor`` (rounded for integer knobs)."""

    def make(src: str, device: str) -> str | None:
        step = multiple_of(src, device) if multiple_of else 1

        def new(old: object) -> object | None:
            if isinstance(old, bool) or not isinstance(old, (int, float)):
                return None
            value = old * factor
            if integer or isinstance(old, int):
                value = max(step, round(value / step) * step)
                value = int(value)
            if lo is not None and value < lo:
                return None
            return value

        return set_knob(src, name, new, device)

    return make


def add_constants(src: str, text: str) -> str | None:
    """Insert module constants after the last top-level UPPERCASE assignment before any def."""
    tree = _parse(src)
    if tree is None:
        return None
    last = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            break
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper()):
            last = node
    if last is None or last.end_lineno is None:
        return None
    starts = _offsets(src)
    at = starts[last.end_lineno]
    return src[:at] + text.rstrip("\n") + "\n" + src[at:]


def has_constant(src: str, name: str) -> bool:
    return re.search(rf"^{name}\s*=", src, flags=re.MULTILINE) is not None


def _scope(tree: ast.Module, scope: str) -> ast.AST | None:
    """A top-level class or function by name; ``Class.method`` for a method."""
    node: ast.AST = tree
    for part in scope.split("."):
        found = None
        for child in getattr(node, "body", []):
            if (isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                    and child.name == part):
                found = child
        if found is None:
            return None
        node = found
    return node


def segment(src: str, scope: str) -> tuple[int, int] | None:
    """Character span of a class, function or method, decorators included."""
    tree = _parse(src)
    if tree is None:
        return None
    node = _scope(tree, scope)
    if node is None:
        return None
    a, b = _span(src, node)
    decorators = getattr(node, "decorator_list", [])
    if decorators:
        a = min(a, _span(src, decorators[0])[0] - 1)
    starts = _offsets(src)
    a = starts[src.count("\n", 0, a)]  # from the start of its first line
    if src.startswith("\n", b):
        b += 1  # through the end of its last line
    return a, b


def _scope_span(src: str | None, scope: str | None) -> tuple[int, int] | None:
    """Where ``scope`` (a class/function name, or None for the whole file) lies in ``src``."""
    if src is None:
        return None
    return (0, len(src)) if scope is None else segment(src, scope)


def replace_in(src: str | None, scope: str | None, old: str, new: str,
               count: int = 1) -> str | None:
    """Replace ``old`` (which must occur exactly ``count`` times in the scope) by ``new``."""
    span = _scope_span(src, scope)
    if src is None or span is None:
        return None
    a, b = span
    part = src[a:b]
    if part.count(old) != count:
        return None
    return src[:a] + part.replace(old, new) + src[b:]


def sub_in(src: str | None, scope: str | None, pattern: str, repl: str,
           count: int = 1) -> str | None:
    """Regex replacement inside a scope; the pattern must match exactly ``count`` times."""
    span = _scope_span(src, scope)
    if src is None or span is None:
        return None
    a, b = span
    part = src[a:b]
    new, n = re.subn(pattern, repl, part, flags=re.MULTILINE)
    if n != count:
        return None
    return src[:a] + new + src[b:]


def replace_def(src: str | None, scope: str, new_code: str) -> str | None:
    """Replace a whole top-level class or function by ``new_code``."""
    if src is None:
        return None
    span = segment(src, scope)
    if span is None:
        return None
    a, b = span
    return src[:a] + new_code.rstrip("\n") + src[b:]


def insert_before(src: str | None, scope: str, code: str) -> str | None:
    """Insert top-level code (a class, a function) before the definition ``scope``."""
    if src is None:
        return None
    span = segment(src, scope)
    if span is None:
        return None
    a = span[0]
    return src[:a] + code.rstrip("\n") + "\n\n\n" + src[a:]


# ----------------------------------------------------------------------------------------------
# From a rewritten source to SEARCH/REPLACE edits.


def _count_block(lines: list[str], block: list[str]) -> int:
    n = len(block)
    return sum(1 for i in range(len(lines) - n + 1) if lines[i:i + n] == block)


def to_edits(old: str, new: str, path: str = "train.py") -> list[Edit] | None:
    """Minimal SEARCH/REPLACE edits turning ``old`` into ``new``, each matching exactly once.

    A hunk's SEARCH grows by context lines until it is unique in the file as it stands when the
    edit applies (edits apply in order). The result is verified by applying it; None if no set
    of edits reproduces ``new`` exactly.
    """
    if old == new:
        return None
    a, b = old.split("\n"), new.split("\n")
    ops = [op for op in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
           if op[0] != "equal"]
    hunks: list[list[int]] = []
    for _, i1, i2, j1, j2 in ops:  # merge hunks closer than 3 lines
        if hunks and i1 - hunks[-1][1] < 3:
            hunks[-1][1], hunks[-1][3] = i2, j2
        else:
            hunks.append([i1, i2, j1, j2])
    edits: list[Edit] = []
    current = old
    shift = 0  # line offset of the current text relative to the old one
    for i1, i2, j1, j2 in hunks:
        lines = current.split("\n")
        c1, c2 = i1 + shift, i2 + shift
        expected = "\n".join(lines[:c1] + b[j1:j2] + lines[c2:])
        for ctx in range(0, 40):
            s1, s2 = max(0, c1 - ctx), min(len(lines), c2 + ctx)
            block = lines[s1:s2]
            if not "".join(block).strip() or _count_block(lines, block) != 1:
                continue
            before, after = lines[s1:c1], lines[c2:s2]
            edit = Edit(path=path, search="\n".join(block),
                        replace="\n".join(before + b[j1:j2] + after))
            try:
                if apply_edit(current, edit) == expected:
                    break
            except EditError:
                pass
        else:
            return None
        current = expected
        edits.append(edit)
        shift += (j2 - j1) - (i2 - i1)
    if current != new:
        return None
    return edits
