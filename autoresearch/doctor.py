"""`autoresearch doctor`: is this machine ready for `autoresearch loop`?

One ``Check`` per thing the loop relies on, each ok, warning (works, but not as well as it
could, or only for some settings) or missing (cannot work), with what to do about it. A
missing check marked ``needed`` is one the loop with these settings cannot run without:
`doctor` then exits 1. Checks look, they do not change anything: the only things they write
are a temporary file in the workspace (to prove it is writable) and the compile probe's cache.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from autoresearch import data as data_mod
from autoresearch import integrity, sandbox
from autoresearch.config import Settings
from autoresearch.errors import UsageError, one_line
from autoresearch.runner import forks

State = Literal["ok", "warning", "missing"]
MIN_PYTHON = (3, 11)
MIN_TORCH = (2, 3)
MIN_GIT = (2, 25)  # worktrees and three-way apply as the workspace uses them
LOW_DISK = 2 * 1024**3  # bytes: below this, a warning (a GPU run's logs and worktrees add up)
NO_DISK = 200 * 1024**2  # bytes: below this, the loop would fail mid-run
URL_TIMEOUT = 5.0  # seconds for the base URL and the Ray address to answer
COMPILE_TIMEOUT = 300.0  # seconds for torch.compile of a tiny model (a cold CPU compile: ~20)
KEY_VARS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
BASE_URL_VARS = ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")

# run in a fresh Python: a crash or a hang in the compiler stack cannot take doctor with it
_COMPILE_PROBE = """
import sys, time, torch
device = sys.argv[1]
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(),
                            torch.nn.Linear(64, 32)).to(device)
x = torch.randn(8, 32, device=device)
start = time.perf_counter()
y = torch.compile(model)(x)
took = time.perf_counter() - start
if not torch.allclose(y, model(x), atol=1e-3, rtol=1e-3):
    sys.exit("the compiled model's output differs from the eager one")
print(f"{took:.1f}")
"""

# run in a fresh Python: fenced in with the training process's rules, it must fail to read a
# file outside them (argv: a folder it may use, the file it must not read)
_FENCE_PROBE = """
import sys
from pathlib import Path
from autoresearch import sandbox
allowed, forbidden = Path(sys.argv[1]), Path(sys.argv[2])
read, write = sandbox.default_paths(allowed, allowed)
print(sandbox.restrict(read, write))
try:
    forbidden.read_bytes()
except PermissionError:
    print("blocked")
else:
    print("read")
