"""The engine's forward pass: many conversations in one batch, each at its own position, each in its own cache slot.

`Llama.forward` runs a batch whose rows all start at the same position with one shared cache length, which
is right for training and for one conversation. A server holds many conversations of different lengths at
once: row n continues slot `slots[n]` of a `SlotCache` from position `starts[n]`. So here:

- RoPE angles are computed per row from that row's positions: (N, T) positions -> (N, 1, T, D/2);
- each row's new keys and values are written into its slot at its positions;
- attention reads each row's slot up to L = max(starts + T) and masks, per row, the keys it may see:
  key j is visible to the query at position p when j <= p (causal), so other rows' lengths never leak in.

Everything else is the model's own modules (norms, projections, SwiGLU, head), called in the model's order,
so `forward_rows` on one row equals `Llama.forward` with a KV cache (tests check to float64 rounding).
Models: the course's Llama (`base`, `chat`) and SmolLM2 loaded into it; GQA/MHA attention without
MLA or MoE (a clear error otherwise).

Shapes: N rows, T new tokens per row (prefill: the prompt; decode: 1), S slots, L keys read, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.layers import apply_rope


class SlotCache:
    """Keys and values of S conversations: per layer (S, Hkv, max_len, D) each, and each slot's length."""

    def __init__(self, model: nn.Module, slots: int, max_len: int):
        cfg = model.config
        if getattr(cfg, "attention", "gqa") != "gqa" or getattr(cfg, "n_experts", 0) or getattr(cfg, "pos", "rope") != "rope":
            raise ValueError("the engine serves Llama models with RoPE and GQA/MHA attention (no MLA, MoE or "
                             "learned positions): serve those with model.generate")
        p = next(model.parameters())
        shape = (slots, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = [p.new_zeros(shape) for _ in range(cfg.n_layer)]
        self.v = [p.new_zeros(shape) for _ in range(cfg.n_layer)]
        self.lengths = torch.zeros(slots, dtype=torch.long)  # positions stored per slot
        self.slots, self.max_len = slots, max_len

    def free(self, slot: int) -> None:
        self.lengths[slot] = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def _attend(block: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: SlotCache,
            layer: int, slots: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One block's attention for rows at their own positions, reading and writing their slots."""
    attn = block.attn
    N, T, _ = x.shape
    H, Hkv = attn.n_head, attn.n_kv_head
    qkv = attn.wqkv(x).view(N, T, H + 2 * Hkv, attn.head_dim).transpose(1, 2)  # (N, H + 2Hkv, T, D)
    qk, v = qkv.split([H + Hkv, Hkv], dim=1)
    if attn.q_norm is not None:
        q, k = qk.split([H, Hkv], dim=1)
        qk = torch.cat([attn.q_norm(q), attn.k_norm(k)], dim=1)
    q, k = apply_rope(qk, cos, sin).split([H, Hkv], dim=1)  # (N, H, T, D), (N, Hkv, T, D)
    rows = slots[:, None].expand(N, T)
    cache.k[layer][rows, :, positions] = k.transpose(1, 2)  # (N, T, Hkv, D) into each slot at its positions
    cache.v[layer][rows, :, positions] = v.transpose(1, 2)
    L = mask.size(-1)
    keys, values = cache.k[layer][slots, :, :L], cache.v[layer][slots, :, :L]  # (N, Hkv, L, D)
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=H != Hkv)  # (N, H, T, D)
    return attn.wo(y.transpose(1, 2).reshape(N, T, -1))


@torch.no_grad()
def forward_rows(model: nn.Module, ids: torch.Tensor, cache: SlotCache, slots: list[int],
                 starts: list[int] | None = None) -> torch.Tensor:
    """ids (N, T) continuing slots[n] at starts[n] (default: the slot's length) -> logits (N, T, V); lengths advance."""
    N, T = ids.shape
    slots_t = torch.tensor(slots, dtype=torch.long)
    starts_t = cache.lengths[slots_t].clone() if starts is None else torch.tensor(starts, dtype=torch.long)
    if int(starts_t.max()) + T > cache.max_len:
        raise ValueError(f"a conversation would exceed the cache's {cache.max_len} positions")
    positions = starts_t[:, None] + torch.arange(T)  # (N, T)
    L = int(positions.max()) + 1
    mask = torch.arange(L)[None, None, :] <= positions[:, :, None]  # (N, T, L): causal, per row
    mask = mask[:, None].to(ids.device)  # (N, 1, T, L) for every head
    blocks = model.blocks
    angles = positions.to(ids.device).float()[..., None] * blocks[0].attn.inv_freq  # (N, T, D/2)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]  # (N, 1, T, D/2)
    x = model.tok_emb(ids)  # (N, T, C)
    positions = positions.to(ids.device)
    for layer, block in enumerate(blocks):
        x = x + _attend(block, block.norm_1(x), cos, sin, cache, layer, slots_t.to(ids.device), positions, mask)
        x = x + block.ffn(block.norm_2(x))
    cache.lengths[slots_t] = starts_t + T
    return model.head(model.norm_f(x))  # (N, T, V)
