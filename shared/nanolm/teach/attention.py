"""Attention, as notebook 05 builds it: scaled dot-product, masks, multi-head with a fused qkv
projection, and Bahdanau / Luong attention for the reversal seq2seq of nanolm.rnn.

Mask convention: boolean, True = "may attend" (as F.scaled_dot_product_attention and
nanolm.transformer). torch.nn.MultiheadAttention reads a boolean mask the other way round
(True = blocked): pass it `~mask`.

MultiHeadAttention keeps one fused projection `qkv` (weight (3C, C) = [W_q; W_k; W_v] by rows),
which is exactly the layout of nn.MultiheadAttention's `in_proj_weight`, so weights copy both ways
(`load_torch`, `from_torch`, `to_torch`).

The seq2seq decoders take the arguments of nanolm.rnn.Decoder, (tgt_in, state, memory), so they
plug into nanolm.rnn.Seq2Seq, train_reversal and reversal_accuracy unchanged; after every call
they keep the attention weights of that call in `self.attention` (B, T, S).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .rnn import REV_BOS, REV_VOCAB, Decoder, Encoder, Seq2Seq, State

# ----------------------------------------------------------------------------- the core


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale) v with scale 1/sqrt(d_k): q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv)
    -> (out (..., Tq, dv), weights (..., Tq, Tk)).

    `mask` is boolean, broadcastable to (..., Tq, Tk), True where a query may attend to a key.
    Masked keys get exactly zero weight; a query that may attend to nothing gets all-zero
    weights and a zero output (instead of NaN).
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"queries and keys need the same last dimension, got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"keys and values need the same length, got {k.shape[-2]} and {v.shape[-2]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Tq, Tk)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)  # rows with no allowed key: NaN -> 0
    return weights @ v, weights


def causal_mask(T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, T) boolean, True on and below the diagonal: position t may attend to positions <= t."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, S) boolean, True where tokens (B, S) is a real token, False on padding.

    For scores (B, Tq, S) use mask[:, None, :]; for (B, H, Tq, S) use mask[:, None, None, :].
    """
    return tokens != pad_id


# ----------------------------------------------------------------------------- multi-head


