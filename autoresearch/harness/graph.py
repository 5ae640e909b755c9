"""The evaluation side of the artifact: check an exported graph, then run it.

The artifact comes from the training process, so it is read as hostile input. ``GraphModel``
loads it with ``torch.load(weights_only=True)`` (tensors and plain containers only), checks
every stored tensor the same way whatever the exporter called it (parameter, buffer or
constant: a dtype from a short list, finite values, counted in ``params``), and accepts a node
only if its operator is on an allow-list of aten operators that are memory safe (they check
their indices and sizes), deterministic, and touch nothing outside their own tensors: no file,
no random numbers, no uninitialised memory, no raw strides. Anything else is refused with the
operator's name before one validation token is scored. Every call starts from the artifact's
own tensors, so no state survives from one batch to the next.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from autoresearch.errors import one_line
from autoresearch.harness import ARTIFACT_FORMAT, InvalidModel

# aten operators a causal language model's forward uses, by name (any overload but ``out``
# ones). Deliberately absent: as_strided/set_/resize_ (raw strides and storage), empty*/
# new_empty* (uninitialised memory: what another tensor left there), _unsafe_index* and other
# unchecked indexing, every random operator (dropout, rand*, bernoulli, normal: a score must
# not depend on luck), and everything that reads or writes files or talks to other processes.
_ALLOWED = """
    abs add addcdiv addcmul addmm alias all amax amin any arange argmax argmin atan atan2
    baddbmm bitwise_and bitwise_not bitwise_or bmm cat ceil chunk clamp clamp_max clamp_min
    clip clone complex constant_pad_nd contiguous copy cos cosh cumsum detach div dot elu
    embedding eq erf exp exp2 expand expand_as expm1 eye fill flatten flip floor floor_divide
    fmod full full_like gather ge gelu gt hardtanh index index_select isinf isnan layer_norm le
    leaky_relu lerp lift_fresh_copy linalg_vector_norm linear linspace log log10 log1p log2
    log_softmax logical_and logical_not logical_or logsumexp lt masked_fill matmul max maximum
    mean min minimum mish mm movedim mul nan_to_num one_hot outer einsum narrow native_layer_norm
    ne neg new_full to scatter scatter_add index_put
    new_ones new_zeros norm ones ones_like pad permute polar pow prod reciprocal relu remainder
    repeat repeat_interleave reshape roll round rms_norm rsqrt rsub scalar_tensor
    scaled_dot_product_attention select sigmoid sign silu sin sinh slice softmax softplus split
    split_with_sizes sqrt square squeeze stack std sub sum t take_along_dim tanh topk transpose
    tril triu trunc type_as unbind unflatten unsqueeze var var_mean view view_as
    view_as_complex view_as_real where zeros zeros_like _log_softmax _softmax _to_copy
    _unsafe_view _fused_rms_norm _scaled_dot_product_flash_attention
    _scaled_dot_product_flash_attention_for_cpu _scaled_dot_product_efficient_attention
    _scaled_dot_product_cudnn_attention _assert_tensor_metadata _assert_scalar _assert_async
    sym_constrain_range_for_size _native_batch_norm_legit_no_training
"""
ALLOWED_OPS = frozenset(_ALLOWED.split())
TENSOR_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64,
                           torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                           torch.bool, torch.complex64})
_OP = re.compile(r"aten\.(\w+)\.(\w+)")


class GraphModel:
    """Runs an artifact's aten graph (after checking it). Every call starts from the
    artifact's own tensors, so a model cannot carry state from one evaluation batch to the
    next."""

    def __init__(self, path: Path, device: str) -> None:
        try:
            blob = torch.load(path, map_location=device, weights_only=True)
            if not isinstance(blob, dict) or blob.get("format") != ARTIFACT_FORMAT:
                raise ValueError(f"not an {ARTIFACT_FORMAT} artifact")
            nodes = json.loads(blob["graph"])
            tensors = dict(blob["tensors"])
            if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
                raise ValueError("its graph is not a list of nodes")
        except Exception as e:
            raise InvalidModel(f"the model artifact cannot be loaded: {one_line(e)}") from e
        self.nodes: list[dict[str, Any]] = nodes
        self.tensors: dict[str, torch.Tensor] = {}
        for node in nodes:
            if node.get("op") == "tensor":
                self.tensors[str(node["name"])] = _checked(str(node["name"]),
                                                           tensors.get(node["name"]))
        self.device = device
        self.ops = {n["name"]: resolve(str(n.get("target")))
                    for n in self.nodes if n.get("op") == "call"}
        inputs = [n for n in self.nodes if n.get("op") == "input"]
        if len(inputs) != 1:
            raise InvalidModel(f"the exported model takes {len(inputs)} inputs, expected 1")
        self.input_shape = tuple(int(d) for d in inputs[0]["shape"])
        # every stored floating-point tensor counts, parameter or not (tied ones once): a
        # weight kept as a "constant" is still a weight
        sizes = {_storage_key(t): t.numel() for t in self.tensors.values()
                 if t.is_floating_point() or t.is_complex()}
        self.params = sum(sizes.values())
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
            elif op == "output":
                return _decode(node["args"], env)
            else:
                raise InvalidModel(f"the exported graph has a node of kind {op!r}")
            for name in self.free_after.get(i, ()):
                env.pop(name, None)
        raise InvalidModel("the exported graph has no output")


def resolve(target: str) -> Callable[..., Any]:
    """The operator a node names, if it is on the allow-list."""
    if target == "getitem":
        return operator.getitem
    m = _OP.fullmatch(target)
    if m is None or m[1] not in ALLOWED_OPS or "out" in m[2].split("_"):
        raise InvalidModel(f"the model's graph calls {target!r}, which the evaluator does not "
                           "run: it runs only aten operators that are memory safe and "
                           "deterministic (no uninitialised memory, raw strides, random "
                           "numbers, files or custom operators)")
    try:
        op = getattr(getattr(torch.ops.aten, m[1]), m[2])
    except (AttributeError, RuntimeError) as e:
        raise InvalidModel(f"the artifact calls an unknown operator {target!r}") from e
    if not isinstance(op, torch._ops.OpOverload):
        raise InvalidModel(f"the artifact calls {target!r}, which is not an operator")
    return op


def _checked(name: str, t: object) -> torch.Tensor:
    """A stored tensor, checked like a parameter whatever its kind."""
    if not isinstance(t, torch.Tensor):
        raise InvalidModel(f"the artifact's tensor {name!r} is missing")
    if t.dtype not in TENSOR_DTYPES:
        raise InvalidModel(f"the artifact's tensor {name!r} has dtype {t.dtype}")
    if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
        raise InvalidModel(f"the artifact's tensor {name!r} holds NaN or infinite values")
    return t.detach()


def _storage_key(t: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    return t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape)


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