"""


@dataclass(frozen=True)
class Check:
    name: str
    state: State
    detail: str  # what was found
    fix: str = ""  # what to do about it
    needed: bool = False  # the loop with these settings cannot run while this is missing

    @property
    def blocking(self) -> bool:
        return self.state == "missing" and self.needed

    def line(self) -> str:
        text = f"{self.state:<8} {self.name:<11} {self.detail}"
        return text + (f" — {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Report:
    device: str  # the device the loop would train on with these settings
    checks: list[Check]

    @property
    def ready(self) -> bool:
        return not any(c.blocking for c in self.checks)

    def summary(self) -> str:
        warnings = sum(c.state == "warning" for c in self.checks)
        blocking = [c.name for c in self.checks if c.blocking]
        if blocking:
            return (f"not ready: `autoresearch loop` on {self.device} needs "
                    f"{', '.join(blocking)} (see above)")
        note = f" ({warnings} warning{'s' * (warnings != 1)})" if warnings else ""
        return f"ready: `autoresearch loop` can run on {self.device}{note}"

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "ready": self.ready,
                "checks": [{"name": c.name, "state": c.state, "detail": c.detail, "fix": c.fix,
                            "blocking": c.blocking} for c in self.checks]}


def diagnose(settings: Settings, *, env: Mapping[str, str] | None = None,
             compile_check: bool = True) -> Report:
    """Every check for a loop with ``settings`` on this machine. A bad device name is a
    UsageError; nothing else raises."""
    environ = os.environ if env is None else env
    checks = [_python()]
    torch, torch_check = _torch()
    checks.append(torch_check)
    device = _device(settings.device, torch)
    if torch is not None:
        checks += _devices(torch, settings.device, device)
        checks += _precision(torch, device)
        checks.append(_compile(device) if compile_check else Check(
            "compile", "warning", "not checked (--quick)",
            "run `autoresearch doctor` without --quick to try torch.compile here"))
    checks.append(_sandbox(settings.sandbox))
    checks.append(_processes(device))
    checks.append(_git())
    checks += _workspace(settings.workspace)
    checks.append(_dataset(settings.dataset))
    base_url = settings.base_url or next(
        (environ[v] for v in BASE_URL_VARS if environ.get(v)), None)
    checks.append(_keys(environ, settings.agent, base_url))
    checks.append(_base_url(base_url))
    checks += _ray(settings.backend, settings.ray_address or environ.get("RAY_ADDRESS"))
    return Report(device, checks)


# -- Python and torch -----------------------------------------------------------------------------
def _python() -> Check:
    v = sys.version_info
    detail = f"{v.major}.{v.minor}.{v.micro} ({sys.executable})"
    if (v.major, v.minor) < MIN_PYTHON:
        return Check("python", "missing", detail, "autoresearch needs Python 3.11 or newer",
                     needed=True)
    return Check("python", "ok", detail)


def _torch() -> tuple[Any, Check]:
    try:
        import torch
    except ImportError as e:
        return None, Check("torch", "missing", f"cannot import torch: {one_line(e)}",
                           "pip install torch (see the README's Install section)", needed=True)
    version = torch.__version__
    cuda, hip = torch.version.cuda, getattr(torch.version, "hip", None)
    build = f"CUDA {cuda} build" if cuda else f"ROCm {hip} build" if hip else "CPU build"
    detail = f"{version} ({build})"
    if _version(version) < MIN_TORCH:
        return torch, Check("torch", "missing", detail, "autoresearch needs torch 2.3 or newer: "
                            "pip install -U torch", needed=True)
    if not (cuda or hip) and _nvidia_present():
        return torch, Check("torch", "warning", detail + " on a machine with an NVIDIA GPU",
                            "install a CUDA build: pip install -U torch (PyPI's Linux wheels "
                            "are CUDA builds)")
    return torch, Check("torch", "ok", detail)


def _nvidia_present() -> bool:
    return Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia").is_dir()


def _device(asked: str, torch: Any) -> str:
    """The device the loop would train on: "auto" resolved the way the runner does it."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", asked):
        raise UsageError(f"unknown device {asked!r}: use auto, cpu, cuda, cuda:N or mps")
    if asked != "auto":
        return asked
    if torch is None:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def _devices(torch: Any, asked: str, device: str) -> list[Check]:
    out: list[Check] = []
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        for i in range(count):
            p = torch.cuda.get_device_properties(i)
            out.append(Check(f"cuda:{i}", "ok", f"{p.name}, {p.total_memory / 1024**3:.0f} GiB, "
                             f"compute capability {p.major}.{p.minor}"))
        if _cuda_index(device) >= count:
            out.append(Check("cuda", "missing", f"{device} does not exist here ({count} CUDA "
                             f"device{'s' * (count != 1)})", "name one of the devices above",
                             needed=True))
    else:
        why = ("torch is a CPU build" if not torch.version.cuda else
               f"torch is a CUDA {torch.version.cuda} build but sees no GPU (no driver, or "
               "CUDA_VISIBLE_DEVICES hides them)")
        if device.startswith("cuda"):
            out.append(Check("cuda", "missing", f"no CUDA device: {why}",
                             "install the NVIDIA driver and a CUDA build of torch, or train "
                             "with --device cpu", needed=True))
        elif asked == "auto" and device == "cpu":
            out.append(Check("cuda", "warning", f"no CUDA device ({why}): the loop trains on "
                             "the CPU, which suits only tiny models"))
        else:
            out.append(Check("cuda", "ok", f"none ({why}); not needed for --device {device}"))
    mps = getattr(torch.backends, "mps", None)
    if sys.platform == "darwin" and mps is not None:
        if mps.is_available():
            out.append(Check("mps", "ok", "Apple GPU available"))
        else:
            out.append(Check("mps", "missing" if device == "mps" else "warning",
                             "no Apple GPU (MPS) available", needed=device == "mps"))
    return out


