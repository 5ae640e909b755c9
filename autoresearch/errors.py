"""Exception classes shared across the package, and ``one_line``, which words their messages.

Only ``cli`` turns these into exit codes: ``UsageError`` -> 2, any other ``AutoresearchError`` -> 1.
"""


class AutoresearchError(Exception):
    """A failure the user should see as one clear line."""


class UsageError(AutoresearchError):
    """Bad input from the user: unknown id, bad flag combination, missing workspace."""


class DataError(AutoresearchError):
    """A dataset could not be prepared (bad hash, empty or non-UTF-8 text, ...)."""


class StoreError(AutoresearchError):
    """The results database could not be read or written."""


def one_line(text: object, limit: int = 300, *, default: str = "no reason given") -> str:
    """The first line of ``text`` with its whitespace collapsed, cut to ``limit`` characters
    (ending in "…" when cut); for a blank text (or None), ``default``, or an exception's type
    name.
    Every one-line reason the package stores or shows (a failure, a history entry, a provider's
    error) is made here."""
    lines = [] if text is None else str(text).strip().splitlines()
    line = " ".join(lines[0].split()) if lines else ""
    if not line:
        return type(text).__name__ if isinstance(text, BaseException) else default
    return line if len(line) <= limit else line[: limit - 1] + "…"
