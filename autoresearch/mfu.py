"""Model FLOPs utilisation (MFU): how much of a GPU's peak the training actually used.

Three pieces, each called by trusted code only (the training process may report anything
about itself, so it never counts its own FLOPs):

- ``forward_flops(fn, x)``: the FLOPs of one call ``fn(x)``, counted by torch's FLOP counter
  (``torch.utils.flop_counter.FlopCounterMode``): matmuls, convolutions and attention, as
  2 FLOPs per multiply-add; elementwise ops, norms and softmax count 0 (they are a few
  percent of a transformer's FLOPs and bound by memory, not by the tensor cores). The
  evaluation process runs it on the exported aten graph with one evaluation batch.
- ``peak_flops(device_name, dtype)``: the device's dense peak for that dtype, from the table
  below (datasheet figures, without the 2:4 sparsity doubling); None for a GPU not in it and
  for a CPU, where no figure would be honest.
- ``mfu(flops_per_token_fwd, tokens, seconds, peak)``: training FLOPs per second over the
  peak, with training FLOPs estimated as 3x forward (below); ``of_training`` wraps it for the
  runner (None where no value would be honest), ``device_name`` names the evaluator's GPU.

Wiring (trusted side only): the evaluation process sets ``EvalReport.flops_per_token =
forward_flops_per_token(graph, x)`` on one evaluation batch and ``device_name``; the runner
copies both into Metrics and sets ``Metrics.mfu = of_training(flops_per_token, device_name,
train_tokens, train_seconds)`` from the tokens and seconds it counted itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

TRAIN_PER_FORWARD = 3.0
"""Training FLOPs per token = 3 x forward FLOPs: the backward pass costs twice the forward
(one matmul for the gradient of the activations, one for the gradient of the weights, for
every forward matmul). This is the usual estimate behind "6N FLOPs per token" (Kaplan et al.
2020, section 2.1; PaLM, Chowdhery et al. 2022, appendix B, which defines MFU). It counts the
model's FLOPs, not the hardware's: recomputation (activation checkpointing) is not credited,
so MFU cannot be raised by doing redundant work."""

TERA = 1e12

# name pattern (searched in the lower-cased torch.cuda.get_device_name()) -> label, and dense
# peaks in TFLOP/s: (bf16, fp16, tf32, fp32). None: the dtype has no tensor-core path there.
# The first pattern that matches wins, so a specific variant comes before its family.
# Sources: NVIDIA's datasheets (the "Tensor Core" rows divided by 2 where they quote sparsity).
_GPUS: list[tuple[str, str, tuple[float | None, float | None, float | None, float]]] = [
    # H100 datasheet (2023): SXM 989 bf16/fp16, 495 tf32, 67 fp32; PCIe 756, 378, 51;
    # NVL 835, 418, 60. get_device_name(): "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe",
    # "NVIDIA H100 NVL"
    (r"h100.*pcie", "H100 PCIe", (756.0, 756.0, 378.0, 51.2)),
    (r"h100.*nvl", "H100 NVL", (835.0, 835.0, 417.5, 60.0)),
    (r"h100|gh200", "H100 SXM", (989.4, 989.4, 494.7, 66.9)),
    # H200 datasheet (2024): SXM the same tensor peaks as H100 SXM (more, faster memory);
    # NVL 835, 418, 60
    (r"h200.*nvl", "H200 NVL", (835.0, 835.0, 417.5, 60.0)),
    (r"h200", "H200 SXM", (989.4, 989.4, 494.7, 66.9)),
    # B200 (HGX B200 spec sheet, per GPU, dense): 2250 bf16/fp16, 1100 tf32, 75 fp32
    (r"b200", "B200", (2250.0, 2250.0, 1100.0, 75.0)),
    # A100 datasheet (2021), 40 GB and 80 GB, SXM and PCIe alike: 312, 156 tf32, 19.5 fp32
    (r"a100", "A100", (312.0, 312.0, 156.0, 19.5)),
    # L40S datasheet: 362 bf16/fp16 (733 sparse), 183 tf32, 91.6 fp32
    (r"l40s", "L40S", (362.0, 362.0, 183.0, 91.6)),
    # L40 datasheet: 181 bf16/fp16, 90.5 tf32, 90.5 fp32
    (r"l40\b", "L40", (181.0, 181.0, 90.5, 90.5)),
    # L4 datasheet: 121 bf16/fp16 (242 sparse), 60 tf32, 30.3 fp32
    (r"\bl4\b", "L4", (121.0, 121.0, 60.0, 30.3)),
    # A10G (AWS g5): no NVIDIA datasheet; AWS quotes 31.2 fp32 and the usual dense tensor
    # figure is 70 bf16/fp16, 35 tf32. An estimate, marked as such in the label.
    (r"a10g", "A10G (est.)", (70.0, 70.0, 35.0, 31.2)),
    # A10 datasheet: 125 bf16/fp16, 62.5 tf32, 31.2 fp32
    (r"\ba10\b", "A10", (125.0, 125.0, 62.5, 31.2)),
    # GeForce: the Ada/Ampere whitepapers' fp16/bf16 with fp32 accumulate (what PyTorch
    # uses), dense. RTX 4090: 165.2, tf32 82.6, fp32 82.6; RTX 3090: 71, 35.6, 35.6
    (r"rtx 4090", "RTX 4090", (165.2, 165.2, 82.6, 82.6)),
    (r"rtx 3090", "RTX 3090", (71.0, 71.0, 35.6, 35.6)),
    # RTX A6000 datasheet: 154.8 bf16/fp16 (309.7 sparse), 77.4 tf32, 38.7 fp32
    (r"rtx a6000", "RTX A6000", (154.8, 154.8, 77.4, 38.7)),
    # V100 datasheet: SXM2 125 fp16 tensor, 15.7 fp32; PCIe 112, 14. No bf16, no tf32.
    (r"v100.*pcie", "V100 PCIe", (None, 112.0, None, 14.0)),
    (r"v100", "V100 SXM2", (None, 125.0, None, 15.7)),
    # T4 datasheet: 65 fp16 tensor, 8.1 fp32. No bf16, no tf32.
    (r"\bt4\b", "T4", (None, 65.0, None, 8.1)),
]

_DTYPES = {"bf16": 0, "bfloat16": 0, "fp16": 1, "float16": 1, "half": 1, "tf32": 2,
           "fp32": 3, "float32": 3, "float": 3}


def gpu_label(device_name: str) -> str | None:
    """The table's name for a GPU ("H100 SXM"), or None when it is not in the table."""
    entry = _entry(device_name)
    return entry[0] if entry else None


