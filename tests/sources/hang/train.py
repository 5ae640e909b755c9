"""Starts a child process, prints its pid, then never returns."""

import subprocess
import sys
import time


def train(run):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"child pid {child.pid}", flush=True)
    while True:
        time.sleep(1)
