"""A key-value cache for generation: what every layer computed for the tokens already seen.

Without a cache, generating token t re-runs the model over all t tokens of the context, although
the keys and values of tokens 0..t-1 are the same as one step before. With a cache, one forward pass
over the prompt (the "prefill") stores them, and every later step runs the model on one new token
and appends its keys and values.

The cache is generic: each layer stores any number of tensors whose time axis is dim -2
(keys and values (B, H_kv, T, D) for multi-head and grouped-query attention; the latent (B, T, r)
and the shared RoPE key (B, 1, T, d_rope) for multi-head latent attention). Buffers are allocated
on a layer's first update, for `max_len` positions, so appending never copies the past.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer tensors of the tokens seen so far (time axis -2), preallocated for max_len positions."""

    def __init__(self, n_layer: int, max_len: int):
        if n_layer < 1 or max_len < 1:
            raise ValueError(f"a KVCache needs n_layer >= 1 and max_len >= 1, got {n_layer}, {max_len}")
        self.n_layer = n_layer
        self.max_len = max_len
        self.length = 0  # positions stored in every layer (advanced by the model after a full forward)
        self.buffers: list[tuple[torch.Tensor, ...] | None] = [None] * n_layer

    def update(self, layer: int, *new: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Append new (..., T, d) tensors at position `length`; return each layer tensor up to length + T."""
        T = new[0].size(-2)
        start, end = self.length, self.length + T
        if end > self.max_len:
            raise ValueError(f"KVCache is full: {start} + {T} positions exceed max_len {self.max_len}")
        if self.buffers[layer] is None:
            self.buffers[layer] = tuple(
                t.new_zeros(*t.shape[:-2], self.max_len, t.shape[-1]) for t in new  # (..., max_len, d)
            )
        bufs = self.buffers[layer]
        if len(bufs) != len(new):
            raise ValueError(f"layer {layer} stores {len(bufs)} tensors, got {len(new)}")
        out = []
        for buf, t in zip(bufs, new, strict=True):
            buf[..., start:end, :] = t
            out.append(buf[..., :end, :])  # a view: no copy of the past
        return tuple(out)

    def advance(self, T: int) -> None:
        """Mark T more positions as stored (call once per forward pass, after every layer updated)."""
        self.length += T

    def reset(self) -> None:
        """Forget every stored position (the buffers are kept for reuse)."""
        self.length = 0

    def nbytes(self, used_only: bool = True) -> int:
        """Bytes held: of the stored positions (used_only) or of the whole preallocated buffers."""
        total = 0
        for bufs in self.buffers:
            for buf in bufs or ():
                n = buf.numel() * buf.element_size()
                total += n * self.length // self.max_len if used_only else n
        return total

    def repeat(self, n: int) -> None:
        """Copy a batch-1 cache into n rows, so n continuations can share one prefix (nanolm.eval.scorer)."""
        if n < 1:
            raise ValueError(f"repeat needs n >= 1, got {n}")
        for i, bufs in enumerate(self.buffers):
            if bufs is not None:
                if bufs[0].size(0) != 1:
                    raise ValueError(f"only a batch-1 cache can be repeated; layer {i} holds {bufs[0].size(0)} rows")
                self.buffers[i] = tuple(b.repeat(n, *([1] * (b.dim() - 1))) for b in bufs)