def peak_flops(device_name: str, dtype: Any = "bf16") -> float | None:
    """Dense peak FLOP/s of ``device_name`` (as torch.cuda.get_device_name() gives it) for
    ``dtype`` ("bf16", "fp16", "tf32", "fp32" or a torch dtype). None for an unknown GPU, a
    CPU, or a dtype the GPU has no tensor-core path for (bf16 on a V100 or T4)."""
    name = str(dtype).removeprefix("torch.").lower()
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use bf16, fp16, tf32 or fp32")
    entry = _entry(device_name)
    if entry is None:
        return None
    value = entry[1][_DTYPES[name]]
    return None if value is None else value * TERA


def _entry(device_name: str) -> tuple[str, tuple[float | None, ...]] | None:
    low = device_name.lower()
    if not low or "cpu" in low:
        return None
    for pattern, label, peaks in _GPUS:
        if re.search(pattern, low):
            return label, peaks
    return None


def mfu(flops_per_token_fwd: float, tokens: float, seconds: float, peak: float) -> float:
    """The fraction of ``peak`` FLOP/s that training ``tokens`` tokens in ``seconds`` used,
    for a model of ``flops_per_token_fwd`` forward FLOPs per token (training = 3x forward,
    see TRAIN_PER_FORWARD). A fraction (0.42 is 42%), not capped at 1: a value above 1 says
    the FLOP count or the peak is wrong, and should be seen."""
    if seconds <= 0 or peak <= 0:
        raise ValueError(f"MFU needs positive seconds and peak, got {seconds!r} and {peak!r}")
    if flops_per_token_fwd < 0 or tokens < 0:
        raise ValueError("MFU needs non-negative FLOPs and tokens")
    return TRAIN_PER_FORWARD * flops_per_token_fwd * tokens / seconds / peak


def of_training(flops_per_token_fwd: float | None, device_name: str | None, tokens: float,
                seconds: float, dtype: Any = "bf16") -> float | None:
    """A measurement's MFU, for the runner: its trusted token count and training seconds, the
    evaluator's FLOP count and GPU name. None where there is no honest value: no FLOP count, a
    CPU, a GPU not in the table, no training time. ``dtype``: whose peak to divide by; bf16 by
    default, as is usual for MFU (the trusted side cannot know what the agent's code autocasts
    to, and the baseline's CUDA preset trains in bf16)."""
    if flops_per_token_fwd is None or not device_name or seconds <= 0:
        return None
    peak = peak_flops(device_name, dtype)
    return None if peak is None else mfu(flops_per_token_fwd, tokens, seconds, peak)


def device_name(device: str) -> str | None:
    """torch.cuda.get_device_name() of a CUDA ``device`` ("cuda", "cuda:1"); None otherwise."""
    if not device.startswith("cuda"):
        return None
    import torch

    return str(torch.cuda.get_device_name(torch.device(device)))


def forward_flops(fn: Callable[[Any], Any], x: Any) -> float:
    """FLOPs of one call ``fn(x)``, counted by torch's FLOP counter (nothing printed). Divide
    by ``x.numel()`` for FLOPs per token of a (batch, time) input. Runs ``fn`` once, under
    ``torch.no_grad``: call it where running the model once more is harmless (the evaluator,
    on one evaluation batch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas(torch))
    with torch.no_grad(), counter:
        fn(x)
    return float(counter.get_total_flops())


def _extra_formulas(torch: Any) -> dict[Any, Callable[..., int]]:
    """Operators torch's counter has no formula for. On a CPU, scaled_dot_product_attention
    runs as its own flash kernel, which the counter would count as 0 (the CUDA kernels are
    counted): give it the same formula, so a model's count does not depend on the device."""
    from torch.utils.flop_counter import sdpa_flop_count

    def cpu_flash(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
        return int(sdpa_flop_count(query, key, value))  # the counter passes shapes

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {} if op is None else {op: cpu_flash}


def forward_flops_per_token(fn: Callable[[Any], Any], x: Any) -> float:
    """``forward_flops(fn, x)`` per element of ``x`` (per token of a (batch, time) batch)."""
    return forward_flops(fn, x) / max(int(x.numel()), 1)