def _precision(torch: Any, device: str) -> list[Check]:
    if device.startswith("cuda") and torch.cuda.is_available():
        index = _cuda_index(device)
        if index >= torch.cuda.device_count():
            return []  # said by the cuda check
        major, minor = torch.cuda.get_device_capability(index)
        ampere = major >= 8
        bf16 = (Check("bf16", "ok", "native bf16 (the CUDA preset's autocast)") if ampere else
                Check("bf16", "warning", f"no native bf16 before compute capability 8.0 (this "
                      f"GPU: {major}.{minor}): the baseline's CUDA preset autocasts to bf16",
                      "set BF16=False in the CUDA preset of baseline/train.py"))
        tf32 = (Check("tf32", "ok", "TF32 matmuls (the baseline turns them on)") if ampere else
                Check("tf32", "warning", f"no TF32 before compute capability 8.0 (this GPU: "
                      f"{major}.{minor}): fp32 matmuls run at full precision and cost"))
        return [bf16, tf32]
    if device == "cpu":
        flags = _cpu_flags()
        native = sorted(flags & {"avx512_bf16", "amx_bf16"})
        try:
            a = torch.ones(4, 4, dtype=torch.bfloat16)
            ok = bool((a @ a).float().sum().item() == 64.0)
        except RuntimeError:
            ok = False
        if not ok:
            return [Check("bf16", "warning", "bf16 matmuls fail on this CPU",
                          "leave BF16=False in the CPU preset")]
        how = f"native ({', '.join(native)})" if native else "emulated: slower than fp32"
        return [Check("bf16", "ok", f"bf16 works, {how}; the CPU preset leaves it off")]
    return []


