"""The artifact between the two processes: the trained model as an aten graph plus tensors.

The training process exports it (``export_model``, after checking the weights are the ones
``train()`` returned); the evaluation process runs it with ``GraphModel``, a small interpreter
that only calls aten/prims operators and never imports agent code.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from autoresearch.errors import one_line
from autoresearch.harness import InvalidModel

ARTIFACT_FORMAT = "autoresearch-graph/1"


class _LogitsOnly(torch.nn.Module):
    """Export exactly one output: the logits (nanoGPT-style models return (logits, loss))."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out = self.model(idx)
        return out[0] if isinstance(out, tuple | list) else out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a torch.compile wrapper, read without calling the model's code."""
    inner = vars(model).get("_modules", {}).get("_orig_mod")
    return inner if isinstance(inner, torch.nn.Module) else model


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the parameters and buffers (persistent or not) as train() returned them,
    read with ``nn.Module``'s own methods, not overrides the model may define."""
    named = [*torch.nn.Module.named_parameters(model, remove_duplicate=False),
             *torch.nn.Module.named_buffers(model, remove_duplicate=False)]
    return {name: t.detach().to("cpu", copy=True) for name, t in named}


def export_model(model: torch.nn.Module, path: Path | IO[bytes], batch: int, seq_len: int,
                 device: str, expect: dict[str, torch.Tensor]) -> None:
    """torch.export the model on a fixed (batch, seq_len) input and save its aten graph.

    ``model`` is the plain module (:func:`unwrap`); its exported parameters and buffers must
    equal ``expect`` (a :func:`snapshot`): a model that trains on inside ``eval()`` or during
    tracing, after the clock stopped, is refused."""
    from torch.export.graph_signature import InputKind, OutputKind

    model.to(device).eval()
    example = torch.zeros((batch, seq_len), dtype=torch.long, device=device)
    try:
        program = torch.export.export(_LogitsOnly(model), (example,))
    except Exception as e:
        raise InvalidModel(f"the model cannot be exported for evaluation (torch.export of "
                           f"forward on a ({batch}, {seq_len}) LongTensor): {one_line(e)}") from e
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


class _Warmup(torch.nn.Module):
    """A small causal model of the usual parts, for ``prewarm`` (trusted code)."""

    def __init__(self, vocab: int = 16, width: int = 8) -> None:
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, width)
        self.qkv = torch.nn.Linear(width, 3 * width, bias=False)
        self.norm = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(),
                                       torch.nn.Linear(2 * width, width))
        self.head = torch.nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = self.tok(idx)
        q, k, v = self.qkv(self.norm(x)).unsqueeze(1).split(x.size(-1), dim=-1)
        x = x + torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)[:, 0]
        x = x + self.mlp(torch.nn.functional.layer_norm(x, x.shape[-1:]))
        return self.head(x), None


def prewarm() -> None:
    """Export a small trusted model once, into memory: the first torch.export in a process
    pays ~0.3 s of one-time set-up (lazy imports, tracing machinery) that a warm training
    process can pay before its job. Dynamo's caches are reset after, so the job's own export
    starts from the same state as in a cold process."""
    import io

    model = _Warmup()
    export_model(model, io.BytesIO(), 2, 4, "cpu", expect=snapshot(model))
    torch._dynamo.reset()


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



# --- running it (the evaluation process) --------------------------------------------------------

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
            raise InvalidModel(f"the model artifact cannot be loaded: {one_line(e)}") from e
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


