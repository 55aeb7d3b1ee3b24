"""nanolm.teach.attention against torch: F.scaled_dot_product_attention, nn.MultiheadAttention, masks,
causality, and the Bahdanau / Luong seq2seq pieces against direct formulas.

Tolerances: tests/tolerances.py (float64 1e-12: the same arithmetic in a different order differs by
~1e-15, measured at most 1.8e-15; float32 1e-6: measured at most 2.4e-7). Masked weights and causality are checked exactly.
"""

import math

import pytest
import tolerances
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nanolm.teach import attention as A
from nanolm.teach import rnn

F64 = tolerances.FLOAT64
F32 = tolerances.FLOAT32


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- scaled dot-product


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3), heads=st.integers(1, 3), tq=st.integers(1, 7), tk=st.integers(1, 7),
    d=st.integers(1, 9), dv=st.integers(1, 5), seed=st.integers(0, 10_000),
)
def test_sdpa_matches_torch(batch, heads, tq, tk, d, dv, seed):
    q, k, v = _randn(batch, heads, tq, d, seed=seed), _randn(batch, heads, tk, d, seed=seed + 1), _randn(
        batch, heads, tk, dv, seed=seed + 2)
    out, w = A.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **F64)
    torch.testing.assert_close(w.sum(-1), torch.ones(batch, heads, tq, dtype=torch.float64), **F64)
    # a random mask that leaves every query at least one key (fully masked rows differ between torch backends)
    mask = torch.rand(batch, 1, tq, tk, generator=torch.Generator().manual_seed(seed)) < 0.6
    mask[..., 0] = True
    out_m, w_m = A.scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out_m, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **F64)
    assert (w_m[~mask.expand_as(w_m)] == 0).all(), "masked keys get exactly zero weight"


def test_sdpa_float32_causal_and_scale():
    q, k, v = (_randn(2, 4, 9, 16, seed=s, dtype=torch.float32) for s in range(3))
    out, _ = A.scaled_dot_product_attention(q, k, v, A.causal_mask(9))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), **F32)
    out_s, _ = A.scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out_s, F.scaled_dot_product_attention(q, k, v, scale=0.3), **F32)


def test_fully_masked_query_gets_zeros_not_nan():
    q, k, v = _randn(1, 3, 4, seed=0), _randn(1, 5, 4, seed=1), _randn(1, 5, 2, seed=2)
    mask = torch.ones(1, 3, 5, dtype=torch.bool)
    mask[0, 1] = False  # query 1 may attend to nothing
    out, w = A.scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(out).all() and (w[0, 1] == 0).all() and (out[0, 1] == 0).all()
    torch.testing.assert_close(w[0, [0, 2]].sum(-1), torch.ones(2, dtype=torch.float64), **F64)


def test_sdpa_bad_inputs():
    q, k, v = _randn(2, 3, 4), _randn(2, 5, 4), _randn(2, 5, 6)
    with pytest.raises(ValueError, match="same last dimension"):
        A.scaled_dot_product_attention(q, _randn(2, 5, 3), v)
    with pytest.raises(ValueError, match="same length"):
        A.scaled_dot_product_attention(q, k, _randn(2, 4, 6))
    with pytest.raises(ValueError, match="boolean"):
        A.scaled_dot_product_attention(q, k, v, torch.ones(2, 3, 5))


