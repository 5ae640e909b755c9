"""The agent's notebook: a ``NOTES:`` block at the start of an answer that the loop keeps.

A model call remembers nothing; past the history window a model rediscovers dead ends. An
answer may carry its own memory: everything from a line starting ``NOTES:`` up to the
``TITLE:`` line. The loop records it with the call (``AgentCall.notes``) and shows the run's
newest notes in every later prompt, so the model rewrites them each call. Text before
``NOTES:`` (thinking aloud) stays ignored, as does an answer without the block (the previous
notes stay in force).
"""

from __future__ import annotations

import re

MAX_NOTES_CHARS = 6000  # kept of one block (about 1,500 tokens): a notebook, not a diary
_NOTES = re.compile(r"^[ \t*_#]*NOTES[*_]*:[*_]*[ \t]*(?P<first>.*)$", re.MULTILINE)
_TITLE = re.compile(r"^[ \t*_#]*TITLE[*_]*:", re.MULTILINE)


def notes_of(text: str | None) -> str | None:
    """The NOTES block of an answer (trimmed, bounded), or None when it has none (or an empty
    one): the lines from ``NOTES:`` to the first ``TITLE:`` after it."""
    if not text:
        return None
    text = text.replace("\r\n", "\n")
    start = _NOTES.search(text)
    if start is None:
        return None
    end = _TITLE.search(text, start.end())
    if end is None:
        return None  # no proposal after it: not the block the format describes
    body = (start.group("first") + "\n" + text[start.end():end.start()]).strip()
    if not body:
        return None
    if len(body) > MAX_NOTES_CHARS:
        body = body[:MAX_NOTES_CHARS].rstrip() + "\n[... the notes were cut here: keep them " \
            f"under {MAX_NOTES_CHARS} characters]"
    return body
