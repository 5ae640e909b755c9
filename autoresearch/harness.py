"""The trusted harness: data, clock and metric around the agent's ``train(run)``.

A measurement is two processes, so that no number can come from the agent's code:

1. training (``--phase train``): seeds everything, imports the source's train.py, calls
   ``train(run)`` with a ``Run`` that only holds the train split, then exports the returned
   model as a graph of aten operators plus its tensors (``model.pt``) and writes a short
   report (steps, tokens, seconds, or the reason it failed) into a scratch folder;
2. evaluation (``--phase eval``): a fresh process that never imports agent code. It loads
   the graph with ``torch.load(weights_only=True)``, runs it with a small interpreter that
   only calls aten/prims operators, checks logits and causality, and computes the loss over
   fixed validation windows itself.

``autoresearch.runner.measure`` starts both and merges their reports into metrics.json. Run
directly (``--phase all``, the default), this module does the same through the runner and
writes ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import operator
import random
import re
import resource
import secrets
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoresearch.curves import CURVE_FILE, CurveWriter
from autoresearch.metrics import (
    SETUP_CAP,
    TIME_GRACE,
    Budget,
    EvalReport,
    RunStatus,
    TrainReport,
)

SEQ_LEN = 256  # evaluation context length, the same for every experiment
# device kind -> (windows per evaluation batch, validation tokens evaluated); fixed so that
# every experiment on that kind of device is scored on exactly the same windows
EVAL_PLAN = {"cpu": (8, 65_536), "mps": (16, 262_144), "cuda": (32, 1_048_576)}
PROBE_PASSES = 4  # forward passes of the causality probe (each checks B-1 random cut points)
PROBE_TOLERANCE = 1e-3  # logits may move this much (abs and rel) from float noise alone
ARTIFACT_FORMAT = "autoresearch-graph/1"


class HarnessFailure(Exception):
    """A measurement failed; ``status`` says how, the message says why in one line."""

    status = RunStatus.crash


class BudgetExhausted(HarnessFailure):
    """``run.get_batch`` refused: the token budget cannot cover the batch, or time is up."""

    status = RunStatus.overtime


class NonFiniteLoss(HarnessFailure):
    status = RunStatus.nan


class InvalidModel(HarnessFailure):
    status = RunStatus.invalid_model


class NotCausal(HarnessFailure):
    status = RunStatus.not_causal


def eval_plan(device: str) -> tuple[int, int]:
    """(batch size, validation tokens) evaluated on this kind of device."""
    return EVAL_PLAN.get(device.split(":")[0], EVAL_PLAN["cpu"])


# --- phase 1: training (agent code runs here) ----------------------------------------------


class Run:
    """What ``train(run)`` gets: the train split, the clock, and a progress printer."""

    BudgetExhausted = BudgetExhausted  # so train.py can `except run.BudgetExhausted`

    def __init__(self, train_tokens: np.ndarray, *, device: str, seed: int, vocab_size: int,
                 seq_len: int, budget: Budget, setup_cap: float = SETUP_CAP) -> None:
        self.device = device
        self.seed = seed
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.tokens = 0  # tokens served by get_batch
        self.steps = 0  # batches served by get_batch
        self.setup_seconds = 0.0
        self.failure: HarnessFailure | None = None  # kept even if train() catches it
        self.curve: CurveWriter | None = None  # where log() records its numbers, if set
        self._data = train_tokens
        self._rng = np.random.default_rng(seed)  # batches depend on the seed and nothing else
        self._budget = budget
        self._setup_cap = setup_cap
        self._t_setup = time.monotonic()
        self._t_first: float | None = None  # the budget clock starts at the first batch
        self._t_stop: float | None = None  # and stops when train() returns (finish)

    def get_batch(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): ``batch_size`` random windows of the train split; y is x shifted by one."""
        if self._t_first is None:
            self.setup_seconds = time.monotonic() - self._t_setup
            self._check_setup()
            self._t_first = time.monotonic()
        n = batch_size * seq_len
        # the counters themselves, not tokens_left(): a method on the class can be replaced
        left = self._budget.amount - self.tokens
        if self._budget.kind == "tokens" and n > left:
            raise BudgetExhausted(
                f"get_batch({batch_size}, {seq_len}) refused: {n:,} tokens asked, "
                f"{int(left):,} left of the {self._budget.describe()} budget"
            )
        if self._budget.kind == "time" and -self.time_left() > self._grace():
            raise self._fail(BudgetExhausted(
                f"get_batch refused: the {self._budget.describe()} budget ran out "
                f"{-self.time_left():.1f} s ago"))
        if batch_size < 1 or not 1 <= seq_len < len(self._data):
            raise ValueError(f"get_batch({batch_size}, {seq_len}): need batch_size >= 1 and "
                             f"1 <= seq_len < {len(self._data)} (the train split's size)")
        starts = self._rng.integers(0, len(self._data) - seq_len, size=batch_size)
        windows = torch.from_numpy(self._data[starts[:, None] + np.arange(seq_len + 1)])
        windows = windows.to(torch.long)
        self.tokens += n
        self.steps += 1
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        return x.to(self.device), y.to(self.device)

    def time_left(self) -> float:
        """Seconds left of a time budget (the whole budget before the first batch); inf for a
        token budget."""
        if self._budget.kind != "time":
            return math.inf
        used = 0.0 if self._t_first is None else time.monotonic() - self._t_first
        return self._budget.amount - used

    def tokens_left(self) -> float:
        """Tokens get_batch may still serve under a token budget; inf for a time budget."""
        return self._budget.amount - self.tokens if self._budget.kind == "tokens" else math.inf

    def log(self, **scalars: Any) -> None:
        """Print one progress line for humans; a non-finite ``*loss*`` value ends the run."""
        parts, numbers = [], {}
        for key, value in scalars.items():
            if isinstance(value, torch.Tensor | np.generic | int | float):
                value = float(value)
                if "loss" in key and not math.isfinite(value):
                    raise self._fail(NonFiniteLoss(
                        f"{key} is {value} after {self.steps} batches (train() logged it)"))
                parts.append(f"{key} {value:.4g}")
                numbers[key] = value
            else:
                parts.append(f"{key} {value}")
        print(f"[{self.seconds():7.1f}s {self.tokens:>11,} tok] " + " | ".join(parts),
              flush=True)
        if self.curve is not None:  # display data only (autoresearch/curves.py)
            self.curve.add(self.seconds(), self.tokens, self.steps, numbers)

    def seconds(self) -> float:
        """Seconds on the budget clock so far (up to train() returning, once it has)."""
        end = time.monotonic() if self._t_stop is None else self._t_stop
        return 0.0 if self._t_first is None else end - self._t_first

    def finish(self) -> None:
        """Called by the harness after train() returned: raise what train() may have hidden."""
        self._t_stop = time.monotonic()
        if self.curve is not None:
            self.curve.close()
        if self._t_first is None:
            self.setup_seconds = time.monotonic() - self._t_setup
            self._check_setup()
        if self.failure is not None:
            raise self.failure
        if self._budget.kind == "tokens" and self.tokens > self._budget.amount:
            raise BudgetExhausted(f"train() drew {self.tokens:,} tokens; the budget is "
                                  f"{self._budget.describe()}")
        if self._budget.kind == "time" and -self.time_left() > self._grace():
            raise BudgetExhausted(
                f"train() returned {self.seconds():.1f} s after its first batch; the budget "
                f"is {self._budget.describe()} (+{self._grace():.1f} s grace)")

    def _check_setup(self) -> None:
        if self.setup_seconds > self._setup_cap:
            raise self._fail(BudgetExhausted(
                f"setup took {self.setup_seconds:.1f} s before the first batch; the cap is "
                f"{self._setup_cap:g} s"))

    def _grace(self) -> float:
        return self._budget.amount * TIME_GRACE[0] + TIME_GRACE[1]

    def _fail(self, failure: HarnessFailure) -> HarnessFailure:
        self.failure = self.failure or failure
        return failure


