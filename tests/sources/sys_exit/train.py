"""train() calls sys.exit: still a crash, not a clean exit."""

import sys


def train(run):
    sys.exit(3)
