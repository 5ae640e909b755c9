"""Exception classes shared across the package.

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