def fence(args: argparse.Namespace) -> None:
    """Put the training process in its Landlock sandbox (see autoresearch/sandbox.py)."""
    from autoresearch import sandbox

    read, write = sandbox.default_paths(Path(args.source), Path.cwd(), args.writable or [])
    read.append(str(Path(args.data)))
    write += [str(Path(args.artifact).parent), str(Path(args.report).parent)]
    try:
        state = sandbox.restrict(read, write)
    except sandbox.SandboxError as e:
        raise RuntimeError(f"the sandbox could not be set up ({e}); --no-sandbox (or "
                           "AUTORESEARCH_SANDBOX=0) trains without it") from e
    print(f"[harness] sandbox: {state}", flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_train(source: Path) -> Callable[[Run], Any]:
    """Import ``source/train.py`` as a module and return its ``train`` function."""
    path = source / "train.py"
    if not path.is_file():
        raise HarnessFailure(f"{path} does not exist")
    sys.path.insert(0, str(source))
    spec = importlib.util.spec_from_file_location("train", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    train = getattr(module, "train", None)
    if not callable(train):
        raise HarnessFailure("train.py defines no train(run) function")
    return train


def train_phase(args: argparse.Namespace) -> int:
    report = TrainReport()
    run: Run | None = None
    try:
        sys.dont_write_bytecode = True  # leave no __pycache__ in the experiment's worktree
        seed_everything(args.seed)
        train_data = np.memmap(Path(args.data) / "train.bin", dtype=np.uint8, mode="r")
        run = Run(train_data, device=args.device, seed=args.seed, vocab_size=256,
                  seq_len=args.seq_len, budget=_budget(args), setup_cap=args.setup_cap)
        run.curve = CurveWriter(Path(args.report).with_name(CURVE_FILE))
        if args.sandbox == "on":
            fence(args)  # from here on, nothing outside the allowed folders can be opened
        train = load_train(Path(args.source))
        model = train(run)
        run.finish()
        if not isinstance(model, torch.nn.Module):
            raise InvalidModel(f"train() returned {type(model).__name__}, expected a "
                               "torch.nn.Module")
        model = _unwrap(model)
        weights = snapshot(model)  # before any method of the model runs again
        t0 = time.monotonic()
        batch, _ = eval_plan(args.device)
        export_model(model, Path(args.artifact), batch, args.seq_len, args.device,
                     expect=weights)
        report.export_seconds = time.monotonic() - t0
        report.status = RunStatus.ok
    except (Exception, SystemExit) as e:  # agent code may raise anything, sys.exit included
        report.status = e.status if isinstance(e, HarnessFailure) else RunStatus.crash
        report.error = describe(e)
    if run is not None:
        report.steps, report.train_tokens = run.steps, run.tokens
        report.train_seconds, report.setup_seconds = run.seconds(), run.setup_seconds
    report.peak_memory_mb = _peak_memory_mb(args.device)
    Path(args.report).write_text(report.model_dump_json(indent=2), encoding="utf-8")
    print(f"[harness] training: {report.status.value} ({report.steps} batches, "
          f"{report.train_tokens:,} tokens, {report.train_seconds:.1f} s)", flush=True)
    return 0 if report.status == RunStatus.ok else 1


# --- the artifact: an aten graph + tensors, written by phase 1, run by phase 2 ---------------


class _LogitsOnly(torch.nn.Module):
    """Export exactly one output: the logits (nanoGPT-style models return (logits, loss))."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out = self.model(idx)
        return out[0] if isinstance(out, tuple | list) else out


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a torch.compile wrapper, read without calling the model's code."""
    inner = vars(model).get("_modules", {}).get("_orig_mod")
    return inner if isinstance(inner, torch.nn.Module) else model


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the parameters and buffers (persistent or not) as train() returned them,
    read with ``nn.Module``'s own methods, not overrides the model may define."""
    named = [*torch.nn.Module.named_parameters(model, remove_duplicate=False),
             *torch.nn.Module.named_buffers(model, remove_duplicate=False)]
    return {name: t.detach().to("cpu", copy=True) for name, t in named}


def export_model(model: torch.nn.Module, path: Path, batch: int, seq_len: int,
                 device: str, expect: dict[str, torch.Tensor]) -> None:
    """torch.export the model on a fixed (batch, seq_len) input and save its aten graph.

    ``model`` is the plain module (:func:`_unwrap`); its exported parameters and buffers must
    equal ``expect`` (a :func:`snapshot`): a model that trains on inside ``eval()`` or during
    tracing, after the clock stopped, is refused."""
    from torch.export.graph_signature import InputKind, OutputKind

    model.to(device).eval()
    example = torch.zeros((batch, seq_len), dtype=torch.long, device=device)
    try:
        program = torch.export.export(_LogitsOnly(model), (example,))
    except Exception as e:
        raise InvalidModel(f"the model cannot be exported for evaluation (torch.export of "
                           f"forward on a ({batch}, {seq_len}) LongTensor): {_line(e)}") from e
    kinds = {s.kind for s in program.graph_signature.output_specs}
    if kinds != {OutputKind.USER_OUTPUT}:
        raise InvalidModel("the model's forward mutates its own buffers or parameters")
    nodes: list[dict[str, Any]] = []
    tensors: dict[str, torch.Tensor] = {}
    specs = iter(program.graph_signature.input_specs)
    for node in program.graph.nodes:
        if node.op == "placeholder":
            spec = next(specs)
            if spec.kind == InputKind.USER_INPUT:
                nodes.append({"op": "input", "name": node.name,
                              "shape": list(example.shape)})
                continue
            if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER,
                                 InputKind.CONSTANT_TENSOR):
                raise InvalidModel(f"the exported model has an input of kind {spec.kind.name}")
            value = program.state_dict.get(spec.target)
            value = program.constants[spec.target] if value is None else value
            if spec.kind != InputKind.CONSTANT_TENSOR:
                _same_weights(str(spec.target), value, expect)
            tensors[node.name] = value.detach()
            nodes.append({"op": "tensor", "name": node.name,
                          "param": spec.kind == InputKind.PARAMETER})
        elif node.op == "call_function":
            nodes.append({"op": "call", "name": node.name, "target": _target(node.target),
                          "args": _encode(node.args), "kwargs": _encode(dict(node.kwargs))})
        elif node.op == "output":
            (logits,) = node.args[0]  # one user output, checked above
            nodes.append({"op": "output", "args": _encode(logits)})
        else:
            raise InvalidModel(f"the exported graph has a {node.op} node ({node.target})")
    torch.save({"format": ARTIFACT_FORMAT, "graph": json.dumps(nodes), "tensors": tensors},
               path)


def _same_weights(name: str, value: torch.Tensor, expect: dict[str, torch.Tensor]) -> None:
    before = expect.get(name.removeprefix("model."))  # _LogitsOnly adds "model."
    if before is None:
        raise InvalidModel(f"the exported model has a tensor {name!r} that was not in the model "
                           "train() returned")
    after = value.detach().to("cpu")
    if after.shape != before.shape or not _equal(after, before):
        raise InvalidModel(f"the model's weights changed after train() returned ({name!r}, in "
                           "eval() or forward): training ends when train() returns")


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.is_floating_point() and b.is_floating_point():
        return bool(torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))
    return bool(torch.equal(a, b))


