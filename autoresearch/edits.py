"""Parse and apply SEARCH/REPLACE edits: pure functions, string in, string out.

Three steps, kept apart: ``parse_answer`` turns a model's text into a ``Proposal``;
``apply_edits`` dry-runs every edit on a copy of the files and returns the new contents; the
caller writes them. Every error message is written for the model, which gets it back verbatim.

The answer format (also described to the model in prompts/system.md)::

    TITLE: one line naming the change
    RATIONALE: a few sentences: why it should lower the metric.

    train.py
    <<<<<<< SEARCH
    lines copied exactly from the current file
    =======
    the lines that replace them
    >>>>>>> REPLACE

    train.py
    <<<<<<< WHOLE FILE
    the complete new content of the file
    >>>>>>> WHOLE FILE

The path goes on the line before each block (``FILE: train.py`` and markdown decoration are
accepted; a block without one reuses the previous block's path). Code fences around blocks are
ignored. Matching climbs a short ladder: exact lines (or, for a fragment that does not end a
line, an exact substring), then the same lines shifted by one uniform indentation (the
replacement is re-indented alike). Zero or several matches is an error; there is no
edit-distance matching, which applies wrong edits.

Just over 400 lines: parsing, matching and the messages written for the model belong together
(each error names the lines the model should have matched).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from autoresearch.models import Edit, Proposal


def fence(text: str, info: str = "") -> str:
    """Wrap ``text`` in a code fence longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text.rstrip(chr(10))}\n{ticks}"


class EditError(Exception):
    """An edit could not be applied; the message is written for the model."""


class FormatError(EditError):
    """An answer could not be parsed into a proposal."""


FORMAT_REMINDER = """\
Answer in this format:

TITLE: <one line>
RATIONALE: <a few sentences>

<path of the file>
<<<<<<< SEARCH
<lines copied exactly from the current file>
=======
<the lines that replace them>
>>>>>>> REPLACE

(or, to replace a whole file: the path, then <<<<<<< WHOLE FILE, the complete content,
>>>>>>> WHOLE FILE)"""

_SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$", re.IGNORECASE)
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$", re.IGNORECASE)
_WHOLE_START = re.compile(r"^\s*<{5,9}\s*WHOLE[ _-]?FILE\s*$", re.IGNORECASE)
_WHOLE_END = re.compile(r"^\s*>{5,9}\s*(?:END\s+)?(?:WHOLE[ _-]?)?FILE\s*$", re.IGNORECASE)
_ANY_MARKER = re.compile(r"^\s*(?:<{5,9}|>{5,9})\s*\w")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})[\w+-]*\s*$")
_TITLE = re.compile(r"^[\s#*_>]*TITLE\s*[*_]*\s*:\s*[*_]*\s*(.*?)\s*[*_]*\s*$", re.IGNORECASE)
_RATIONALE = re.compile(r"^[\s#*_>]*RATIONALE\s*[*_]*\s*:\s*[*_]*\s*", re.IGNORECASE)
_PATHLIKE = re.compile(r"[\w./\\-]+")
_PATH_LABEL = re.compile(r"^(?:FILE|PATH|FILENAME)\s*:\s*", re.IGNORECASE)

_MAX_TITLE = 200


# -- parsing ----------------------------------------------------------------------------------


