"""autoresearch: automated ML research on a nanoGPT training script."""

import os

__version__ = "0.1.0"

# GitPython refuses to be imported when no git is on PATH, which would make every command a
# traceback. Let it import: `autoresearch doctor` then says git is missing, in one line.
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
