"""Starts a child process, writes its pid to $HANG_PID_FILE, then never returns."""

import os
import subprocess
import sys
import time


def train(run):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["HANG_PID_FILE"], "w") as f:
        f.write(str(child.pid))
    while True:
        time.sleep(1)
