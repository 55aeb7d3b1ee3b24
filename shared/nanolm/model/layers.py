"""The pieces both model families are built from: RMSNorm, rotary position embeddings, SwiGLU and GELU MLPs.

RoPE: queries and keys are rotated by angles proportional to their position, so a query-key dot
product depends only on the offset between the two positions. `apply_rope` uses the half-split
pairing (feature i turns together with feature i + D/2), the form of Hugging Face's LlamaForCausalLM;
`apply_rope_complex` is Meta's original interleaved complex form (features 2i and 2i+1 as one complex
number). The two agree after `interleaved_to_half`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dim, computed in float32 (as torch.nn.RMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's fused kernel computes x * rsqrt(mean(x^2) + eps); the gain is applied after the cast back
        return F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).type_as(x) * self.weight


def rope_frequencies(dim: int, theta: float = 10000.0) -> torch.Tensor:
    """The dim/2 rotation speeds theta^(-2i/dim), i = 0 .. dim/2 - 1: fast for early pairs, slow for late."""
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (T,) -> (cos, sin), each (T, dim/2): the angle position * speed of every pair."""
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., T, D) pairwise by (cos, sin) (T, D/2); half-split pairs: feature i with i + D/2."""
    h = x.size(-1) // 2
    x1, x2 = x[..., :h], x[..., h:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def apply_rope_complex(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Meta's form: features (2i, 2i+1) of x (..., T, D) are one complex number, multiplied by e^(i pos w_i)."""
    D = x.size(-1)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], D // 2, 2).contiguous())  # (..., T, D/2)
    angles = positions.double()[:, None] * rope_frequencies(D, theta).double()[None, :]  # (T, D/2)
    rotated = z * torch.polar(torch.ones_like(angles), angles)
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


def interleaved_to_half(x: torch.Tensor) -> torch.Tensor:
    """Reorder the last dim from pairs (0,1),(2,3),... to halves [0,2,4,...,1,3,5,...]."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): a gated feed-forward, (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=bias)  # [W_gate; W_up] by rows: one matmul
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (..., hidden) each
        return self.drop(self.down(F.silu(gate) * up))


class GELUMLP(nn.Module):
    """proj(gelu(fc(x))): GPT-2's feed-forward, (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


def gpt2_init(module: nn.Module) -> None:
    """GPT-2's initialization, for model.apply(): N(0, 0.02) for linear and embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