class MultiHeadAttention(nn.Module):
    """Multi-head attention with one fused qkv projection; heads are split by a reshape.

    forward(x, memory=None, mask=None) -> (y (B, Tq, C), weights (B, H, Tq, Tk)).
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True):
        super().__init__()
        if n_heads < 1 or d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)  # [W_q; W_k; W_v]
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        *,
        causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, Tq, C) attends to memory (B, Tk, C), or to itself when memory is None.

        mask: boolean, broadcastable to (B, H, Tq, Tk), True = may attend; causal=True adds
        the causal mask (self-attention only).
        """
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"expected x of shape (B, T, {self.d_model}), got {tuple(x.shape)}")
        B, Tq, C = x.shape
        H, hs = self.n_heads, self.head_dim
        if memory is None:
            qkv = self.qkv(x).view(B, Tq, 3, H, hs).permute(2, 0, 3, 1, 4)  # (3, B, H, T, hs)
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            if memory.ndim != 3 or memory.shape[0] != B or memory.shape[-1] != C:
                raise ValueError(f"expected memory of shape ({B}, S, {C}), got {tuple(memory.shape)}")
            if causal:
                raise ValueError("causal=True is for self-attention (memory=None)")
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[:C], None if b is None else b[:C]).view(B, Tq, H, hs).transpose(1, 2)
            kv = F.linear(memory, w[C:], None if b is None else b[C:])  # (B, Tk, 2C)
            kv = kv.view(B, memory.shape[1], 2, H, hs).permute(2, 0, 3, 1, 4)  # (2, B, H, Tk, hs)
            k, v = kv[0], kv[1]
        if causal:
            cm = causal_mask(Tq, device=x.device)
            mask = cm if mask is None else mask & cm
        y, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, Tq, hs), (B, H, Tq, Tk)
        y = y.transpose(1, 2).reshape(B, Tq, C)  # merge heads
        return self.out(y), weights

    # -- torch.nn.MultiheadAttention interop: in_proj_weight is our qkv.weight, out_proj is out.

    @torch.no_grad()
    def load_torch(self, ref: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy the weights of a torch.nn.MultiheadAttention (same width, heads and bias) into this module."""
        if ref.embed_dim != self.d_model or ref.num_heads != self.n_heads:
            raise ValueError(
                f"shape mismatch: ours d_model={self.d_model}, n_heads={self.n_heads}; "
                f"theirs embed_dim={ref.embed_dim}, num_heads={ref.num_heads}"
            )
        if ref.in_proj_weight is None:
            raise ValueError("nn.MultiheadAttention with kdim/vdim != embed_dim has no packed in_proj_weight")
        if (ref.in_proj_bias is None) != (self.qkv.bias is None) or ref.bias_k is not None:
            raise ValueError("bias settings differ (or the module uses add_bias_kv, which we do not)")
        self.qkv.weight.copy_(ref.in_proj_weight)
        self.out.weight.copy_(ref.out_proj.weight)
        if self.qkv.bias is not None:
            self.qkv.bias.copy_(ref.in_proj_bias)
            self.out.bias.copy_(ref.out_proj.bias)
        return self

    @classmethod
    def from_torch(cls, ref: nn.MultiheadAttention) -> MultiHeadAttention:
        """A new MultiHeadAttention holding the weights of `ref` (same dtype and device)."""
        ours = cls(ref.embed_dim, ref.num_heads, bias=ref.in_proj_bias is not None)
        ours = ours.to(dtype=ref.out_proj.weight.dtype, device=ref.out_proj.weight.device)
        return ours.load_torch(ref)

    @torch.no_grad()
    def to_torch(self) -> nn.MultiheadAttention:
        """A batch_first torch.nn.MultiheadAttention (dropout 0) holding this module's weights."""
        w = self.qkv.weight
        ref = nn.MultiheadAttention(
            self.d_model, self.n_heads, bias=self.qkv.bias is not None, batch_first=True,
            device=w.device, dtype=w.dtype,
        )
        ref.in_proj_weight.copy_(w)
        ref.out_proj.weight.copy_(self.out.weight)
        if self.qkv.bias is not None:
            ref.in_proj_bias.copy_(self.qkv.bias)
            ref.out_proj.bias.copy_(self.out.bias)
        return ref


# ----------------------------------------------------------------------------- seq2seq attention


def _attend(scores: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (B, T, S), keys (B, S, D), mask (B, S) -> (context (B, T, D), weights (B, T, S))."""
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    weights = scores.softmax(dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask[:, None, :], 0.0)
    return weights @ keys, weights


def _as_steps(query: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(B, D) -> (B, 1, D) and remember to squeeze; (B, T, D) stays."""
    if query.ndim == 2:
        return query[:, None, :], True
    if query.ndim == 3:
        return query, False
    raise ValueError(f"query must be (B, D) or (B, T, D), got {tuple(query.shape)}")


class BahdanauAttention(nn.Module):
    """Additive attention (Bahdanau et al., 2015): score(s, h) = v^T tanh(W_q s + W_k h).

    forward(query (B, Dq) or (B, T, Dq), keys (B, S, Dk), mask (B, S) | None)
    -> (context (B, [T,] Dk), weights (B, [T,] S)).
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int = 64):
        super().__init__()
        self.w_q = nn.Linear(query_dim, attn_dim, bias=False)
        self.w_k = nn.Linear(key_dim, attn_dim, bias=True)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None,
        *, projected_keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """projected_keys: self.w_k(keys) (B, S, A), if already computed (a decoder loop reuses it)."""
        qs, squeeze = _as_steps(query)
        pk = self.w_k(keys) if projected_keys is None else projected_keys  # (B, S, A)
        # (B, T, 1, A) + (B, 1, S, A) -> tanh -> v -> (B, T, S)
        scores = self.v(torch.tanh(self.w_q(qs)[:, :, None, :] + pk[:, None, :, :])).squeeze(-1)
        ctx, w = _attend(scores, keys, mask)
        return (ctx[:, 0], w[:, 0]) if squeeze else (ctx, w)


LUONG_METHODS = ("dot", "general", "concat")


class LuongAttention(nn.Module):
    """Multiplicative attention (Luong et al., 2015) with three scores:
    dot s^T h, general s^T W h, concat v^T tanh(W [s; h]).

    forward(query (B, Dq) or (B, T, Dq), keys (B, S, Dk), mask (B, S) | None)
    -> (context (B, [T,] Dk), weights (B, [T,] S)).
    """

    def __init__(self, query_dim: int, key_dim: int, method: str = "general", attn_dim: int = 64):
        super().__init__()
        if method not in LUONG_METHODS:
            raise ValueError(f"method must be one of {LUONG_METHODS}, got {method!r}")
        if method == "dot" and query_dim != key_dim:
            raise ValueError(f"'dot' needs query_dim == key_dim, got {query_dim} and {key_dim}")
        self.method = method
        if method == "general":
            self.w = nn.Linear(key_dim, query_dim, bias=False)  # s^T (W h)
        elif method == "concat":
            self.w = nn.Linear(query_dim + key_dim, attn_dim, bias=False)
            self.v = nn.Linear(attn_dim, 1, bias=False)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qs, squeeze = _as_steps(query)
        if self.method == "dot":
            scores = qs @ keys.transpose(1, 2)  # (B, T, S)
        elif self.method == "general":
            scores = qs @ self.w(keys).transpose(1, 2)  # (B, T, S)
        else:  # concat: W [s; h] = W_s s + W_h h, computed as two halves to avoid building (B, T, S, Dq+Dk)
            dq = qs.shape[-1]
            w_s, w_h = self.w.weight[:, :dq], self.w.weight[:, dq:]
            hidden = torch.tanh((qs @ w_s.T)[:, :, None, :] + (keys @ w_h.T)[:, None, :, :])  # (B, T, S, A)
            scores = self.v(hidden).squeeze(-1)
        ctx, w = _attend(scores, keys, mask)
        return (ctx[:, 0], w[:, 0]) if squeeze else (ctx, w)


def _split_state(state: State) -> tuple[torch.Tensor, torch.Tensor]:
    h, c = state
    if h.ndim == 3:
        if h.shape[0] != 1:
            raise ValueError(f"attention decoders take a one-layer state (1, B, H), got {tuple(h.shape)}")
        h, c = h[0], c[0]
    return h, c


class BahdanauDecoder(nn.Module):
    """Decoder that attends *before* each step: the previous state s_{t-1} queries the memory, the
    context c_t joins the input of the LSTM step, and the head reads [s_t; c_t].

    forward(tgt_in (B, T), state ((1, B, H), (1, B, H)), memory (B, S, H)) -> (logits (B, T, V), state).
    """

    def __init__(self, vocab_size: int = REV_VOCAB, emb_dim: int = 32, hidden: int = 64, attn_dim: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, emb_dim)
        self.attn = BahdanauAttention(hidden, hidden, attn_dim)
        self.cell = nn.LSTMCell(emb_dim + hidden, hidden)
        self.head = nn.Linear(2 * hidden, vocab_size)
        self.attention: torch.Tensor | None = None  # (B, T, S) weights of the last call

    def forward(
        self, tgt_in: torch.Tensor, state: State, memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        if memory is None:
            raise ValueError("an attention decoder needs the encoder outputs as `memory` (B, S, H)")
        h, c = _split_state(state)
        e = self.emb(tgt_in)  # (B, T, E)
        pk = self.attn.w_k(memory)  # (B, S, A): the keys' half of the score, the same at every step
        outs, weights = [], []
        for t in range(tgt_in.shape[1]):
            ctx, w = self.attn(h, memory, memory_mask, projected_keys=pk)  # (B, H), (B, S)
            h, c = self.cell(torch.cat([e[:, t], ctx], dim=-1), (h, c))
            outs.append(torch.cat([h, ctx], dim=-1))
            weights.append(w)
        self.attention = torch.stack(weights, dim=1).detach()  # (B, T, S)
        logits = self.head(torch.stack(outs, dim=1))  # (B, T, V)
        return logits, (h[None], c[None])


class LuongDecoder(nn.Module):
    """Decoder that attends *after* its step: the LSTM output s_t queries the memory (dot, general or
    concat score), and the head reads the attentional vector tanh(W_c [c_t; s_t]). No input feeding,
    so teacher forcing runs all T steps through the LSTM at once.

    forward(tgt_in (B, T), state ((1, B, H), (1, B, H)), memory (B, S, H)) -> (logits (B, T, V), state).
    """

    def __init__(
        self, vocab_size: int = REV_VOCAB, emb_dim: int = 32, hidden: int = 64, method: str = "general",
        attn_dim: int = 64,
    ):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, emb_dim)
        self.rnn = nn.LSTM(emb_dim, hidden, batch_first=True)
        self.attn = LuongAttention(hidden, hidden, method, attn_dim)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.head = nn.Linear(hidden, vocab_size)
        self.attention: torch.Tensor | None = None  # (B, T, S) weights of the last call

    def forward(
        self, tgt_in: torch.Tensor, state: State, memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        if memory is None:
            raise ValueError("an attention decoder needs the encoder outputs as `memory` (B, S, H)")
        out, state = self.rnn(self.emb(tgt_in), state)  # (B, T, H)
        ctx, w = self.attn(out, memory, memory_mask)  # (B, T, H), (B, T, S)
        self.attention = w.detach()
        return self.head(torch.tanh(self.combine(torch.cat([ctx, out], dim=-1)))), state


class BiEncoder(nn.Module):
    """Embedding + bidirectional LSTM with hidden // 2 units per direction: src (B, S) ->
    memory (B, S, hidden) = [forward; backward] outputs, and the state ((1, B, hidden), (1, B, hidden))
    that concatenates both directions' final states (what a one-layer decoder of width `hidden` takes).
    """

    def __init__(self, vocab_size: int = REV_VOCAB, emb_dim: int = 32, hidden: int = 64):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"hidden must be even (two directions of hidden // 2), got {hidden}")
        self.emb = nn.Embedding(vocab_size, emb_dim)
        self.rnn = nn.LSTM(emb_dim, hidden // 2, batch_first=True, bidirectional=True)

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, State]:
        memory, (h, c) = self.rnn(self.emb(src))  # (B, S, H); h, c (2, B, H/2)
        join = lambda s: torch.cat([s[0], s[1]], dim=-1)[None]  # (1, B, H)
        return memory, (join(h), join(c))


ATTENTION_KINDS = ("bahdanau", "luong-dot", "luong-general", "luong-concat")


def make_attention_model(
    kind: str = "bahdanau", hidden: int = 64, emb_dim: int = 32, bidirectional: bool = False
) -> Seq2Seq:
    """The reversal seq2seq of nanolm.rnn with an attention decoder: kind in ATTENTION_KINDS, or
    "none" for the plain bottleneck decoder (nanolm.rnn.Decoder); bidirectional picks BiEncoder."""
    enc = BiEncoder(REV_VOCAB, emb_dim, hidden) if bidirectional else Encoder(REV_VOCAB, emb_dim, hidden, 1)
    if kind == "none":
        return Seq2Seq(enc, Decoder(REV_VOCAB, emb_dim, hidden, 1), bos=REV_BOS)
    if kind == "bahdanau":
        dec: nn.Module = BahdanauDecoder(REV_VOCAB, emb_dim, hidden, attn_dim=hidden)
    elif kind.startswith("luong-") and kind[6:] in LUONG_METHODS:
        dec = LuongDecoder(REV_VOCAB, emb_dim, hidden, method=kind[6:], attn_dim=hidden)
    else:
        raise ValueError(f"kind must be one of {ATTENTION_KINDS}, got {kind!r}")
    return Seq2Seq(enc, dec, bos=REV_BOS)


@torch.no_grad()
def generate_with_attention(model: Seq2Seq, src: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding that also collects the decoder's attention: (tokens (B, steps), weights (B, steps, S))."""
    memory, state = model.encoder(src)
    tok = torch.full((src.shape[0], 1), model.bos, dtype=torch.long, device=src.device)
    toks, weights = [], []
    for _ in range(steps):
        logits, state = model.decoder(tok, state, memory)  # (B, 1, V)
        tok = logits.argmax(-1)
        toks.append(tok)
        weights.append(model.decoder.attention)  # (B, 1, S)
    return torch.cat(toks, dim=1), torch.cat(weights, dim=1)