def parse_answer(text: str) -> Proposal:
    """Turn a model's answer into a ``Proposal``, or raise ``FormatError`` saying what is wrong."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")

    title, title_at = _find_title(lines)
    edits: list[Edit] = []
    prose: list[str] = []  # lines outside blocks, before the first block: the rationale
    pending: list[tuple[int, str]] = []  # non-blank lines since the last block (path candidates)
    last_path: str | None = None
    i = title_at + 1
    while i < len(lines):
        line = lines[i]
        whole = bool(_WHOLE_START.match(line))
        if whole or _SEARCH.match(line):
            path = _path_from(pending) or last_path
            block_no = len(edits) + 1
            if path is None:
                raise FormatError(
                    f"Block {block_no} (line {i + 1}) has no file path: put the path of the file "
                    "alone on the line just before its opening marker.\n\n" + FORMAT_REMINDER
                )
            if not edits:
                prose = _prose_before(lines, title_at, i, pending)
            if whole:
                content, i = _read_until(lines, i + 1, _WHOLE_END, block_no, path, "WHOLE FILE")
                edits.append(Edit(path=path, content=_join(content)))
            else:
                search, i = _read_until(lines, i + 1, _DIVIDER, block_no, path, "SEARCH")
                replace, i = _read_until(lines, i + 1, _REPLACE, block_no, path, "REPLACE")
                edits.append(Edit(path=path, search=_join(search), replace=_join(replace)))
            last_path = path
            pending = []
        elif _DIVIDER.match(line) or _REPLACE.match(line) or _WHOLE_END.match(line):
            raise FormatError(
                f"Line {i + 1} ({line.strip()!r}) closes a block that was never opened; "
                "each block starts with <<<<<<< SEARCH (or <<<<<<< WHOLE FILE).\n\n"
                + FORMAT_REMINDER
            )
        elif _ANY_MARKER.match(line):
            raise FormatError(
                f"Line {i + 1} ({line.strip()!r}) is not a marker I understand; use exactly "
                "<<<<<<< SEARCH, =======, >>>>>>> REPLACE, <<<<<<< WHOLE FILE and "
                ">>>>>>> WHOLE FILE.\n\n" + FORMAT_REMINDER
            )
        elif line.strip() and not _FENCE.match(line):
            pending.append((i, line))
        i += 1

    if not edits:
        raise FormatError(
            "The answer contains no edit blocks, so nothing would change.\n\n" + FORMAT_REMINDER
        )
    rationale = "\n".join(prose).strip()
    rationale = _RATIONALE.sub("", rationale, count=1).strip()
    return Proposal(title=title, rationale=rationale, edits=edits)


def _find_title(lines: list[str]) -> tuple[str, int]:
    for i, line in enumerate(lines):
        if _SEARCH.match(line) or _WHOLE_START.match(line):
            break
        m = _TITLE.match(line)
        if m:
            title = m.group(1).strip().strip("*_`").strip()
            if not title:
                raise FormatError(
                    f"The TITLE line (line {i + 1}) is empty; name the change in one line, "
                    "e.g. 'TITLE: Cosine learning-rate decay'."
                )
            return title[:_MAX_TITLE], i
    raise FormatError(
        "The answer has no title: start it with a line 'TITLE: <what the change does>'.\n\n"
        + FORMAT_REMINDER
    )


def _prose_before(
    lines: list[str], title_at: int, block_at: int, pending: list[tuple[int, str]]
) -> list[str]:
    """The text between the title and the first block, without the block's path line."""
    end = pending[-1][0] if pending else block_at
    return [ln for ln in lines[title_at + 1 : end] if not _FENCE.match(ln)]


def _path_from(pending: list[tuple[int, str]]) -> str | None:
    """The path named on the last non-blank line before a block, if that line is a path."""
    if not pending:
        return None
    line = pending[-1][1].strip()
    line = line.strip("#*_` ").strip()
    line = _PATH_LABEL.sub("", line).strip("*_` ").rstrip(":").strip("*_` ")
    line = line.removeprefix("./")
    if len(line) > 200 or not _PATHLIKE.fullmatch(line) or not ("." in line or "/" in line):
        return None
    return line


def _read_until(
    lines: list[str], start: int, end: re.Pattern[str], block_no: int, path: str, part: str
) -> tuple[list[str], int]:
    """Collect lines from ``start`` up to the line matching ``end``; return them and its index."""
    for j in range(start, len(lines)):
        line = lines[j]
        if end.match(line):
            return lines[start:j], j
        if _SEARCH.match(line) or _WHOLE_START.match(line):
            break  # a new block opens before this one closed
        if part != "REPLACE" and _REPLACE.match(line):
            break  # SEARCH without its ======= divider, or REPLACE closing a WHOLE FILE
    expected = {
        "SEARCH": "=======",
        "REPLACE": ">>>>>>> REPLACE",
        "WHOLE FILE": ">>>>>>> WHOLE FILE",
    }[part]
    raise FormatError(
        f"Block {block_no} for {path} (opened at line {start}) is not closed: its {part} part "
        f"must end with a line '{expected}'. If the answer was cut off, send fewer or smaller "
        "blocks.\n\n" + FORMAT_REMINDER
    )


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


