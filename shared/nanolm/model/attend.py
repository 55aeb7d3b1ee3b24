"""Attention without the T x T matrix: FlashAttention's tiled online softmax, in plain PyTorch.

Written-out attention, softmax(q k^T * scale) v, builds the full (Tq, Tk) score matrix: memory grows
with the square of the length. FlashAttention (Dao et al., 2022) never builds it. It walks over
blocks of keys and keeps, for every query, only a running maximum m, a running sum l of exp(s - m)
and a running weighted sum of values; when a new block raises the maximum, the old sums are
rescaled by exp(m_old - m_new) (the "online softmax"). The forward pass saves only the output and
one number per query, the log-sum-exp m + log(l); the backward pass recomputes each block's
probabilities from it instead of storing them. Memory grows linearly with the length.

`tiled_attention` is that algorithm with Python loops over blocks (a torch.autograd.Function with
its own tiled backward): it teaches the idea and saves memory, but is no faster than one fused
kernel. `attention` is what models call: flash-attn's CUDA kernel when the package is installed and
the tensors are fp16/bf16 on CUDA, else torch's F.scaled_dot_product_attention (SDPA).

Shapes: q (..., H, Tq, D); k, v (..., Hkv, Tk, D) with H a multiple of Hkv (grouped-query attention)
and, for causal attention, Tk >= Tq: the queries are the last Tq positions (as with a KV cache).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ATTENTION_MODES = ("auto", "sdpa", "manual", "tiled")

try:  # the CUDA kernel of Dao et al.; optional
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    _flash_attn_func = None


def _kv_group(q: torch.Tensor, k: torch.Tensor) -> int:
    """How many query heads share each key/value head (H // Hkv); refuses an uneven split."""
    H, Hkv = q.size(-3), k.size(-3)
    if H % Hkv:
        raise ValueError(f"{H} query heads cannot share {Hkv} key/value heads evenly")
    return H // Hkv


def _expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat each of the Hkv key/value heads H // Hkv times (query head h reads kv head h // (H // Hkv))."""
    group = _kv_group(q, k)
    if group == 1:
        return k, v
    return k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)


def causal_mask(Tq: int, Tk: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(Tq, Tk) bool, True where query i (position Tk - Tq + i) may see key j (j <= that position)."""
    if Tk < Tq:
        raise ValueError(f"causal attention needs at least as many keys as queries, got Tq={Tq}, Tk={Tk}")
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None, return_weights: bool = False, dropout_p: float = 0.0):
    """softmax(q k^T * scale) v, written out: builds the whole (..., Tq, Tk) weight matrix (returned before dropout)."""
    k, v = _expand_kv(q, k, v)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Tq, Tk)
    if causal:
        scores = scores.masked_fill(~causal_mask(q.size(-2), k.size(-2), q.device), float("-inf"))
    weights = scores.softmax(dim=-1)
    out = (F.dropout(weights, dropout_p) if dropout_p else weights) @ v  # (..., Tq, D)
    return (out, weights) if return_weights else out


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                   dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """torch's fused F.scaled_dot_product_attention, with GQA and a causal mask for Tq < Tk."""
    kw = {"dropout_p": dropout_p, "scale": scale, "enable_gqa": _kv_group(q, k) > 1}  # GQA without copying k, v
    Tq, Tk = q.size(-2), k.size(-2)
    if not causal or Tq == 1:  # one new query (a KV-cache step) may see every cached key
        if causal and Tk < Tq:
            raise ValueError("causal attention needs at least as many keys as queries")
        return F.scaled_dot_product_attention(q, k, v, **kw)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(Tq, Tk, q.device), **kw)


def flash_attn_usable(q: torch.Tensor) -> bool:
    """True when flash-attn is installed and q is an fp16/bf16 CUDA tensor (what its kernel takes)."""
    return _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def backend(q: torch.Tensor) -> str:
    """Which kernel `attention` would run for q: 'flash-attn' or 'sdpa'."""
    return "flash-attn" if flash_attn_usable(q) else "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
              dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """The fastest exact attention here: flash-attn on CUDA when installed (fp16/bf16), else SDPA."""
    if flash_attn_usable(q) and q.dim() == 4 and q.size(-1) == v.size(-1):
        # flash-attn wants (B, T, H, D), handles GQA itself and aligns a causal mask bottom-right (Tq < Tk)
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                               dropout_p=dropout_p, softmax_scale=scale, causal=causal)
        return out.transpose(1, 2)
    return sdpa_attention(q, k, v, causal, dropout_p, scale)


def run_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "auto",
                  dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """Causal attention of q (B, H, Tq, D) over k, v (B, Hkv, Tk, D), Tk >= Tq, through one of ATTENTION_MODES."""
    if mode == "auto":
        return attention(q, k, v, causal=True, dropout_p=dropout_p, scale=scale)
    if mode == "sdpa":
        return sdpa_attention(q, k, v, causal=True, dropout_p=dropout_p, scale=scale)
    if mode == "manual":
        return naive_attention(q, k, v, causal=True, scale=scale, dropout_p=dropout_p)
    if mode == "tiled":
        if dropout_p:
            raise ValueError("attention mode 'tiled' has no dropout; use 'auto', 'sdpa' or 'manual' to train with it")
        return tiled_attention(q, k, v, causal=True, scale=scale)
    raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")


# ----------------------------------------------------------------------------- tiled, from scratch


