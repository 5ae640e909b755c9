"""An OS-level fence around the training process: Linux Landlock, applied by the harness to
itself after it has loaded the train split and before it imports the agent's code.

Landlock (Linux >= 5.13) lets an unprivileged process give up access for good, for itself and
every process it starts. The training process keeps:

- read and execute: the system (/usr, /lib, /etc, /sys, /bin, /sbin, /run), Python (its
  prefixes and every sys.path folder, which hold torch and the harness) and the experiment's
  source folder; of /proc only its own entries (``/proc/self``) and the machine-wide ones
  that describe the hardware (cpuinfo, meminfo, stat, sys, driver, ...): never another
  process's command line, environment or memory;
- read and write: its scratch folder (its home, temporary folder and compiler caches, removed
  with the measurement) and the device files in /dev (GPUs, /dev/null), but not /dev/shm or
  /dev/mqueue, where a measurement could leave something for the next one;
- no TCP connect or bind (kernel ABI >= 4), and no signals to processes outside the sandbox
  (ABI >= 6).

Everything else — the dataset cache with the validation split, the workspace, the results
database, the home folder — cannot be opened at all, whatever the code does. Where Landlock is
missing (macOS, old or unconfigured kernels), :func:`restrict` says so and the measurement
records ``sandbox: none``; the static guard and the separate evaluation process still apply.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on every arch
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# filesystem access rights, and the ABI version that introduced each
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_REMOVE_DIR, _REMOVE_FILE, _MAKE_CHAR, _MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
_MAKE_REG, _MAKE_SOCK, _MAKE_FIFO, _MAKE_BLOCK, _MAKE_SYM = (1 << 8, 1 << 9, 1 << 10, 1 << 11,
                                                            1 << 12)
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_V1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FS_ADDED = ((2, _REFER), (3, _TRUNCATE), (5, _IOCTL_DEV))  # (ABI, right it introduced)
_FILE_ONLY = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV  # a file rule's rights
_READ = _EXECUTE | _READ_FILE | _READ_DIR
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

# not /opt, /srv, /mnt, /home: where people keep data. A conda in /opt is Python's prefix.
SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/sys", "/run",
               "/nix")
# machine-wide /proc entries torch, OpenMP and the CUDA driver read; no /proc/PID but our own
PROC_READ = ("cpuinfo", "meminfo", "stat", "loadavg", "uptime", "version", "filesystems",
             "devices", "sys", "driver", "self", "thread-self")
DEV_HIDDEN = ("shm", "mqueue")  # shared between processes: a way to leave notes for the next


class SandboxError(Exception):
    """Landlock is there but refused the ruleset."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        version = _libc().syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def default_paths(source: Path, scratch: Path, extra_write: Iterable[str] = ()
                  ) -> tuple[list[str], list[str]]:
    """(read-only, read-write) folders for a training process in ``scratch`` running
    ``source``: the system, Python and its import path, plus the named caches."""
    read = [*SYSTEM_READ, *proc_paths(), sys.prefix, sys.base_prefix, sys.exec_prefix,
            str(source), *(p for p in sys.path if p)]
    write = [*dev_paths(), str(scratch), *extra_write]
    return read, write


def proc_paths() -> list[str]:
    """The /proc entries a fenced process may read: its own (``self`` resolves to its pid's
    folder when the rule is made, in the process that fences itself) and the machine's."""
    return [os.path.realpath(f"/proc/{name}") for name in PROC_READ]


def dev_paths() -> list[str]:
    """Every device and folder in /dev but the shared-memory folders (not the links, such as
    /dev/stderr, which lead to the process's own descriptors)."""
    try:
        entries = sorted(os.scandir("/dev"), key=lambda e: e.name)
    except OSError:
        return []
    return [e.path for e in entries if e.name not in DEV_HIDDEN and not e.is_symlink()
            and (e.is_dir(follow_symlinks=False) or stat.S_ISCHR(e.stat().st_mode)
                 or stat.S_ISBLK(e.stat().st_mode))]


def restrict(read: Iterable[str], write: Iterable[str]) -> str:
    """Fence this process (and its future children) in. Returns "landlock vN" when the fence
    is up, or "none (why)" when this system has no Landlock; raises SandboxError when Landlock
    refused a ruleset it should have taken."""
    version = abi()
    if version < 1:
        return "none (no Landlock on this system)"
    fs = _FS_V1
    for since, right in _FS_ADDED:
        fs |= right if version >= since else 0
    attr = _RulesetAttr(handled_access_fs=fs)
    size = 8
    if version >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
        size = 16
    if version >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        size = 24
    libc = _libc()
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        raise SandboxError(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for paths, access in ((read, _READ & fs), (write, fs)):
            for path in paths:
                _allow(libc, ruleset, path, access)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise SandboxError(f"prctl(NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            raise SandboxError(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return f"landlock v{version}"


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a folder this machine does not have
    try:
        if not os.path.isdir(path):
            access &= _FILE_ONLY
        rule = _PathBeneathAttr(allowed_access=access, parent_fd=fd)
        if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise SandboxError(f"landlock_add_rule({path}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