# -- applying ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    start: int  # first line of the match in the file
    prefix: str = ""  # whitespace to add to (or remove from) replacement lines
    add: bool = True  # True: the file is indented deeper than the SEARCH by ``prefix``


def apply_edit(source: str, edit: Edit) -> str:
    """Return ``source`` with ``edit`` applied; raise ``EditError`` when it does not fit once."""
    crlf = "\r\n" in source
    text = source.replace("\r\n", "\n")
    if edit.content is not None:
        return _restore(edit.content.replace("\r\n", "\n"), crlf)
    assert edit.search is not None and edit.replace is not None  # guaranteed by Edit
    search = edit.search.replace("\r\n", "\n")
    replace = edit.replace.replace("\r\n", "\n")
    if not search.strip():
        raise EditError(
            f"A SEARCH block for {edit.path} is empty. Copy a few existing lines to anchor the "
            "change (and repeat them in the REPLACE part), or send the complete file in a "
            "<<<<<<< WHOLE FILE block."
        )

    file_lines = _lines(text)
    search_lines = _lines(search)
    replace_lines = _lines(replace)

    exact = _find_lines(file_lines, search_lines)
    if len(exact) == 1:
        return _restore(_splice(text, file_lines, exact[0], len(search_lines), replace_lines), crlf)
    if len(exact) > 1:
        raise _ambiguous(edit.path, search_lines, [m.start for m in exact])

    # A fragment (not ending a line) may sit inside a line; whole lines never match mid-line,
    # or "x = 1" would edit "max = 1".
    count = 0 if search.endswith("\n") else text.count(search)
    if count == 1:
        return _restore(text.replace(search, replace, 1), crlf)
    if count > 1:
        starts = _substring_lines(text, search)
        raise _ambiguous(edit.path, search_lines, starts)

    shifted = _find_shifted(file_lines, search_lines)
    if len(shifted) == 1:
        m = shifted[0]
        new = [_reindent(line, m) for line in replace_lines]
        return _restore(_splice(text, file_lines, m, len(search_lines), new), crlf)
    if len(shifted) > 1:
        raise _ambiguous(edit.path, search_lines, [m.start for m in shifted])

    raise EditError(_not_found(edit.path, file_lines, search_lines))


def apply_edits(files: dict[str, str], edits: Sequence[Edit]) -> dict[str, str]:
    """Dry-run every edit against ``files`` and return the new contents (inputs unchanged).

    Edits apply in order, so a later edit sees the earlier ones. A SEARCH/REPLACE edit on a path
    that is not in ``files`` is an error; a whole-file edit may name a new path (the guard
    decides whether it may exist).
    """
    out = dict(files)
    for n, edit in enumerate(edits, start=1):
        where = f"Edit {n} of {len(edits)} ({edit.path})"
        if edit.path not in out and edit.content is None:
            known = ", ".join(sorted(files)) or "none"
            raise EditError(
                f"{where}: there is no file {edit.path!r}. The files you can edit are: {known}. "
                "Write the path exactly as shown."
            )
        try:
            out[edit.path] = apply_edit(out.get(edit.path, ""), edit)
        except EditError as e:
            raise type(e)(f"{where}: {e}") from None
    return out


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _restore(text: str, crlf: bool) -> str:
    return text.replace("\n", "\r\n") if crlf else text


def _splice(text: str, file_lines: list[str], m: _Match, n: int, new: list[str]) -> str:
    out = file_lines[: m.start] + new + file_lines[m.start + n :]
    joined = "\n".join(out)
    if out and text.endswith("\n"):  # keep the file's final newline, or its absence
        joined += "\n"
    return joined


def _find_lines(file_lines: list[str], search_lines: list[str]) -> list[_Match]:
    n = len(search_lines)
    first = search_lines[0]
    return [
        _Match(i)
        for i in range(len(file_lines) - n + 1)
        if file_lines[i] == first and file_lines[i : i + n] == search_lines
    ]


