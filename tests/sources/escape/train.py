"""Tries to leave its sandbox: read the file named by $ESCAPE_READ (the validation split),
create $ESCAPE_WRITE, connect to 127.0.0.1:$ESCAPE_PORT, run `cat` on the split, and signal
the process that started it (the runner, or a fork server). Prints what happened to each, and
how many sockets it was born holding (a way back to whoever started it), then returns an
honest bigram model."""

import contextlib
import os
import socket
import subprocess

from torch import nn


def _try(what, action):
    try:
        action()
        print(f"escape {what}: done", flush=True)
    except OSError as e:
        print(f"escape {what}: {e.strerror}", flush=True)


def _read():
    with open(os.environ["ESCAPE_READ"], "rb") as f:
        f.read(16)


def _write():
    with open(os.environ["ESCAPE_WRITE"], "w") as f:
        f.write('{"val_bpb": 0.01}')


def _connect():
    with socket.create_connection(("127.0.0.1", int(os.environ["ESCAPE_PORT"])), timeout=5):
        pass


def _shell():
    done = subprocess.run(["cat", os.environ["ESCAPE_READ"]], capture_output=True)
    if done.returncode != 0:
        raise PermissionError(13, done.stderr.decode().strip().rsplit(": ", 1)[-1])


def _signal():
    os.kill(os.getppid(), 0)  # only asks whether it could


def _sockets(run):
    """Sockets held besides the process's own channel to the runner's broker."""
    channel = str(run._channel.fileno())
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held += fd != channel and os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return held


def train(run):
    print(f"escape sockets: {_sockets(run)}", flush=True)  # before it opens any itself
    run.get_batch(1, 8)
    for what, action in (("read", _read), ("write", _write), ("connect", _connect),
                         ("shell", _shell), ("signal", _signal)):
        _try(what, action)
    return nn.Embedding(run.vocab_size, run.vocab_size).to(run.device).eval()
