"""``ast.parse``, one call at a time in this process.

CPython 3.11 can fail with "SystemError: AST constructor recursion depth mismatch" when two
threads build ASTs at once (python/cpython gh-106905; the recursion counter of the AST
constructor was shared). The loop's proposers and workers check sources (guard, playbook)
in threads of their own, so every parse in the orchestrator goes through this lock.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str | bytes, filename: str = "<unknown>") -> ast.Module:
    with _LOCK:
        return ast.parse(source, filename=filename)