def _substring_lines(text: str, search: str) -> list[int]:
    starts, at = [], text.find(search)
    while at != -1:
        starts.append(text.count("\n", 0, at))
        at = text.find(search, at + 1)
    return starts


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _find_shifted(file_lines: list[str], search_lines: list[str]) -> list[_Match]:
    """Windows equal to the SEARCH up to one uniform indentation shift (and trailing spaces)."""
    n = len(search_lines)
    k = next(j for j, s in enumerate(search_lines) if s.strip())  # first non-blank line
    matches = []
    for i in range(len(file_lines) - n + 1):
        f0, s0 = file_lines[i + k], search_lines[k]
        if f0.strip() != s0.strip():
            continue
        fi, si = _indent(f0), _indent(s0)
        if fi.endswith(si):
            m = _Match(i, fi[: len(fi) - len(si)], add=True)
        elif si.endswith(fi):
            m = _Match(i, si[: len(si) - len(fi)], add=False)
        else:
            continue
        if all(
            _shift_equal(f.rstrip(), s.rstrip(), m)
            for f, s in zip(file_lines[i : i + n], search_lines, strict=True)
        ):
            matches.append(m)
    return matches


def _shift_equal(f: str, s: str, m: _Match) -> bool:
    if not f and not s:
        return True
    return f == m.prefix + s if m.add else s == m.prefix + f


def _reindent(line: str, m: _Match) -> str:
    if not line.strip():
        return line
    if m.add:
        return m.prefix + line
    if line.startswith(m.prefix):
        return line[len(m.prefix) :]
    return line[min(len(_indent(line)), len(m.prefix)) :]  # less indented than the shift


def _first_line(search_lines: list[str]) -> str:
    """The first non-blank SEARCH line, stripped (names the SEARCH text in messages)."""
    return next((s.strip() for s in search_lines if s.strip()), "")


def _ambiguous(path: str, search_lines: list[str], starts: list[int]) -> EditError:
    where = ", ".join(str(s + 1) for s in starts[:8])
    first = _first_line(search_lines)
    return EditError(
        f"The SEARCH text for {path} (starting {first!r}) matches {len(starts)} places "
        f"(lines {where}); it must match exactly once. Add neighbouring lines to the SEARCH "
        "part (and to the REPLACE part) so that it names one place."
    )


def _not_found(path: str, file_lines: list[str], search_lines: list[str]) -> str:
    first = _first_line(search_lines)
    msg = [
        f"The SEARCH text for {path} (starting {first!r}) was not found. SEARCH must copy "
        "existing lines exactly, including indentation, comments and blank lines."
    ]
    if any(s.strip() in ("...", "# ...", "…") for s in search_lines):
        msg.append("Do not abbreviate with '...': copy every line you want to replace.")
    hint = closest_lines(file_lines, search_lines)
    if hint is not None:
        start, window = hint
        body = "\n".join(window)
        msg.append(
            f"Did you mean these lines ({start + 1}-{start + len(window)} of the current "
            f"file)?\n{fence(body)}"
        )
    return "\n".join(msg)


def closest_lines(
    file_lines: list[str], search_lines: list[str], *, cutoff: float = 0.5
) -> tuple[int, list[str]] | None:
    """The window of the file most like the SEARCH lines (start index, lines), if any is close.

    Only a hint for the error message; never used to apply an edit.
    """
    n = min(len(search_lines), len(file_lines))
    if n == 0:
        return None
    target = "\n".join(s.strip() for s in search_lines)
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(target)
    best, best_ratio = -1, cutoff
    for i in range(len(file_lines) - n + 1):
        window = "\n".join(f.strip() for f in file_lines[i : i + n])
        matcher.set_seq1(window)
        if matcher.real_quick_ratio() <= best_ratio or matcher.quick_ratio() <= best_ratio:
            continue
        ratio = matcher.ratio()
        if ratio > best_ratio:
            best, best_ratio = i, ratio
    if best < 0:
        return None
    return best, file_lines[best : best + n]
