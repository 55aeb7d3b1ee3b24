"""nanolm.model.attend: tiled online-softmax attention against torch's SDPA (values and gradients), and its memory."""

import pytest
import tolerances
import torch
import torch.nn.functional as F

from nanolm.model import attend


def _qkv(B=2, H=4, Hkv=4, Tq=37, Tk=37, D=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g, dtype=dtype, requires_grad=True)
    k = torch.randn(B, Hkv, Tk, D, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(B, Hkv, Tk, D, generator=g, dtype=dtype, requires_grad=True)
    return q, k, v


def _sdpa_reference(q, k, v, causal):
    k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
    v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    mask = torch.ones(q.size(2), k.size(2), dtype=torch.bool).tril(k.size(2) - q.size(2)) if causal else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


CASES = {
    "causal": dict(), "not_causal": dict(causal=False), "gqa": dict(Hkv=2), "mqa": dict(Hkv=1),
    "queries_after_cache": dict(Tq=9, Tk=40), "tiny_blocks": dict(block=5), "one_block": dict(block=128),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tiled_equals_sdpa_forward_and_gradients(case):
    """float32: outputs and dq, dk, dv within 1e-5 of SDPA + autograd (lengths not multiples of the block)."""
    kw = dict(CASES[case])
    causal, block = kw.pop("causal", True), kw.pop("block", 16)
    q, k, v = _qkv(**kw)
    dout = torch.randn(q.shape[:-1] + (v.size(-1),), generator=torch.Generator().manual_seed(5))
    out = attend.tiled_attention(q, k, v, causal=causal, block_q=block, block_k=block)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref = _sdpa_reference(q, k, v, causal)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout)
    torch.testing.assert_close(out, ref, **tolerances.FLOAT32_MODEL)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, **tolerances.FLOAT32_MODEL, msg=f"d{name}")
    for fn in (attend.naive_attention, attend.sdpa_attention, attend.attention):
        torch.testing.assert_close(fn(q, k, v, causal=causal), ref, **tolerances.FLOAT32_MODEL)


def test_tiled_passes_gradcheck_in_float64():
    q, k, v = _qkv(B=1, H=2, Hkv=1, Tq=7, Tk=9, D=4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: attend.tiled_attention(a, b, c, block_q=3, block_k=2), (q, k, v))


def test_values_may_be_narrower_than_keys():
    q, k, _ = _qkv(Tq=20, Tk=20, D=12)
    v = torch.randn(2, 4, 20, 8)
    torch.testing.assert_close(attend.tiled_attention(q, k, v, block_q=8, block_k=8), _sdpa_reference(q, k, v, True),
                               **tolerances.FLOAT32_MODEL)


def test_backend_is_sdpa_without_flash_attn_on_cuda():
    q, _, _ = _qkv()
    assert attend.backend(q) == "sdpa"  # a CPU tensor never goes to flash-attn
    with pytest.raises(ValueError, match="at least as many keys"):
        attend.causal_mask(5, 3)


@pytest.mark.skipif(attend._flash_attn_func is None or not torch.cuda.is_available(), reason="needs flash-attn on CUDA")
def test_flash_attn_equals_sdpa_on_cuda():  # pragma: no cover - needs a GPU
    q, k, v = (t.detach().cuda().half() for t in _qkv(Hkv=2, Tq=9, Tk=40, D=64))
    assert attend.backend(q) == "flash-attn"
    torch.testing.assert_close(attend.attention(q, k, v), attend.sdpa_attention(q, k, v), **tolerances.FLOAT16)


def test_peak_memory_naive_quadratic_tiled_linear():
    def peak(fn, T):
        q, k, v = (t.detach() for t in _qkv(B=1, H=2, Hkv=2, Tq=T, Tk=T, D=16))
        return attend.peak_memory(lambda: fn(q, k, v))

    tiled = lambda q, k, v: attend.tiled_attention(q, k, v, block_q=32, block_k=32)  # noqa: E731
    n1, n2 = peak(attend.naive_attention, 256), peak(attend.naive_attention, 512)
    t1, t2 = peak(tiled, 256), peak(tiled, 512)
    assert 3.5 < n2 / n1 < 4.5  # the T x T weights
    assert 1.5 < t2 / t1 < 2.5  # outputs and running sums only
    assert t2 < n2 / 4


def test_written_out_attention_has_dropout_tiled_refuses_it():
    """naive_attention drops weights after the softmax (returning them undropped); the tiled path has no dropout."""
    q, k, v = (t.detach() for t in _qkv(Tq=8, Tk=8))
    out, w = attend.naive_attention(q, k, v, return_weights=True)
    torch.manual_seed(0)
    dropped, w2 = attend.naive_attention(q, k, v, return_weights=True, dropout_p=0.5)
    assert torch.equal(w, w2) and not torch.allclose(dropped, out)
    torch.manual_seed(0)
    torch.testing.assert_close(dropped, torch.nn.functional.dropout(w, 0.5) @ v)
    torch.manual_seed(0)
    torch.testing.assert_close(attend.run_attention(q, k, v, "manual", dropout_p=0.5), dropped)
    with pytest.raises(ValueError, match="'tiled' has no dropout"):
        attend.run_attention(q, k, v, "tiled", dropout_p=0.1)
