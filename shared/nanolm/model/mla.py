"""Multi-head latent attention (DeepSeek-V2): keys and values rebuilt from one small cached latent.

Multi-head attention caches, per token and layer, a key and a value for every head: 2 * H * D numbers.
GQA and MQA shrink that by sharing heads. MLA instead caches one latent vector per token,
c = RMSNorm(W_dkv x) of width r (kv_rank), from which every head's key and value are up-projected:
k_h = W_uk,h c and v_h = W_uv,h c. The cache holds r numbers, plus d_r (rope_dim) for position:

RoPE cannot live inside the latent keys. A position-dependent rotation would sit between W_uk and
the query, so W_uk could no longer be folded into the query at inference ("absorption":
q . (W_uk c) = (W_uk^T q) . c lets attention run straight on the cached latents). So position
travels in a separate, "decoupled" part: every head's query gets d_r extra features rotated by RoPE,
matched against one rotated key k_r = RoPE(W_kr x) shared by all heads and cached next to c:

    score_h(i, j) = (q_h,i . k_h,j + q_h,i^rope . k_r,j) / sqrt(D + d_r)

The decoupled part exists only with pos="rope" (LlamaConfig then needs rope_dim >= 2). With pos="none"
or "learned" (positions added to the input embedding, or none at all) nothing is rotated: rope_dim is
0, there is no W_kr and no query rotary part, the cache holds the latent alone, and the scores are
q_h,i . k_h,j / sqrt(D), which do not depend on where the two tokens sit.

Shapes: B batch, T new positions, L cached positions, C n_embd, H n_head, D head size,
r kv_rank, d_r rope_dim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .attend import run_attention
from .kvcache import KVCache
from .layers import RMSNorm, apply_rope, rope_angles, rope_frequencies

if TYPE_CHECKING:  # for annotations only: llama builds on this module, not the other way round
    from .llama import LlamaConfig


class LatentAttention(nn.Module):
    """Causal multi-head latent attention with a decoupled RoPE key; caches (latent, rope key) per token."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        C, H, D, r = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.kv_rank
        dr = cfg.rope_dim if cfg.pos == "rope" else 0  # the decoupled RoPE part: only with RoPE
        self.n_head, self.head_dim, self.rope_dim = H, D, dr
        self.wq = nn.Linear(C, H * (D + dr), bias=cfg.bias)  # content and rotary part of every query
        self.w_dkv = nn.Linear(C, r, bias=cfg.bias)  # down to the latent (this is what is cached)
        self.kv_norm = RMSNorm(r, cfg.norm_eps)
        self.w_uk = nn.Linear(r, H * D, bias=False)  # latent -> every head's key
        self.w_uv = nn.Linear(r, H * D, bias=False)  # latent -> every head's value
        self.w_kr = nn.Linear(C, dr, bias=cfg.bias) if dr else None  # the shared key that carries position
        self.wo = nn.Linear(H * D, C, bias=cfg.bias)
        self.register_buffer("inv_freq", rope_frequencies(dr, cfg.rope_theta), persistent=False)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.mode = "auto"

    def _queries(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None):
        """x (B, T, C) -> content queries (B, H, T, D) and rotated rope queries (B, H, T, dr) (None without RoPE)."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, -1).transpose(1, 2)  # (B, H, T, D + dr)
        if cos_sin is None:
            return q, None
        q_nope, q_rope = q.split([self.head_dim, self.rope_dim], dim=-1)
        return q_nope, apply_rope(q_rope, *cos_sin)

    def _angles(self, positions: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None):
        """(cos, sin) (T, dr / 2) of the positions, or None when there is no RoPE part."""
        if not self.rope_dim:
            return None
        return rope if rope is not None else rope_angles(positions, self.inv_freq)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, T, C) at `positions` (T,) -> (B, T, C); rope: (cos, sin) of width rope_dim / 2, if precomputed."""
        B, T, _ = x.shape
        H, D, dr = self.n_head, self.head_dim, self.rope_dim
        cos_sin = self._angles(positions, rope)
        q_nope, q_rope = self._queries(x, cos_sin)  # (B, H, T, D), (B, H, T, dr) or None
        latent = self.kv_norm(self.w_dkv(x))  # (B, T, r)
        if dr:
            k_rope = apply_rope(self.w_kr(x).unsqueeze(1), *cos_sin)  # (B, 1, T, dr): one for all heads
            if cache is not None:
                latent, k_rope = cache.update(layer, latent, k_rope)  # (B, L, r), (B, 1, L, dr)
        elif cache is not None:
            (latent,) = cache.update(layer, latent)  # (B, L, r)
        L = latent.size(1)
        k = self.w_uk(latent).view(B, L, H, D).transpose(1, 2)  # (B, H, L, D)
        v = self.w_uv(latent).view(B, L, H, D).transpose(1, 2)  # (B, H, L, D)
        q = q_nope
        if dr:
            q = torch.cat((q_nope, q_rope), dim=-1)  # (B, H, T, D + dr)
            k = torch.cat((k, k_rope.expand(B, H, L, dr)), dim=-1)  # (B, H, L, D + dr)
        mode = "sdpa" if self.mode == "auto" else self.mode  # values may be narrower than keys: not flash-attn
        y = run_attention(q, k, v, mode, self.dropout if self.training else 0.0)  # (B, H, T, D)
        return self.resid_drop(self.wo(y.transpose(1, 2).reshape(B, T, H * D)))

    def absorbed_scores(self, x: torch.Tensor, positions: torch.Tensor, latent: torch.Tensor,
                        k_rope: torch.Tensor | None = None) -> torch.Tensor:
        """Unscaled scores of queries from x (B, T, C) against cached latent (B, L, r) and k_rope (B, 1, L, dr;
        None without RoPE), with W_uk folded into the queries: no per-head key is ever built -> (B, H, T, L)."""
        H, D = self.n_head, self.head_dim
        q_nope, q_rope = self._queries(x, self._angles(positions, None))
        w_uk = self.w_uk.weight.view(H, D, -1)  # (H, D, r)
        q_latent = q_nope @ w_uk  # (B, H, T, r): W_uk^T q, per head
        scores = q_latent @ latent.unsqueeze(1).transpose(-2, -1)  # (B, H, T, L)
        return scores if q_rope is None else scores + q_rope @ k_rope.transpose(-2, -1)


def cache_floats_per_token(cfg: LlamaConfig) -> int:
    """Numbers a KV cache keeps per token, summed over layers: (r + d_r) for MLA, 2 Hkv D otherwise."""
    per_layer = cfg.kv_rank + cfg.rope_dim if cfg.attention == "mla" else 2 * cfg.n_kv_head * cfg.head_dim
    return cfg.n_layer * per_layer
