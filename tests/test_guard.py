"""The guard: which paths may change and what a training script may contain."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from autoresearch import guard
from autoresearch.guard import GuardViolation, check_paths, check_source, find_violations

ROOT = Path(__file__).resolve().parents[1]

# A realistic CUDA-flavoured nanoGPT training script, written independently of baseline/: every
# performance knob a person would reach for on a GPU must pass the guard.
CUDA_SCRIPT = '''
"""nanoGPT-style trainer (CUDA flavour)."""
from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
import torch._dynamo
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import compile as torch_compile

BATCH_SIZE = 64  # sequences per step
LR = 6e-4  # peak learning rate
ACTIVATION = "GELU"  # any torch.nn activation class name
warnings.filterwarnings("ignore", category=UserWarning)
torch._dynamo.config.cache_size_limit = 64  # recompiles are setup time
torch._inductor.config.coordinate_descent_tuning = True


@dataclass
class GPTConfig:
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.flash = hasattr(F, "scaled_dot_product_attention")
        self.act = getattr(nn, ACTIVATION)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(heads={self.n_head})"


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, cfg: GPTConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, cfg.n_embd)
        self.pos = nn.Embedding(block, cfg.n_embd)
        self.blocks = nn.ModuleList(Attention(cfg) for _ in range(cfg.n_layer))
        self.head = nn.Linear(cfg.n_embd, vocab, bias=False)
        self.head.weight = self.tok.weight
        self.apply(partial(self._init, std=0.02))

    @staticmethod
    def _init(module: nn.Module, std: float) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = x + torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return self.head(x)


@torch.no_grad()
def grad_norm(model: nn.Module) -> float:
    return math.sqrt(sum(float(p.grad.norm() ** 2) for p in model.parameters()
                         if p.grad is not None))


def train(run):
    torch.manual_seed(run.seed)  # re-seeding from the given seed is harmless
    torch.cuda.manual_seed_all(run.seed)
    gen = torch.Generator(device=run.device)
    gen.manual_seed(run.seed + 1)
    rng = np.random.default_rng(run.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
    torch.set_num_threads(8)
    device = run.device
    use_cuda = torch.cuda.is_available() and device.startswith("cuda")
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda else nullcontext()
    model = GPT(run.vocab_size, run.seq_len, GPTConfig()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), fused=use_cuda)
    scaler = torch.cuda.amp.GradScaler(enabled=False)
    fast = torch_compile(model) if use_cuda else torch.compile(model, mode="max-autotune")
    t0 = time.perf_counter()
    step = 0
    while run.time_left() > 0 and run.tokens_left() >= BATCH_SIZE * run.seq_len:
        x, y = run.get_batch(BATCH_SIZE, run.seq_len)
        with ctx:
            logits = fast(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        step += 1
        if not math.isfinite(loss.item()):
            raise FloatingPointError("nan loss")
        if step % 100 == 0:
            torch.cuda.synchronize()
            run.log(step=step, loss=loss.item(), dt=time.perf_counter() - t0,
                    mem=torch.cuda.max_memory_allocated() / 2**20, noise=float(rng.random()),
                    torch=torch.__version__)
    try:
        torch.cuda.empty_cache()
    except Exception:
        pass
    return model.eval()


if __name__ == "__main__":
    print("run me through the harness")
'''


def rule_of(source: str) -> str:
    with pytest.raises(GuardViolation) as info:
        check_source("train.py", textwrap.dedent(source))
    return info.value.rule


# ----------------------------------------------------------------------------------------------
# Sources that must pass.


def test_the_unmodified_baseline_passes() -> None:
    baseline = ROOT / "baseline" / "train.py"
    check_source("train.py", baseline.read_text())


def test_a_realistic_cuda_training_script_passes() -> None:
    assert find_violations("train.py", CUDA_SCRIPT) == []


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.backends.cuda.matmul.allow_tf32 = True",
        "import torch\ntorch.backends.cudnn.benchmark = True",
        "import torch._dynamo\ntorch._dynamo.config.cache_size_limit = 64",
        "import torch\nsetattr(torch.backends.cudnn, 'benchmark', True)",
        "import torch\ntorch.set_float32_matmul_precision('high')\ntorch.set_num_threads(4)",
        "from torch import compile\nm = compile(model)",
        "import torch\nm = torch.compile(model)\nm.eval()",
        "def train(run):\n    import torch\n    torch.manual_seed(run.seed)",
        "def train(r):\n    import torch\n    g = torch.Generator()\n"
        "    g.manual_seed(r.seed * 7 + 1)",
        "def train(run):\n    import random\n    rnd = random.Random(run.seed)",
        "import numpy as np\nrng = np.random.default_rng()",
        "def train(run):\n    x, y = run.get_batch(8, run.seq_len)\n"
        "    run.log(left=run.time_left())",
        "class M:\n    __slots__ = ('a',)\n    def __init__(self):\n        super().__init__()",
        "if __name__ == '__main__':\n    print(__doc__)",
        "import torch\nF = torch.nn.functional\ny = F.gelu(x)",
        "import json\ns = json.dumps({'a': 1})",
        "try:\n    pass\nexcept (ValueError, RuntimeError):\n    pass",
        "class B:\n    def __init__(self, run):\n        self.run = run\n    def left(self):\n"
        "        return self.run.time_left()",
        "import torch\ntorch._foreach_mul_(params, 0.9)",
        "import torch\ntorch._inductor.config.coordinate_descent_tuning = True",
        "def step(r, model):\n    return r.get_batch(8, 32)\n\ndef train(run):\n"
        "    step(run, None)\n    step(model=None, r=run)",
        "def train(run):\n    if run is None:\n        return None",
        "import torch\nfor dtype in (torch.float32, torch.bfloat16):\n    x = dtype",
        "import torch\nfor flags in (torch.backends.cudnn,):\n    flags.benchmark = True",
    ],
)
def test_ordinary_code_passes(source: str) -> None:
    assert find_violations("train.py", source) == []


# ----------------------------------------------------------------------------------------------
# Sources that must not: each construct names the rule it breaks.

FORBIDDEN: list[tuple[str, str]] = [
    # file
    ("f = open('data/val.bin', 'rb')", "file"),
    ("import pathlib", "file"),
    ("from pathlib import Path\nPath('x').read_bytes()", "file"),
    ("import io", "file"),
    ("import torch\ntorch.save(model.state_dict(), 'ckpt.pt')", "file"),
    ("import torch\nsd = torch.load('ckpt.pt')", "file"),
    ("from torch import load as l\nl('x')", "file"),
    ("import torch as t\nt.save(m, 'x')", "file"),
    ("import numpy as np\nx = np.load('val.npy')", "file"),
    ("import numpy as np\nx = np.memmap('val.bin', dtype=np.uint8)", "file"),
    ("from numpy import fromfile", "file"),
    ("x.numpy().tofile('out.bin')", "file"),
    ("import torch\ns = torch.UntypedStorage.from_file('x', False, 10)", "file"),
    ("import os\nos.listdir('.')", "file"),
    ("import os.path", "file"),
    ("import shutil", "file"),
    ("import pickle", "file"),
    ("from torch.utils.tensorboard import SummaryWriter", "file"),
    # process
    ("import subprocess\nsubprocess.run(['ls'])", "process"),
    ("from subprocess import Popen", "process"),
    ("import os\nos.system('ls')", "process"),
    ("import os as o\no.popen('ls')", "process"),
    ("from os import system", "process"),
    ("import os\nos.execv('/bin/sh', ['sh'])", "process"),
    ("import os\npid = os.fork()", "process"),
    ("import os\nos.spawnl(os.P_WAIT, 'x')", "process"),
    ("import pty", "process"),
    # network
    ("import socket", "network"),
    ("import urllib.request", "network"),
    ("from urllib.request import urlopen", "network"),
    ("import http.client", "network"),
    ("import requests", "network"),
    ("import ssl", "network"),
    ("import ftplib", "network"),
    ("import torch\nm = torch.hub.load('a/b', 'c')", "network"),
    ("import torch.distributed as dist", "network"),
    # dynamic code
    ("exec('x = 1')", "dynamic"),
    ("y = eval('1 + 1')", "dynamic"),
    ("c = compile('1', 'f', 'eval')", "dynamic"),
    ("os = __import__('os')", "dynamic"),
    ("import importlib", "dynamic"),
    ("import builtins", "dynamic"),
    ("g = globals()", "dynamic"),
    ("locals()['x'] = 1", "dynamic"),
    ("d = vars(model)", "dynamic"),
    ("f = getattr(__builtins__, 'ev' + 'al')", "dynamic"),
    ("import torch\nname = 'sa' + 've'\nf = getattr(torch, name)", "dynamic"),
    ("from functools import reduce\nf = reduce(getattr, ['os'], obj)", "dynamic"),
    ("import torch\nhelper(torch)", "dynamic"),
    ("import types", "dynamic"),
    ("from typing import get_type_hints\nget_type_hints(f)", "dynamic"),
    ("x = __builtins__", "dynamic"),
    # the harness and the interpreter
    ("import autoresearch", "harness"),
    ("from autoresearch.harness import Run", "harness"),
    ("from . import harness", "harness"),
    ("import sys\nm = sys.modules['autoresearch.harness']", "harness"),
    ("import sys\nf = sys._getframe(1)", "harness"),
    ("import inspect\nf = inspect.currentframe()", "harness"),
    ("import gc\nobjs = gc.get_objects()", "harness"),
    ("import gc\nrefs = gc.get_referrers(run)", "harness"),
    ("import traceback", "harness"),
    ("try:\n    1 / 0\nexcept Exception as e:\n    f = e.__traceback__.tb_frame", "harness"),
    ("def g():\n    yield 1\nf = g().gi_frame.f_back", "harness"),
    ("breakpoint()", "harness"),
    ("import torch\nm = torch.sys.modules", "harness"),
    # seeds
    ("import torch\ntorch.manual_seed(1337)", "seed"),
    ("import torch\ntorch.cuda.manual_seed_all(0)", "seed"),
    ("import torch\ntorch.cuda.manual_seed(0)", "seed"),
    ("import random\nrandom.seed(0)", "seed"),
    ("import random\nrandom.seed()", "seed"),
    ("import numpy as np\nnp.random.seed(0)", "seed"),
    ("import torch\ng = torch.Generator()\ng.manual_seed(42)", "seed"),
    ("import torch\ntorch.set_rng_state(state)", "seed"),
    ("import torch\ntorch.random.set_rng_state(state)", "seed"),
    ("import torch\ntorch.cuda.set_rng_state_all(states)", "seed"),
    ("import numpy as np\nrng = np.random.default_rng(0)", "seed"),
    ("import random\nr = random.Random(1)", "seed"),
    ("from torch import manual_seed\nmanual_seed(0)", "seed"),
    ("import torch\ntorch.seed()", "seed"),
    ("def train(run):\n    seed = 1\n    import torch\n    torch.manual_seed(seed)", "seed"),
    # signals and exit hooks
    ("import signal\nsignal.signal(signal.SIGTERM, handler)", "signal"),
    ("from signal import SIGALRM", "signal"),
    ("import atexit\natexit.register(f)", "signal"),
    ("import faulthandler", "signal"),
    # threads and processes of its own
    ("import threading\nthreading.Thread(target=f).start()", "thread"),
    ("import _thread", "thread"),
    ("from concurrent.futures import ThreadPoolExecutor", "thread"),
    ("import multiprocessing", "thread"),
    ("import torch.multiprocessing as mp", "thread"),
    ("from torch.utils.data import DataLoader", "thread"),
    # ending the process or swallowing its stop
    ("exit(0)", "exit"),
    ("quit()", "exit"),
    ("import sys\nsys.exit(1)", "exit"),
    ("import os\nos._exit(0)", "exit"),
    ("import os\nos.kill(1, 9)", "exit"),
    ("raise SystemExit(0)", "exit"),
    ("raise KeyboardInterrupt", "exit"),
    ("try:\n    pass\nexcept:\n    pass", "exit"),
    ("try:\n    pass\nexcept BaseException:\n    pass", "exit"),
    ("try:\n    pass\nexcept (ValueError, KeyboardInterrupt):\n    pass", "exit"),
    # native code
    ("import ctypes", "native"),
    ("import cffi", "native"),
    ("from torch.utils.cpp_extension import load_inline", "native"),
    ("import torch\ntorch._C._set_grad_enabled(False)", "native"),
    ("import torch\ntorch.ops.load_library('evil.so')", "native"),
    ("import numpy as np\nlib = np.ctypeslib.load_library('x', '.')", "native"),
    # environment
    ("import os\nos.environ['CUDA_VISIBLE_DEVICES'] = '1'", "env"),
    ("import os\nhome = os.environ.get('HOME')", "env"),
    ("import os\nos.putenv('X', '1')", "env"),
    ("import os\nx = os.getenv('AUTORESEARCH_DATA')", "env"),
    ("from os import environ", "env"),
    # patching modules
    ("import time\ntime.time = lambda: 0.0", "monkeypatch"),
    ("import time\ntime.perf_counter = fake", "monkeypatch"),
    ("from time import monotonic\nimport time\ndel time.monotonic", "monkeypatch"),
    ("import torch.nn.functional as F\nF.cross_entropy = my_ce", "monkeypatch"),
    ("import torch\ntorch.nn.functional.cross_entropy = f", "monkeypatch"),
    ("import torch\nF2 = torch.nn.functional\nF2.cross_entropy = f", "monkeypatch"),
    ("import torch\nsetattr(torch.nn.functional, 'cross_entropy', f)", "monkeypatch"),
    ("import torch\ntorch.Tensor.backward = f", "monkeypatch"),
    ("from torch import nn\nnn.Module.__call__ = f", "monkeypatch"),
    ("import math\nmath.log = lambda x: 0.0", "monkeypatch"),
    ("def train(run):\n    type(run).time_left = lambda self: 1e9", "monkeypatch"),
    ("from torch.overrides import TorchFunctionMode", "monkeypatch"),
    ("class Mode:\n    def __torch_function__(self, func, types, args=(), kwargs=None):\n"
     "        return 0", "monkeypatch"),
    ("import torch\ntorch.nn.modules.module.register_module_forward_hook(h)", "monkeypatch"),
    ("import torch\ntorch.nn.modules.module._global_forward_hooks.update(hooks)", "monkeypatch"),
    ("import torch\nlib = torch.library.Library('aten', 'IMPL')", "monkeypatch"),
    # the run object
    ("def train(run):\n    run.time_left = lambda: 1e9", "run"),
    ("def train(run):\n    run.tokens_left = None", "run"),
    ("def train(r):\n    r.log = print", "run"),
    ("def train(run):\n    data = run._data", "run"),
    ("def train(run):\n    setattr(run, 'time_left', f)", "run"),
    ("def train(run):\n    del run.get_batch", "run"),
    ("def train(run):\n    alias = run\n    alias.time_left = f", "run"),
    ("def train(run):\n    run.budget['tokens'] = 1", "run"),
    # dunder tricks
    ("d = model.__dict__", "dunder"),
    ("import torch\nd = torch.__dict__['save']", "dunder"),
    ("c = ().__class__.__bases__[0].__subclasses__()", "dunder"),
    ("g = f.__globals__", "dunder"),
    ("print(__file__)", "dunder"),
    ("x = obj.__getattribute__('y')", "dunder"),
    ("import torch\nd = getattr(torch, '__dict__')", "dunder"),
    # imports outside the allow-list
    ("import yaml", "import"),
    ("from scipy import stats", "import"),
    ("from math import *", "import"),
    ("import einops", "import"),
    # syntax
    ("def train(run)\n    return None", "syntax"),
    # ways around the tables that the adversarial suite found (tests/adversarial)
    ("import torch.utils.collect_env as e\ne.run('ls')", "process"),
    ("import numpy as np\nf = np.lib._datasource.open('/x', 'rb')", "private"),
    ("import torch\ntorch.jit._serialization.save(m, 'm.pt')", "private"),
    ("from numpy.lib import _npyio_impl", "private"),
    ("import numpy as np\na = np.rec.fromfile('/x', formats='u1')", "file"),
    ("a.dump('metrics.json')", "file"),
    ("def peek(r):\n    return r._data\n\ndef train(run):\n    return peek(run)", "run"),
    ("def train(run):\n    box = [run]", "run"),
    ("def train(run):\n    cls = type(run)", "run"),
    ("cls = type(x)\ncls.forward = None", "monkeypatch"),
    ("t.__class__.log_softmax = None", "monkeypatch"),
    ("import torch\nfor f in (torch.nn.functional,):\n    f.cross_entropy = None", "monkeypatch"),
]


@pytest.mark.parametrize(("source", "rule"), FORBIDDEN, ids=[f"{r}:{s[:40]}" for s, r in FORBIDDEN])
def test_forbidden_constructs_name_their_rule(source: str, rule: str) -> None:
    assert rule_of(source) == rule


def test_a_violation_message_is_written_for_the_model() -> None:
    with pytest.raises(GuardViolation) as info:
        check_source("train.py", "import torch\n\n\ntorch.save(model, 'ckpt.pt')\n")
    v = info.value
    assert v.rule == "file" and v.line == 4
    assert v.message.startswith("train.py line 4: `torch.save(model, 'ckpt.pt')`"[:28])
    assert "[file]" in v.message and "run.get_batch" in v.message


def test_syntax_errors_report_the_line() -> None:
    with pytest.raises(GuardViolation) as info:
        check_source("train.py", "x = 1\ny = (\n")
    assert info.value.rule == "syntax" and "line" in info.value.message


def test_the_use_is_reported_before_the_import_that_made_it_possible() -> None:
    # `import os` alone is a file-rule import; its use says more
    assert rule_of("import os\n\nos.system('rm -rf /')") == "process"
    assert [v.rule for v in find_violations("t.py", "import os")] == ["file"]


# ----------------------------------------------------------------------------------------------
# Paths.


def test_editable_paths_pass() -> None:
    check_paths(["train.py", "./train.py"], ["train.py"])
    check_paths([], ["train.py"])


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "/work/train.py", "../autoresearch/harness.py", "baseline/../train.py",
     "autoresearch/harness.py", "prepare.py", "C:\\train.py", "~/.bashrc", "", "train.py\x00"],
)
def test_other_paths_are_refused(path: str) -> None:
    with pytest.raises(GuardViolation) as info:
        check_paths([path], ["train.py"])
    assert info.value.rule == "path"
    assert "train.py" in info.value.message


# ----------------------------------------------------------------------------------------------
# The rule table is the single source of truth, mirrored in the docs.


def test_every_table_entry_names_a_documented_rule() -> None:
    ids = set(guard.RULE_BY_ID)
    assert len(ids) == len(guard.RULES)
    used = (set(guard.DENIED.values()) | set(guard.BUILTINS.values())
            | set(guard.ATTRS.values()) | set(guard.ATTR_PREFIXES.values()))
    assert used <= ids
    assert {r for _, r in FORBIDDEN} | {"path"} == ids  # every rule is exercised above


def test_the_docs_mirror_the_rule_table() -> None:
    doc = ROOT / "docs" / "integrity.md"
    text = doc.read_text()
    missing = [r.id for r in guard.RULES if f"`{r.id}`" not in text]
    assert not missing, f"docs/integrity.md does not list rule(s) {missing}"