def _block_scores(qi, kj, scale, causal, q0, k0, off):
    """Scores of query block qi (starting at query q0) against key block kj (starting at key k0), masked."""
    s = (qi @ kj.transpose(-2, -1)) * scale  # (..., bq, bk): the only score matrix ever built
    if causal and k0 + kj.size(-2) - 1 > off + q0:  # some key in this block lies after some query
        qpos = torch.arange(q0, q0 + qi.size(-2), device=qi.device) + off
        kpos = torch.arange(k0, k0 + kj.size(-2), device=qi.device)
        s = s.masked_fill(kpos[None, :] > qpos[:, None], float("-inf"))
    return s


def tiled_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
                  block_q: int = 64, block_k: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Online-softmax attention over key blocks -> (out (..., Tq, D), log-sum-exp per query (..., Tq))."""
    Tq, Tk = q.size(-2), k.size(-2)
    off = Tk - Tq  # query i sits at position off + i
    if causal and off < 0:
        raise ValueError("causal attention needs at least as many keys as queries")
    out = q.new_empty(*q.shape[:-1], v.size(-1))  # (..., Tq, Dv): values may be narrower than keys (MLA)
    lse = q.new_empty(q.shape[:-1])
    for q0 in range(0, Tq, block_q):
        qi = q[..., q0:q0 + block_q, :]  # (..., bq, D)
        m = qi.new_full(qi.shape[:-1], float("-inf"))  # running max of the scores, per query
        l = qi.new_zeros(qi.shape[:-1])  # running sum of exp(score - m)
        acc = qi.new_zeros(*qi.shape[:-1], v.size(-1))  # running sum of exp(score - m) * value
        k_end = min(Tk, off + q0 + qi.size(-2)) if causal else Tk  # later keys are all masked
        for k0 in range(0, k_end, block_k):
            kj, vj = k[..., k0:min(k0 + block_k, k_end), :], v[..., k0:min(k0 + block_k, k_end), :]
            s = _block_scores(qi, kj, scale, causal, q0, k0, off)
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[..., None])  # (..., bq, bk)
            rescale = torch.exp(m - m_new)  # shrink what was summed under the old maximum
            l = rescale * l + p.sum(-1)
            acc = rescale[..., None] * acc + p @ vj
            m = m_new
        out[..., q0:q0 + block_q, :] = acc / l[..., None]
        lse[..., q0:q0 + block_q] = m + torch.log(l)
    return out, lse


def tiled_backward(q, k, v, out, lse, dout, causal: bool, scale: float, block_q: int = 64, block_k: int = 64):
    """Gradients of tiled attention, recomputing each block's probabilities from the saved log-sum-exp."""
    Tq, Tk = q.size(-2), k.size(-2)
    off = Tk - Tq
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    delta = (dout * out).sum(-1)  # (..., Tq): sum_j P_ij dP_ij, the softmax backward's correction
    for q0 in range(0, Tq, block_q):
        qi, doi = q[..., q0:q0 + block_q, :], dout[..., q0:q0 + block_q, :]
        lse_i, delta_i = lse[..., q0:q0 + block_q, None], delta[..., q0:q0 + block_q, None]
        k_end = min(Tk, off + q0 + qi.size(-2)) if causal else Tk
        for k0 in range(0, k_end, block_k):
            k1 = min(k0 + block_k, k_end)
            kj, vj = k[..., k0:k1, :], v[..., k0:k1, :]
            p = torch.exp(_block_scores(qi, kj, scale, causal, q0, k0, off) - lse_i)  # (..., bq, bk)
            dv[..., k0:k1, :] += p.transpose(-2, -1) @ doi
            ds = p * (doi @ vj.transpose(-2, -1) - delta_i)  # gradient wrt the scaled scores
            dq[..., q0:q0 + block_q, :] += (ds @ kj) * scale
            dk[..., k0:k1, :] += (ds.transpose(-2, -1) @ qi) * scale
    return dq, dk, dv


class TiledAttention(torch.autograd.Function):
    """Tiled attention as an autograd op: saves q, k, v, out and the log-sum-exp, never the weights."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float, block_q: int, block_k: int):
        out, lse = tiled_forward(q, k, v, causal, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (causal, scale, block_q, block_k)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = tiled_backward(q, k, v, out, lse, dout.contiguous(), *ctx.settings)
        return dq, dk, dv, None, None, None, None


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None, block_q: int = 64, block_k: int = 64) -> torch.Tensor:
    """Exact attention in blocks of block_q queries x block_k keys, memory linear in the length."""
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be positive, got {block_q}, {block_k}")
    k, v = _expand_kv(q, k, v)  # outside the Function: autograd sums the shared heads' gradients
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    return TiledAttention.apply(q, k, v, causal, scale, block_q, block_k)


# ----------------------------------------------------------------------------- measuring memory


class _TensorMemory(TorchDispatchMode):
    """Counts the bytes of every tensor storage created inside, until it is freed; keeps the peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):  # a view or in-place op: no new storage
            return out
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, n = storage.data_ptr(), storage.nbytes()
                if n and key not in self.seen:  # a new storage (views share their base's)
                    self.seen.add(key)
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, n)
        return out


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes of tensors allocated while fn() runs (its result freed at the end).

    CUDA: torch.cuda.max_memory_allocated above the level before the call. CPU: every tensor storage an
    aten op creates is counted until it is freed (scratch memory inside a fused kernel is not seen).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return peak
    with _TensorMemory() as tracker:
        result = fn()
        del result
    return tracker.peak
