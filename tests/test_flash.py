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


def _sdpa_reference(q, k, v, causal, scale=None):
    k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
    v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    mask = torch.ones(q.size(2), k.size(2), dtype=torch.bool).tril(k.size(2) - q.size(2)) if causal else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


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
    n1, n2, n3 = (peak(attend.naive_attention, T) for T in (256, 512, 1024))
    t1, t2, t3 = (peak(tiled, T) for T in (256, 512, 1024))
    assert 3.8 < (n3 - n2) / (n2 - n1) < 4.2  # memory added per doubling: the T x T weights
    assert 1.8 < (t3 - t2) / (t2 - t1) < 2.2  # outputs and running sums only
    assert t3 < n3 / 8


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


# ----------------------------------------------------------------------------- every entry point, every argument


@pytest.mark.parametrize("mode", ["auto", "sdpa", "manual", "tiled"])
def test_every_mode_honours_scale_and_the_cache_offset(mode):
    """run_attention's four modes with a non-default scale and queries after a cache (Tq < Tk), against SDPA."""
    q, k, v = (t.detach() for t in _qkv(Hkv=2, Tq=6, Tk=11, seed=3))
    ref = _sdpa_reference(q, k, v, True, scale=0.3)
    torch.testing.assert_close(attend.run_attention(q, k, v, mode, scale=0.3), ref, **tolerances.FLOAT32)
    assert not torch.allclose(attend.run_attention(q, k, v, mode), ref, atol=1e-3)  # the default scale differs


def test_single_query_step_sees_every_cached_key():
    """A KV-cache step (Tq = 1) attends to all Tk keys: every function equals softmax over all of them."""
    q, k, v = (t.detach() for t in _qkv(Tq=1, Tk=13, seed=4))
    weights = (q @ k.transpose(-2, -1) / 4.0).softmax(-1)  # D = 16: scale 1/4
    ref = weights @ v
    for fn in (attend.naive_attention, attend.sdpa_attention, attend.attention, attend.tiled_attention):
        torch.testing.assert_close(fn(q, k, v), ref, **tolerances.FLOAT32)


def test_not_causal_lets_a_query_see_later_keys():
    q, k, v = (t.detach() for t in _qkv(Tq=5, Tk=5, seed=6))
    ref = (q @ k.transpose(-2, -1) / 4.0).softmax(-1) @ v
    for fn in (attend.naive_attention, attend.sdpa_attention, attend.tiled_attention):
        torch.testing.assert_close(fn(q, k, v, causal=False), ref, **tolerances.FLOAT32)
    assert not torch.allclose(attend.sdpa_attention(q, k, v), ref, atol=1e-3)


def test_sdpa_passes_dropout_through():
    q, k, v = (t.detach() for t in _qkv(Tq=8, Tk=8, seed=7))
    torch.manual_seed(1)
    ours = attend.sdpa_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(1)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.5))
    assert not torch.allclose(ours, attend.sdpa_attention(q, k, v), atol=1e-3)


def test_bad_shapes_and_settings_are_refused():
    q, k, v = (t.detach() for t in _qkv(H=4, Hkv=3, Tq=4, Tk=4))
    for fn in (attend.naive_attention, attend.sdpa_attention, attend.tiled_attention):
        with pytest.raises(ValueError, match="4 query heads cannot share 3"):
            fn(q, k, v)
    q, k, v = (t.detach() for t in _qkv(Tq=6, Tk=4))
    for fn in (attend.naive_attention, attend.sdpa_attention, attend.tiled_attention):
        with pytest.raises(ValueError, match="at least as many keys"):
            fn(q, k, v)
    for bq, bk in ((0, 4), (4, 0)):
        with pytest.raises(ValueError, match="block sizes must be positive"):
            attend.tiled_attention(q, q, q, block_q=bq, block_k=bk)
    with pytest.raises(ValueError, match="attention mode must be one of"):
        attend.run_attention(q, q, q, "fast")
    assert attend.causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


def test_flash_branch_hands_flash_attn_its_layout(monkeypatch):
    """With flash-attn usable, attention() calls it on (B, T, H, D) with the scale, dropout and causal flag."""
    seen = {}

    def fake_flash(q, k, v, dropout_p, softmax_scale, causal):  # flash-attn's layout: (B, T, H, D)
        seen.update(shape=tuple(q.shape), dropout_p=dropout_p, scale=softmax_scale, causal=causal)
        out = attend.sdpa_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal, 0.0, softmax_scale)
        return out.transpose(1, 2)

    monkeypatch.setattr(attend, "_flash_attn_func", fake_flash)
    monkeypatch.setattr(attend, "flash_attn_usable", lambda q: isinstance(q, torch.Tensor))
    q, k, v = (t.detach() for t in _qkv(B=2, H=4, Hkv=2, Tq=5, Tk=9, D=16, seed=8))
    out = attend.attention(q, k, v, causal=True, dropout_p=0.0, scale=0.3)
    assert seen == {"shape": (2, 5, 4, 16), "dropout_p": 0.0, "scale": 0.3, "causal": True}
    torch.testing.assert_close(out, attend.sdpa_attention(q, k, v, True, 0.0, 0.3), **tolerances.FLOAT32)
    assert attend.backend(q) == "flash-attn"
    seen.clear()
    attend.attention(q, k, v[..., :8], causal=False)  # values narrower than keys: flash-attn cannot take them
    assert seen == {}


def test_flash_attn_is_never_used_for_cpu_tensors(monkeypatch):
    monkeypatch.setattr(attend, "_flash_attn_func", lambda *a, **kw: None)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert not attend.flash_attn_usable(torch.zeros(1, 1, 1, 8, dtype=dtype))


