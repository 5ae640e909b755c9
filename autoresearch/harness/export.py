"""The training side of the artifact: the trained model as an aten graph plus tensors.

The training process exports the model ``train()`` returned (``export_model``) and hands the
bytes to the broker; the clock runs until they arrive, so whatever the model's code does while
it is exported is training time. This side is untrusted like everything in that process: the
evaluation process checks the artifact as it finds it (:mod:`autoresearch.harness.graph`).
"""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import IO, Any

import torch

from autoresearch.errors import one_line
from autoresearch.harness import ARTIFACT_FORMAT, InvalidModel


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


def export_model(model: torch.nn.Module, path: Path | IO[bytes], batch: int, seq_len: int,
                 device: str) -> None:
    """torch.export the model on a fixed (batch, seq_len) input and save its aten graph:
    every parameter, buffer and constant tensor the graph reads, and its nodes as JSON."""
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
    export_model(model, io.BytesIO(), 2, 4, "cpu")
    torch._dynamo.reset()


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