def test_masks():
    assert torch.equal(A.causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    tokens = torch.tensor([[5, 6, 0], [7, 0, 0]])
    assert torch.equal(A.padding_mask(tokens, 0), torch.tensor([[True, True, False], [True, False, False]]))


# ----------------------------------------------------------------------------- multi-head


def _pair(d_model=24, n_heads=4, dtype=torch.float64, bias=True, seed=0):
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(d_model, n_heads, bias=bias, batch_first=True, dtype=dtype)
    return A.MultiHeadAttention.from_torch(ref), ref


@pytest.mark.parametrize("dtype,tol", [(torch.float64, F64), (torch.float32, F32)])
@pytest.mark.parametrize("bias", [True, False])
def test_mha_matches_torch_self_attention(dtype, tol, bias):
    mine, ref = _pair(dtype=dtype, bias=bias)
    x = _randn(3, 7, 24, dtype=dtype).requires_grad_()
    y, w = mine(x)
    y_r, w_r = ref(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(y, y_r, **tol)
    torch.testing.assert_close(w, w_r, **tol)
    g, = torch.autograd.grad(y.square().sum(), x)
    g_r, = torch.autograd.grad(ref(x, x, x, need_weights=False)[0].square().sum(), x)
    torch.testing.assert_close(g, g_r, **tol)


def test_mha_matches_torch_cross_attention_and_masks():
    mine, ref = _pair()
    x, mem = _randn(2, 5, 24, seed=1), _randn(2, 8, 24, seed=2)
    tokens = torch.tensor([[3, 4, 5, 6, 7, 8, 0, 0], [3, 4, 5, 0, 0, 0, 0, 0]])
    pad = A.padding_mask(tokens, 0)  # (B, S)
    y, w = mine(x, mem, mask=pad[:, None, None, :])
    y_r, w_r = ref(x, mem, mem, key_padding_mask=~pad, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(y, y_r, **F64)
    torch.testing.assert_close(w, w_r, **F64)
    assert (w[~pad[:, None, None, :].expand_as(w)] == 0).all()

    xs = _randn(2, 8, 24, seed=3)
    causal = A.causal_mask(8)
    y, w = mine(xs, mask=pad[:, None, None, :], causal=True)
    y_r, w_r = ref(xs, xs, xs, key_padding_mask=~pad, attn_mask=~causal, need_weights=True,
                   average_attn_weights=False)
    torch.testing.assert_close(y, y_r, **F64)
    torch.testing.assert_close(w, w_r, **F64)
    blocked = ~(pad[:, None, None, :] & causal)
    assert (w[blocked.expand_as(w)] == 0).all(), "padding and future keys get exactly zero weight"


def test_mha_core_matches_sdpa_per_head():
    mine, _ = _pair()
    x = _randn(2, 6, 24)
    q, k, v = mine.qkv(x).view(2, 6, 3, 4, 6).permute(2, 0, 3, 1, 4)
    out_r = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 6, 24)
    torch.testing.assert_close(mine(x, causal=True)[0], mine.out(out_r), **F64)


def test_causality_is_exact():
    mine, _ = _pair(dtype=torch.float32)
    x = _randn(2, 10, 24, dtype=torch.float32)
    x2 = x.clone()
    x2[:, 6] = _randn(2, 24, seed=9, dtype=torch.float32)
    with torch.no_grad():
        a, _ = mine(x, causal=True)
        b, _ = mine(x2, causal=True)
        assert torch.equal(a[:, :6], b[:, :6]), "earlier outputs must not change, not even in the last bit"
        assert not torch.equal(a[:, 6:], b[:, 6:])
        a, _ = mine(x)
        b, _ = mine(x2)
        assert not torch.equal(a[:, :6], b[:, :6]), "(the test can fail: without the mask the past changes)"


def test_torch_round_trip():
    mine, ref = _pair(d_model=16, n_heads=2, seed=3)
    back = mine.to_torch()
    for name, p in ref.state_dict().items():
        assert torch.equal(back.state_dict()[name], p), name
    other = A.MultiHeadAttention(16, 2).double().load_torch(back)
    assert all(torch.equal(p, q) for p, q in zip(other.parameters(), mine.parameters(), strict=True))


def test_mha_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        A.MultiHeadAttention(30, 4)
    mha = A.MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        mha(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="memory"):
        mha(torch.randn(2, 5, 16), torch.randn(3, 4, 16))
    with pytest.raises(ValueError, match="causal"):
        mha(torch.randn(2, 5, 16), torch.randn(2, 4, 16), causal=True)
    with pytest.raises(ValueError, match="shape mismatch"):
        mha.load_torch(nn.MultiheadAttention(16, 2))


# ----------------------------------------------------------------------------- seq2seq attention


def test_bahdanau_matches_formula():
    torch.manual_seed(0)
    att = A.BahdanauAttention(5, 7, 6).double()
    s, h = _randn(2, 5, seed=1), _randn(2, 4, 7, seed=2)
    ctx, w = att(s, h)
    for b in range(2):
        e = torch.stack([att.v.weight[0] @ torch.tanh(att.w_q.weight @ s[b] + att.w_k.weight @ h[b, j] + att.w_k.bias)
                         for j in range(4)])
        torch.testing.assert_close(w[b], e.softmax(0), **F64)
        torch.testing.assert_close(ctx[b], w[b] @ h[b], **F64)


@pytest.mark.parametrize("method", A.LUONG_METHODS)
def test_luong_matches_formula(method):
    torch.manual_seed(1)
    att = A.LuongAttention(6, 6, method, attn_dim=5).double()
    s, h = _randn(2, 3, 6, seed=3), _randn(2, 4, 6, seed=4)  # three query steps at once
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    ctx, w = att(s, h, mask)
    for b in range(2):
        for t in range(3):
            def score(hj, b=b, t=t):
                if method == "dot":
                    return s[b, t] @ hj
                if method == "general":
                    return s[b, t] @ (att.w.weight @ hj)
                return att.v.weight[0] @ torch.tanh(att.w.weight @ torch.cat([s[b, t], hj]))
            e = torch.stack([score(h[b, j]) for j in range(4)]).masked_fill(~mask[b], -math.inf)
            torch.testing.assert_close(w[b, t], e.softmax(0), **F64)
            torch.testing.assert_close(ctx[b, t], w[b, t] @ h[b], **F64)
    assert (w[0, :, 3] == 0).all()


def test_luong_bad_inputs():
    with pytest.raises(ValueError, match="method"):
        A.LuongAttention(4, 4, "cosine")
    with pytest.raises(ValueError, match="dot"):
        A.LuongAttention(4, 6, "dot")
    with pytest.raises(ValueError, match="query"):
        A.LuongAttention(4, 4, "dot")(torch.randn(4), torch.randn(1, 3, 4))


@pytest.mark.parametrize("kind", A.ATTENTION_KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_decoders_step_by_step_equals_teacher_forcing(kind, bidirectional):
    """Feeding the target one token at a time (as generate does) gives the same logits and attention."""
    torch.manual_seed(0)
    model = A.make_attention_model(kind, hidden=16, emb_dim=8, bidirectional=bidirectional).double()
    src, tgt_in, _ = rnn.reversal_batch(3, 5, generator=torch.Generator().manual_seed(1))
    logits = model(src, tgt_in)
    full_w = model.decoder.attention
    assert logits.shape == (3, 5, rnn.REV_VOCAB) and full_w.shape == (3, 5, 5)
    torch.testing.assert_close(full_w.sum(-1), torch.ones(3, 5, dtype=torch.float64), **F64)
    memory, state = model.encoder(src)
    steps, ws = [], []
    for t in range(5):
        out, state = model.decoder(tgt_in[:, t:t + 1], state, memory)
        steps.append(out)
        ws.append(model.decoder.attention)
    torch.testing.assert_close(torch.cat(steps, 1), logits, **F64)
    torch.testing.assert_close(torch.cat(ws, 1), full_w, **F64)
    tokens, w = A.generate_with_attention(model, src, 6)
    assert tokens.shape == (3, 6) and w.shape == (3, 6, 5)
    assert torch.equal(tokens, model.generate(src, 6))


def test_attention_model_learns_short_reversal():
    torch.manual_seed(0)
    model = A.make_attention_model("luong-dot", hidden=32, emb_dim=8, bidirectional=True)
    rnn.train_reversal(model, steps=150, batch_size=32, lengths=(2, 5), lr=1e-2, seed=0)
    acc, _ = rnn.reversal_accuracy(model, 5, n=256)
    assert acc > 0.9, acc


def test_attention_model_bad_inputs():
    with pytest.raises(ValueError, match="kind"):
        A.make_attention_model("transformer")
    with pytest.raises(ValueError, match="even"):
        A.BiEncoder(hidden=15)
    dec = A.LuongDecoder(hidden=8, emb_dim=4)
    z = torch.zeros(1, 2, 8)
    with pytest.raises(ValueError, match="memory"):
        dec(torch.zeros(2, 3, dtype=torch.long), (z, z))
    assert isinstance(A.make_attention_model("none").decoder, rnn.Decoder)