def test_peak_memory_counts_live_bytes_exactly():
    """A freed tensor's bytes leave the count: peak = the largest set alive at once, not the sum of all."""
    def two_in_turn():
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        del a
        return torch.empty(500, dtype=torch.float64)  # 4000 bytes, after a is gone

    def two_at_once():
        a = torch.empty(1000, dtype=torch.float32)
        b = torch.empty(250, dtype=torch.float32)  # 1000 bytes while a lives
        return a, b

    def freed_then_same_size_again():  # the allocator may hand the freed address out again: count it anew
        a = torch.empty(1000, dtype=torch.float32)
        del a
        a2 = torch.empty(1000, dtype=torch.float32)
        c = torch.empty(250, dtype=torch.float32)
        return a2, c

    assert attend.peak_memory(two_in_turn) == 4000
    assert attend.peak_memory(two_at_once) == 5000
    assert attend.peak_memory(freed_then_same_size_again) == 5000
    x = torch.zeros(100)
    assert attend.peak_memory(lambda: x[10:20]) == 0  # a view of an outside tensor allocates nothing


@pytest.mark.parametrize("D, block", [(5, 3), (3, 6)])
def test_inputs_without_a_batch_dimension(D, block):
    """(H, T, D) tensors, with T != D and blocks wider or narrower than D: every dimension is addressed from the
    end, forward and backward."""
    g = torch.Generator().manual_seed(9)
    q = torch.randn(4, 13, D, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 16, D, generator=g, requires_grad=True) for _ in range(2))
    ref = _sdpa_reference(q[None], k[None], v[None], True)[0]
    dout = torch.randn(4, 13, D, generator=g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout)
    for fn in (attend.naive_attention, attend.sdpa_attention, attend.tiled_attention):
        kw = {"block_q": block, "block_k": block + 1} if fn is attend.tiled_attention else {}
        out = fn(q, k, v, **kw)
        torch.testing.assert_close(out, ref, **tolerances.FLOAT32, msg=fn.__name__)
        for g_ours, g_ref in zip(torch.autograd.grad(out, (q, k, v), dout), ref_grads, strict=True):
            torch.testing.assert_close(g_ours, g_ref, **tolerances.FLOAT32, msg=fn.__name__)


def test_defaults_are_causal_and_auto():
    q, k, v = (t.detach() for t in _qkv(Tq=6, Tk=6, seed=10))
    ref = _sdpa_reference(q, k, v, True)
    torch.testing.assert_close(attend.attention(q, k, v), ref, **tolerances.FLOAT32)
    torch.testing.assert_close(attend.run_attention(q, k, v), ref, **tolerances.FLOAT32)


@pytest.mark.parametrize("Tq, Tk", [(2, 5), (1, 1), (2, 2)])
def test_sdpa_short_query_runs(Tq, Tk):
    q, k, v = (t.detach() for t in _qkv(Tq=Tq, Tk=Tk, seed=11))
    torch.testing.assert_close(attend.sdpa_attention(q, k, v), _sdpa_reference(q, k, v, True), **tolerances.FLOAT32)


@pytest.mark.parametrize("mode", ["auto", "sdpa", "manual"])
def test_dropout_reaches_the_kernel_in_every_mode(mode):
    """p = 0.3 (not F.dropout's default 0.5): the same seed gives the same mask as the kernel called directly."""
    q, k, v = (t.detach() for t in _qkv(Tq=8, Tk=8, seed=12))
    direct = attend.naive_attention if mode == "manual" else attend.sdpa_attention
    torch.manual_seed(2)
    ours = attend.run_attention(q, k, v, mode, dropout_p=0.3)
    torch.manual_seed(2)
    torch.testing.assert_close(ours, direct(q, k, v, dropout_p=0.3))
    torch.manual_seed(2)
    assert not torch.allclose(ours, direct(q, k, v, dropout_p=0.5), atol=1e-3)


def test_tiled_blocks_of_one_and_each_query_its_own_maximum():
    """Blocks of 1 x 1 are allowed; a query whose scores are ~1000x larger than another's must not make the
    other's exponentials underflow (the running maximum is per query, not per block)."""
    q, k, v = (t.detach() for t in _qkv(B=1, H=1, Hkv=1, Tq=5, Tk=5, seed=13))
    q = q.clone()
    q[..., 0, :] *= 1000.0  # the first query's scores dwarf everyone else's
    ref = _sdpa_reference(q, k, v, True)
    for block in (1, 2):
        out = attend.tiled_attention(q, k, v, block_q=block, block_k=block)
        torch.testing.assert_close(out, ref, **tolerances.FLOAT32)


def test_flash_attn_usable_needs_the_kernel_cuda_and_half_precision(monkeypatch):
    """Checked on stand-ins for CUDA tensors (flash_attn_usable reads only is_cuda and dtype)."""
    from types import SimpleNamespace
    half_cuda = SimpleNamespace(is_cuda=True, dtype=torch.float16)
    monkeypatch.setattr(attend, "_flash_attn_func", None)
    assert not attend.flash_attn_usable(half_cuda)
    monkeypatch.setattr(attend, "_flash_attn_func", lambda *a, **kw: None)
    assert attend.flash_attn_usable(half_cuda) and attend.backend(half_cuda) == "flash-attn"
    assert attend.flash_attn_usable(SimpleNamespace(is_cuda=True, dtype=torch.bfloat16))
    assert not attend.flash_attn_usable(SimpleNamespace(is_cuda=True, dtype=torch.float32))
    assert not attend.flash_attn_usable(SimpleNamespace(is_cuda=False, dtype=torch.float16))