def _cuda_index(device: str) -> int:
    """"cuda:2" -> 2; "cuda" -> 0 (and -1 for a device that is not CUDA)."""
    if not device.startswith("cuda"):
        return -1
    return int(device.partition(":")[2] or 0)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _compile(device: str) -> Check:
    """torch.compile of a tiny model on ``device``, in a fresh Python."""
    on_gpu = device.startswith("cuda")
    fix = ("the baseline's CUDA preset compiles: set COMPILE=False there, or fix the error"
           if on_gpu else "the CPU preset does not compile; a C++ compiler on PATH (g++) is "
           "what torch.compile needs on a CPU")
    try:
        done = subprocess.run([sys.executable, "-c", _COMPILE_PROBE, device],
                              capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return Check("compile", "missing" if on_gpu else "warning",
                     f"torch.compile of a tiny model took over {COMPILE_TIMEOUT:g} s", fix,
                     needed=on_gpu)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        return Check("compile", "missing" if on_gpu else "warning",
                     f"torch.compile failed on {device}: "
                     f"{one_line(lines[-1] if lines else done.returncode, 200)}", fix,
                     needed=on_gpu)
    took = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "?"
    return Check("compile", "ok", f"torch.compile works on {device} (a tiny model in {took} s)")


# -- the fence and the processes --------------------------------------------------------------
def _sandbox(enabled: bool) -> Check:
    if not enabled:
        return Check("sandbox", "warning", "off in the settings (sandbox = false): training "
                     "runs unfenced", "remove the setting unless a setup it blocks is being "
                     "debugged")
    version = sandbox.abi()
    if version == 0:
        return Check("sandbox", "warning", f"no Landlock: {_no_landlock_reason()}; training "
                     "runs unfenced (each measurement records sandbox none)",
                     "on Linux 5.13+, enable Landlock (landlock in the lsm= boot parameter); "
                     "the guard and the separate evaluation still apply")
    probe = _fence_probe()
    if probe != "blocked":
        return Check("sandbox", "warning", f"Landlock ABI v{version}, but the fence did not "
                     f"hold in a test: {probe}",
                     "report this: a fenced training process could read outside its folders")
    net = "files and network" if version >= 4 else "files (network too from ABI v4)"
    return Check("sandbox", "ok", f"Landlock ABI v{version}: a fenced process could not read "
                 f"outside its folders ({net} are fenced)")


def _no_landlock_reason() -> str:
    if not sys.platform.startswith("linux"):
        return f"Landlock is Linux-only (this is {sys.platform})"
    release = platform.release()
    if _version(release) < (5, 13):
        return f"kernel {release} is older than 5.13"
    return f"kernel {release} has Landlock disabled or not built in"


def _fence_probe() -> str:
    """"blocked" when a process fenced in like the training process cannot read a file
    outside its folders, else what happened."""
    with tempfile.TemporaryDirectory(prefix="autoresearch-doctor-") as d:
        allowed, outside = Path(d) / "allowed", Path(d) / "outside"
        allowed.mkdir()
        outside.mkdir()
        secret = outside / "secret.txt"
        secret.write_text("not for the training process\n", encoding="utf-8")
        env = integrity.child_env(None)
        try:
            done = subprocess.run([sys.executable, "-c", _FENCE_PROBE, str(allowed),
                                   str(secret)], capture_output=True, text=True, timeout=60,
                                  env=env, cwd=allowed)
        except subprocess.TimeoutExpired:
            return "the probe did not finish in 60 s"
    words = done.stdout.split()
    if done.returncode != 0 or not words:
        return one_line(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                        else f"the probe exited {done.returncode}")
    return "blocked" if words[-1] == "blocked" else "a file outside the fence was readable"


def _processes(device: str) -> Check:
    if not device.startswith("cpu"):
        return Check("processes", "ok", "started ahead while the previous job trains, never "
                     "forked: a process that has initialised the GPU cannot be forked safely")
    if forks.available():
        return Check("processes", "ok", "fork servers: each job's processes are forks of one "
                     "server per phase that imported torch once")
    return Check("processes", "ok", "started ahead while the previous job trains (no fork "
                 f"servers: they need Linux pidfds and descriptor passing, not {sys.platform})")


# -- git, the workspace, the data -----------------------------------------------------------------
def _git() -> Check:
    exe = shutil.which("git")
    if exe is None:
        return Check("git", "missing", "git is not on PATH",
                     "install git (apt-get install git): every experiment is a commit in a git "
                     "repository", needed=True)
    try:
        done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("git", "missing", f"{exe} does not run: {one_line(e)}", needed=True)
    text = done.stdout.strip()
    if _version(text.removeprefix("git version ")) < MIN_GIT:
        return Check("git", "warning", f"{text} ({exe})", "git 2.25 or newer is tested; "
                     "upgrade git if worktrees or three-way applies fail")
    return Check("git", "ok", f"{text} ({exe})")


def _workspace(root: Path) -> list[Check]:
    root = root.expanduser()
    where = root.resolve() if root.exists() else root.absolute()
    if (root / "baseline" / "train.py").is_file():
        ws = Check("workspace", "ok", f"{where} (baseline/train.py present)")
    else:
        ws = Check("workspace", "warning", f"{where} has no baseline/train.py yet",
                   f"create one with `autoresearch init {root}`")
    existing = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free if existing.is_dir() else 0
    problem = _unwritable(existing)
    if problem:
        return [ws, Check("disk", "missing", f"cannot write in {existing}: {problem}",
                          "results.db and experiments/ live in the workspace: give a folder "
                          "you can write to (--workspace DIR)", needed=True)]
    size = f"{free / 1024**3:.1f} GiB free at {existing}"
    if free < NO_DISK:
        return [ws, Check("disk", "missing", size, "free some space: each experiment keeps a "
                          "worktree, logs and a model artifact while it runs", needed=True)]
    if free < LOW_DISK:
        return [ws, Check("disk", "warning", size, "a long run needs a few GiB")]
    return [ws, Check("disk", "ok", size + ", writable")]


def _unwritable(folder: Path) -> str:
    """"" when a file can be created (and removed) in ``folder``, else why not."""
    if not folder.is_dir():
        return "not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".autoresearch-doctor-", dir=folder)
    except OSError as e:
        return e.strerror or one_line(e)
    os.close(fd)
    os.unlink(name)
    return ""


def _dataset(dataset: str) -> Check:
    cache = data_mod.cache_dir()
    folders = {p.parent.name.rsplit("-", 1)[0]: p.parent
               for p in (sorted(cache.glob("*-*/meta.json")) if cache.is_dir() else [])}
    others = f" (prepared: {', '.join(sorted(folders))})" if folders else ""
    if dataset not in ("shakespeare", "offline"):
        path = Path(dataset).expanduser()
        if not path.exists():
            return Check("dataset", "missing", f"{dataset} does not exist",
                         "give --dataset shakespeare, offline, or a .txt file or folder",
                         needed=True)
        return Check("dataset", "ok", f"{path} exists (prepared into {cache} on first use)")
    prepared = list(folders)
    if dataset in folders:
        nowhere = Path(tempfile.gettempdir()) / "autoresearch-doctor-no-job"
        exposed = integrity.dataset_exposed(folders[dataset], nowhere, nowhere)
        if exposed:
            return Check("dataset", "warning", f"{dataset} prepared in {cache}{exposed}",
                         "move the cache out of the Python folders: set AUTORESEARCH_CACHE")
    if dataset in prepared:
        return Check("dataset", "ok", f"{dataset} prepared in {cache}{others}")
    problem = _unwritable(next(p for p in (cache, *cache.parents) if p.exists()))
    if problem:
        return Check("dataset", "missing", f"{dataset} not prepared, and the cache {cache} "
                     f"cannot be written: {problem}", "set AUTORESEARCH_CACHE to a folder you "
                     "can write to", needed=True)
    how = ("the first loop downloads it (1 MB; without network it falls back to the offline "
           "corpus)" if dataset == "shakespeare" else "the first loop builds it")
    return Check("dataset", "warning", f"{dataset} not prepared yet in {cache}{others}",
                 f"{how}; or now: autoresearch prepare --dataset {dataset}")


# -- the agent: keys and base URL -----------------------------------------------------------------
def _keys(env: Mapping[str, str], agent: str, base_url: str | None) -> Check:
    set_ = [v for v in KEY_VARS.values() if env.get(v, "").strip()]
    unset = [v for v in KEY_VARS.values() if v not in set_]
    detail = "; ".join([*(f"{v} set" for v in set_), *(f"{v} not set" for v in unset)])
    if agent in KEY_VARS and KEY_VARS[agent] not in set_ and not base_url:
        return Check("api keys", "missing", detail, f"export {KEY_VARS[agent]}=... for "
                     f"--agent {agent}", needed=True)
    if agent not in ("auto", *KEY_VARS):
        return Check("api keys", "ok", f"{detail}: none needed for --agent {agent}")
    if not set_:
        return Check("api keys", "warning", detail + ": --agent auto uses the offline "
                     "playbook agent", "export ANTHROPIC_API_KEY or OPENAI_API_KEY for an "
                     "LLM agent")
    first = next(p for p, v in KEY_VARS.items() if v in set_)
    return Check("api keys", "ok", f"{detail}: --agent auto uses {first}")


def _base_url(url: str | None) -> Check:
    if not url:
        return Check("base url", "ok", "none set: the providers' own endpoints (not checked)")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return Check("base url", "missing", f"{url} is not an http(s) URL",
                     "give e.g. --base-url http://localhost:8000/v1", needed=True)
    probe = url.rstrip("/") + "/models"  # what OpenAI-compatible servers list models at
    request = urllib.request.Request(probe, headers={"User-Agent": "autoresearch-doctor"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code  # it answered: an error status still means a server is there
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        return Check("base url", "missing", f"{url} does not answer: {one_line(reason)}",
                     "start the server, or fix --base-url / OPENAI_BASE_URL", needed=True)
    ms = (time.monotonic() - start) * 1000
    note = " (it wants a key)" if status in (401, 403) else ""
    return Check("base url", "ok", f"{url} answers (HTTP {status} from /models in "
                 f"{ms:.0f} ms){note}")


# -- Ray --------------------------------------------------------------------------------------
def _ray(backend: str, address: str | None) -> list[Check]:
    needed = backend == "ray"
    if importlib.util.find_spec("ray") is None:
        out = [Check("ray", "missing" if needed else "warning", "not installed: only the "
                     "local backend is available", "pip install 'autoresearch[ray]' for "
                     "--backend ray", needed=needed)]
    else:
        try:
            version = importlib.metadata.version("ray")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        out = [Check("ray", "ok", f"ray {version} installed (--backend ray)")]
    if address and address not in ("auto", "local"):
        out.append(_ray_address(address, needed))
    return out


def _ray_address(address: str, needed: bool) -> Check:
    """Does something that speaks HTTP/2 (Ray's GCS speaks gRPC) answer at HOST:PORT?"""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return Check("ray cluster", "missing", f"bad address {address!r}",
                     "give HOST:PORT, e.g. --ray-address 10.0.0.1:6379", needed=needed)
    fix = "start one with `ray start --head`, or fix --ray-address / RAY_ADDRESS"
    state: State = "missing" if needed else "warning"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=URL_TIMEOUT) as s:
            s.settimeout(URL_TIMEOUT)
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            first = s.recv(9)
    except OSError as e:
        return Check("ray cluster", state, f"nothing answers at {address}: {one_line(e)}",
                     fix, needed=needed)
    if len(first) < 9 or first[3] != 0x04:  # a gRPC server's first frame: SETTINGS (type 4)
        return Check("ray cluster", state, f"something listens at {address}, but it does not "
                     "speak Ray's protocol", fix, needed=needed)
    return Check("ray cluster", "ok", f"a gRPC server (Ray's GCS) answers at {address}")


def _version(text: str) -> tuple[int, ...]:
    """"2.13.0+cpu" -> (2, 13, 0); "6.18.44-fc" -> (6, 18, 44); junk -> (0,)."""
    m = re.match(r"\s*(\d+(?:\.\d+)*)", text)
    return tuple(int(x) for x in m.group(1).split(".")) if m else (0,)