def _target(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        return str(target)  # e.g. "aten.linear.default"
    raise InvalidModel(f"the exported graph calls {target}, which the evaluator does not run "
                       "(only aten/prims operators: no custom ops, autocast or control flow "
                       "inside forward)")


def _encode(a: Any) -> Any:
    """JSON for an FX argument; decoded by ``_decode`` in the evaluation process."""
    import torch.fx

    if isinstance(a, torch.fx.Node):
        return {"node": a.name}
    if isinstance(a, list | tuple):
        return {"list": [_encode(x) for x in a]}
    if isinstance(a, dict):
        return {"dict": {str(k): _encode(v) for k, v in a.items()}}
    if a is None or isinstance(a, bool | int | float | str):
        return a
    for kind in (torch.dtype, torch.layout, torch.memory_format):
        if isinstance(a, kind):
            return {kind.__name__: str(a).removeprefix("torch.")}
    if isinstance(a, torch.device):
        return {"device": str(a)}
    raise InvalidModel(f"the exported graph has an argument the evaluator cannot store: {a!r}")


# --- phase 2: evaluation (trusted code only; no agent code is ever imported here) ------------

_OP = re.compile(r"(aten|prims)\.(\w+)\.(\w+)")


class GraphModel:
    """Runs an artifact's aten graph. Every call starts from the artifact's own tensors, so a
    model cannot carry state from one evaluation batch to the next."""

    def __init__(self, path: Path, device: str) -> None:
        try:
            blob = torch.load(path, map_location=device, weights_only=True)
            if not isinstance(blob, dict) or blob.get("format") != ARTIFACT_FORMAT:
                raise ValueError(f"not an {ARTIFACT_FORMAT} artifact")
            self.nodes: list[dict[str, Any]] = json.loads(blob["graph"])
            self.tensors: dict[str, torch.Tensor] = dict(blob["tensors"])
        except Exception as e:
            raise InvalidModel(f"the model artifact cannot be loaded: {_line(e)}") from e
        self.device = device
        self.ops = {n["name"]: _resolve(n["target"]) for n in self.nodes if n["op"] == "call"}
        inputs = [n for n in self.nodes if n["op"] == "input"]
        if len(inputs) != 1:
            raise InvalidModel(f"the exported model takes {len(inputs)} inputs, expected 1")
        self.input_shape = tuple(inputs[0]["shape"])
        params = {_storage_key(self.tensors[n["name"]]): self.tensors[n["name"]].numel()
                  for n in self.nodes if n.get("param")}
        self.params = sum(params.values())  # tied weights count once
        # free every intermediate after its last use: activations of big graphs add up
        last: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for name in _refs(node.get("args")) + _refs(node.get("kwargs")):
                last[name] = i
        self.free_after: dict[int, list[str]] = {}
        for name, i in last.items():
            self.free_after.setdefault(i, []).append(name)

    def __call__(self, x: torch.Tensor) -> Any:
        if tuple(x.shape) != self.input_shape:
            raise InvalidModel(f"the model was exported for input {self.input_shape}, "
                               f"evaluation uses {tuple(x.shape)}")
        env: dict[str, Any] = {}
        for i, node in enumerate(self.nodes):
            op = node["op"]
            if op == "input":
                env[node["name"]] = x.clone()
            elif op == "tensor":
                env[node["name"]] = self.tensors[node["name"]].clone()
            elif op == "call":
                args = _decode(node["args"], env)
                kwargs = _decode(node["kwargs"], env)
                env[node["name"]] = self.ops[node["name"]](*args, **kwargs)
            else:
                return _decode(node["args"], env)
            for name in self.free_after.get(i, ()):
                env.pop(name, None)
        raise InvalidModel("the exported graph has no output")


def _storage_key(t: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    return t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape)


def _resolve(target: str) -> Callable[..., Any]:
    if target == "getitem":
        return operator.getitem
    m = _OP.fullmatch(target)
    if m is None or "file" in m[2]:
        raise InvalidModel(f"the artifact calls {target!r}; the evaluator only runs aten and "
                           "prims operators that touch no files")
    try:
        op = getattr(getattr(getattr(torch.ops, m[1]), m[2]), m[3])
    except (AttributeError, RuntimeError) as e:
        raise InvalidModel(f"the artifact calls an unknown operator {target!r}") from e
    if not isinstance(op, torch._ops.OpOverload):
        raise InvalidModel(f"the artifact calls {target!r}, which is not an operator")
    return op


def _refs(a: Any) -> list[str]:
    if isinstance(a, dict):
        if "node" in a:
            return [a["node"]]
        return [r for v in a.values() for r in _refs(v)]
    return []


def _decode(a: Any, env: dict[str, Any]) -> Any:
    if not isinstance(a, dict):
        return a
    ((kind, value),) = a.items()
    if kind == "node":
        return env[value]
    if kind == "list":
        return [_decode(x, env) for x in value]
    if kind == "dict":
        return {k: _decode(v, env) for k, v in value.items()}
    if kind == "device":
        return torch.device(value)
    obj = getattr(torch, value, None)  # dtype, layout, memory_format: check the type
    if kind in ("dtype", "layout", "memory_format") and type(obj).__name__ == kind:
        return obj
    raise InvalidModel(f"the artifact holds an unknown argument {a!r}")


def eval_windows(val: torch.Tensor, batch: int, seq_len: int, max_tokens: int
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation batches: contiguous, non-overlapping windows of seq_len tokens.
    Batch k holds windows k, k+n, k+2n, ... so that no row is the continuation of another."""
    n_windows = min(max_tokens // seq_len, (len(val) - 1) // seq_len) // batch * batch
    if n_windows == 0:
        raise HarnessFailure(f"the validation split ({len(val):,} tokens) is too small for "
                             f"one evaluation batch of {batch}x{seq_len}")
    n = n_windows // batch
    batches = []
    for k in range(n):
        starts = torch.arange(k, n_windows, n) * seq_len
        idx = starts[:, None] + torch.arange(seq_len + 1)
        windows = val[idx].to(torch.long)
        batches.append((windows[:, :-1], windows[:, 1:]))
    return batches


def check_logits(logits: Any, shape: tuple[int, ...], where: str) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != shape:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InvalidModel(f"the model returned {got} on {where}, expected logits of shape "
                           f"(B, T, vocab) = {shape}")
    logits = logits.float()
    if not torch.isfinite(logits).all():
        raise NonFiniteLoss(f"the model's logits are not finite (NaN or inf) on {where}")
    return logits


def causality_probe(model: GraphModel, x: torch.Tensor, other: torch.Tensor,
                    logits: torch.Tensor, vocab: int) -> None:
    """Change tokens at positions >= t (real text from elsewhere in the split, at random cut
    points drawn afresh each evaluation) and require logits at < t to stay. Row 0 is never
    changed, and must not move either: rows may not see each other."""
    gen = torch.Generator().manual_seed(secrets.randbits(62))
    batch, seq_len = x.shape
    for p in range(PROBE_PASSES):
        cuts = torch.randint(1, seq_len, (batch,), generator=gen)
        cuts[0] = seq_len
        keep = torch.arange(seq_len)[None, :] < cuts[:, None]
        probe = torch.where(keep.to(x.device), x, other.roll(p + 1, dims=0))
        moved = check_logits(model(probe), (batch, seq_len, vocab), "the causality probe")
        diff = (moved - logits).abs()
        bad = (diff > PROBE_TOLERANCE * (1 + logits.abs())) & keep.to(x.device)[..., None]
        if bad.any():
            row, pos, _ = (int(i) for i in bad.nonzero()[0])
            where = ("when other rows of the batch changed" if row == 0 else
                     f"when tokens at positions >= {int(cuts[row])} changed")
            raise NotCausal(f"the logits at position {pos} (row {row}) changed by "
                            f"{float(diff[row, pos].max()):.3g} {where}: the model looks ahead")


def load_val(data: Path, expect_sha256: str | None) -> torch.Tensor:
    """The validation split, after checking the dataset is the byte-level one it claims to be
    (and, given its sha256, that nobody changed it since the measurement started)."""
    from autoresearch.data import load_prepared

    prepared = load_prepared(data)
    if prepared.vocab_size != 256 or prepared.bytes_per_token != 1.0:
        raise HarnessFailure(f"{data} is not a byte-level dataset (vocab 256, 1 byte/token)")
    train, val = (data / "train.bin").read_bytes(), (data / "val.bin").read_bytes()
    sha = hashlib.sha256(train + val).hexdigest()
    if sha != (expect_sha256 or prepared.sha256):
        raise HarnessFailure(f"{data} changed: its text's sha256 is {sha[:16]}…, expected "
                             f"{(expect_sha256 or prepared.sha256)[:16]}…")
    return torch.frombuffer(bytearray(val), dtype=torch.uint8)


def evaluate(artifact: Path, data: Path, device: str, seq_len: int,
             expect_sha256: str | None = None) -> EvalReport:
    """Load the exported model and score it on the fixed validation windows."""
    val = load_val(data, expect_sha256).to(device)
    vocab = 256
    batch, max_tokens = eval_plan(device)
    batches = eval_windows(val, batch, seq_len, max_tokens)
    model = GraphModel(artifact, device)
    shape = (batch, seq_len, vocab)
    total = 0.0
    with torch.inference_mode():
        for k, (x, y) in enumerate(batches):
            logits = check_logits(model(x), shape, f"validation batch {k}")
            if k == 0:
                causality_probe(model, x, batches[-1][0], logits, vocab)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
            total += float(loss)
    tokens = len(batches) * batch * seq_len
    val_loss = total / tokens
    if not math.isfinite(val_loss):
        raise NonFiniteLoss(f"the validation loss is {val_loss}")
    return EvalReport(status=RunStatus.ok, val_loss=val_loss, eval_tokens=tokens,
                      val_bpb=val_loss / math.log(2),  # one token is one byte
                      seq_len=seq_len, params=model.params, causal_ok=True)


def eval_phase(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    seed_everything(0)
    try:
        report = evaluate(Path(args.artifact), Path(args.data), args.device, args.seq_len,
                          args.expect_sha256)
    except Exception as e:
        status = e.status if isinstance(e, HarnessFailure) else RunStatus.crash
        report = EvalReport(status=status, error=describe(e), seq_len=args.seq_len,
                            causal_ok=False if status == RunStatus.not_causal else None)
    report.eval_seconds = time.monotonic() - t0
    report.torch_version = torch.__version__
    text = report.model_dump_json(indent=2)
    if args.out.startswith("fd:"):  # the runner's private pipe
        with open(int(args.out[3:]), "w", encoding="utf-8") as pipe:
            pipe.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
    print(f"[harness] evaluation: {report.status.value}, val_bpb {report.val_bpb} "
          f"({report.eval_tokens:,} tokens, {report.eval_seconds:.1f} s)", flush=True)
    return 0 if report.status == RunStatus.ok else 1


# --- shared helpers and the command line ------------------------------------------------------


def describe(e: BaseException) -> str:
    """A one-line reason, then the tail of the traceback (for non-harness failures)."""
    reason = str(e) if isinstance(e, HarnessFailure) else f"{type(e).__name__}: {_line(e)}"
    if isinstance(e, HarnessFailure) and e.__cause__ is None and e.__traceback__ is not None \
            and all(f.filename == __file__ for f in traceback.extract_tb(e.__traceback__)):
        return reason  # raised by the harness itself: the reason says it all
    tail = "".join(traceback.format_exception(e)).strip().splitlines()[-12:]
    return reason + "\n" + "\n".join(tail)


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines() or [type(e).__name__])[0][:300]


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _budget(args: argparse.Namespace) -> Budget:
    if args.time_budget is not None:
        return Budget(kind="time", amount=args.time_budget)
    return Budget(kind="tokens", amount=args.token_budget)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m autoresearch.harness",
        description="Train a source's train(run) under a budget and measure val_bpb.")
    p.add_argument("--source", help="folder holding train.py")
    p.add_argument("--data", required=True, help="a prepared dataset folder")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--time-budget", type=float, help="seconds of training")
    budget.add_argument("--token-budget", type=int, help="training tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--out", help="where to write metrics.json")
    p.add_argument("--setup-cap", type=float, default=SETUP_CAP,
                   help="seconds allowed before the first batch")
    p.add_argument("--seq-len", type=int, default=SEQ_LEN, help="evaluation context length")
    p.add_argument("--phase", choices=["all", "train", "eval"], default="all",
                   help=argparse.SUPPRESS)
    p.add_argument("--artifact", help=argparse.SUPPRESS)
    p.add_argument("--report", help=argparse.SUPPRESS)
    p.add_argument("--expect-sha256", help=argparse.SUPPRESS)
    p.add_argument("--sandbox", choices=["on", "off"], default=None,
                   help="fence the training process in with Landlock where the OS has it "
                        "(default: on; the internal training phase only when told)")
    p.add_argument("--writable", action="append", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    needed = {"all": ("source", "out"), "train": ("source", "artifact", "report"),
              "eval": ("artifact", "out")}[args.phase]
    missing = [f"--{n}" for n in needed if getattr(args, n) is None]
    if args.phase != "eval" and args.time_budget is None and args.token_budget is None:
        missing.append("--time-budget or --token-budget")
    if missing:
        p.error("missing " + ", ".join(missing))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase == "train":
        return train_phase(args)
    if args.phase == "eval":
        return eval_phase(args)
    import shutil
    import tempfile

    from autoresearch.runner import measure

    with tempfile.TemporaryDirectory(prefix="autoresearch-") as tmp:
        metrics = measure(source=Path(args.source), data=Path(args.data), budget=_budget(args),
                          seed=args.seed, device=args.device, out_dir=Path(tmp),
                          setup_cap=args.setup_cap, seq_len=args.seq_len, echo=True,
                          sandbox=args.sandbox != "off")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "metrics.json", out)
    print(f"{metrics.status.value}: val_bpb {metrics.val_bpb}" if metrics.ok else
          f"{metrics.status.value}: {(metrics.error or '').splitlines()[0]}", file=sys.stderr)
    return 0 if metrics.ok else 1


if __name__ == "__main__":
    sys.exit(main())
