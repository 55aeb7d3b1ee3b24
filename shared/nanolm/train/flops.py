"""How much arithmetic a transformer does per token, and how fast this machine can do arithmetic.

Model FLOPs utilization (MFU) = achieved FLOP/s / peak FLOP/s, where achieved FLOP/s is
tokens/s times the FLOPs one token costs. For training a decoder-only transformer:

    flops_per_token = 6 * N + 12 * n_layer * n_embd * T

- 6N (Kaplan et al. 2020, "Scaling Laws for Neural Language Models"): each of the N weights that
  take part in a matmul does one multiply-add (2 FLOPs) per token in the forward pass and twice
  that in the backward pass (gradient w.r.t. the input and w.r.t. the weight): 2 + 4 = 6.
- 12 L C T (the attention term of the PaLM paper's appendix B, Chowdhery et al. 2022): per layer,
  QK^T and (attention weights) V are two matmuls of T x C per token, 2 * 2 * T * C FLOPs forward,
  times 3 for forward + backward. It ignores the causal mask (which halves the useful work), as
  the usual estimate does.
N counts the weights used in matmuls: every parameter except embedding tables that are only read
(a learned position embedding); a token embedding tied to the output head is counted, since the
head is a matmul. Norm gains and biases are in N too: they are tiny. A mixture-of-experts layer
(nanolm.model.moe) sends each token through top_k of its n_experts experts, so N counts top_k experts
per layer (the active parameters) plus the router, not all of them.

The peak: on CUDA, a table of datasheet dense bf16/fp16 tensor-core peaks for common GPUs (the
number MFU is usually quoted against); elsewhere, or for an unknown GPU, the best FLOP/s of a
large matmul measured here (`measure_peak_flops`), so a CPU's MFU says how close training gets to
what its matmul kernel achieves.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..model.moe import MoE

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA datasheets, FLOP/s. First match wins,
# so more specific names come first. fp16 peaks are the same on these GPUs.
GPU_PEAK_BF16: list[tuple[str, float]] = [
    ("GH200", 989.5e12),
    ("H200", 989.5e12),
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.0e12),
    ("H100", 989.5e12),  # SXM
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362.05e12),
    ("L40", 181.05e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165.2e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16 (V100 has no bf16)
    ("T4", 65e12),  # fp16
]


def matmul_params(model: nn.Module) -> int:
    """Parameters one token runs through a matmul: all, minus embedding tables that are only read and
    minus the experts of an MoE layer that the token does not visit (it visits top_k)."""
    params = {id(p): p for p in model.parameters()}  # a tied weight counts once
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    lookup_only = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and id(m.weight) not in linear
    }
    n = sum(p.numel() for i, p in params.items() if i not in lookup_only)
    for m in model.modules():
        if isinstance(m, MoE):  # experts are equal in size: n_experts - top_k of them sit idle per token
            per_expert = sum(p.numel() for p in m.experts[0].parameters())
            n -= (len(m.experts) - m.top_k) * per_expert
    return n


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int, training: bool = True) -> float:
    """6N + 12*L*C*T FLOPs per token for training (forward + backward); a third of it for a forward pass."""
    fwd_bwd = 6 * n_params + 12 * n_layer * n_embd * seq_len
    return float(fwd_bwd if training else fwd_bwd / 3)


def model_flops_per_token(model: nn.Module, seq_len: int, training: bool = True) -> float | None:
    """flops_per_token for a model whose `.config` has n_layer and n_embd; None when it has not."""
    cfg = getattr(model, "config", None)
    n_layer = getattr(cfg, "n_layer", None)
    n_embd = getattr(cfg, "n_embd", None)
    if n_layer is None or n_embd is None:
        return None
    return flops_per_token(matmul_params(model), n_layer, n_embd, seq_len, training)


def datasheet_peak_flops(device: torch.device | str) -> float | None:
    """The datasheet dense bf16 peak FLOP/s of a known CUDA GPU, else None."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return gpu_peak_from_name(torch.cuda.get_device_name(device))


def gpu_peak_from_name(name: str) -> float | None:
    """The datasheet bf16 peak for a GPU name like 'NVIDIA H100 80GB HBM3', else None."""
    for key, peak in GPU_PEAK_BF16:
        if key in name:
            return peak
    return None


def sync(device: torch.device) -> None:
    """Wait until the device has finished its queued work (CUDA, MPS; a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_peak_flops(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, size: int | None = None,
    seconds: float = 1.0,
) -> float:
    """Achieved FLOP/s of a square (size x size) @ (size x size) matmul: the best of repeated timings."""
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm up: kernels, caches, lazy init
    sync(device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
        if time.perf_counter() > deadline:
            break
        reps = min(reps * 2, 16)
    return 2 * n**3 / best  # n^3 multiply-adds


_PEAK_CACHE: dict[tuple[str, torch.dtype], float] = {}


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> tuple[float, str]:
    """(peak FLOP/s, 'datasheet' or 'measured'): a known GPU's datasheet peak, else a matmul benchmark (cached)."""
    device = torch.device(device)
    sheet = datasheet_peak_flops(device) if dtype in (torch.bfloat16, torch.float16) else None
    if sheet is not None:
        return sheet, "datasheet"
    key = (str(device), dtype)
    if key not in _PEAK_CACHE:
        _PEAK_CACHE[key] = measure_peak_flops(device, dtype)
    return _PEAK_CACHE[key], "measured"
