"""nanolm.adapt.quant against the references: bitsandbytes 0.50.2 (CPU) for NF4 and int8, gguf-py for Q4_1.

Bit for bit means torch.equal on the packed bytes, the absmax values, the double-quantization state and
the dequantized tensors. One exception is documented where it is tested: bnb's AVX-512 NF4 dequantize
kernel assumes blocks never cross rows, so for shapes whose last dim is not a multiple of the blocksize
(but is a multiple of 16) it reads the wrong absmax; there we compare with bnb's own pure-PyTorch
dequantization, which it uses on other machines and shapes.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nanolm.adapt import quant as Q
from nanolm.core import quants as core_quants

BF = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes is needed for the reference")
gguf_quants = pytest.importorskip("gguf.quants", reason="gguf-py is needed for the Q4_1 reference")
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute  # noqa: E402  (bnb's pure-torch path)
from gguf import GGMLQuantizationType  # noqa: E402

SHAPES = [(64,), (7,), (128, 64), (300, 257), (3, 96), (130, 70)]


def _weights(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def _bnb(W, double_quant, blocksize=64):
    return BF.quantize_4bit(W, blocksize=blocksize, quant_type="nf4", compress_statistics=double_quant)


def _assert_same_as_bnb(W, double_quant, blocksize=64):
    packed, state = _bnb(W, double_quant, blocksize)
    q = Q.quantize_nf4(W, blocksize, double_quant)
    assert q.packed.dtype == packed.dtype == torch.uint8 and q.packed.shape == packed.shape
    assert torch.equal(q.packed, packed)
    assert q.absmax.dtype == state.absmax.dtype and torch.equal(q.absmax, state.absmax)
    assert q.shape == state.shape and q.dtype == state.dtype and q.blocksize == state.blocksize
    if double_quant:
        assert torch.equal(q.offset, state.offset) and torch.equal(q.absmax2, state.state2.absmax)
        assert state.state2.blocksize == Q.ABSMAX_BLOCK and torch.equal(Q.dynamic_code(), state.state2.code)
    return q, packed, state


def _bnb_reference_dequant(packed, state):
    """bnb's pure-PyTorch NF4 dequantization (what its CPU op falls back to), double quant included."""
    absmax = state.absmax
    if state.nested:
        absmax = BF.dequantize_blockwise(state.absmax, state.state2) + state.offset
    return _dequantize_4bit_compute(packed.reshape(-1), absmax, state.code, state.blocksize, state.shape, state.dtype)


def test_codebooks_are_derived_exactly():
    assert torch.equal(Q.nf4_code(), BF.get_4bit_type("nf4", device="cpu"))  # exact, not just to float32
    assert torch.equal(Q.dynamic_code(), BF.create_dynamic_map())
    code = Q.nf4_code()
    assert code[0] == -1 and code[7] == 0 and code[15] == 1 and torch.all(code[1:] > code[:-1])


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_nf4_matches_bnb_bit_for_bit(shape, double_quant):
    W = _weights(shape, seed=sum(shape))
    q, packed, state = _assert_same_as_bnb(W, double_quant)
    ours = Q.dequantize_nf4(q)
    assert ours.shape == W.shape and ours.dtype == W.dtype
    assert torch.equal(ours, _bnb_reference_dequant(packed, state).reshape(W.shape))
    if shape[-1] % 64 and shape[-1] % 16 == 0:
        return  # bnb's AVX-512 kernel reads the wrong absmax here (see module doc); the reference above holds
    theirs = BF.dequantize_4bit(packed, state, quant_type="nf4")  # a 1-D input comes back as (1, n)
    assert torch.equal(ours, theirs.reshape(W.shape))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_half_precision_inputs(dtype, double_quant):
    W = _weights((96, 128), seed=3, dtype=dtype)
    q, packed, state = _assert_same_as_bnb(W, double_quant)
    out = Q.dequantize_nf4(q)
    assert out.dtype == dtype and torch.equal(out, BF.dequantize_4bit(packed, state, quant_type="nf4"))


@pytest.mark.parametrize("blocksize", [32, 128, 4096])
def test_nf4_other_blocksizes(blocksize):
    _assert_same_as_bnb(_weights((40, 130), seed=blocksize), True, blocksize)


def test_nf4_ties_and_near_ties_between_levels():
    mids = (Q.nf4_code()[:-1] + Q.nf4_code()[1:]) / 2  # exactly between two levels (in float32)
    up, down = torch.nextafter(mids, torch.tensor(2.0)), torch.nextafter(mids, torch.tensor(-2.0))
    W = torch.cat([torch.tensor([1.0]), mids, up, down, -mids, torch.zeros(3)])  # absmax 1: scaling is exact
    assert W.numel() == 64
    q, _, _ = _assert_same_as_bnb(W, False)
    idx = torch.stack([q.packed[:, 0] >> 4, q.packed[:, 0] & 15], 1).reshape(-1).long()
    assert torch.equal(idx[1:16], torch.arange(15))  # a tie takes the lower level
    assert torch.equal(idx[16:31], torch.arange(1, 16)) and torch.equal(idx[31:46], torch.arange(15))
    _assert_same_as_bnb(torch.cat([W * 0.37, W * -3.1, W[:33] * 0.01]), True)  # scaled, and a ragged block


def test_nf4_zeros_and_constant_blocks():
    q, _, _ = _assert_same_as_bnb(torch.zeros(128, 64), True)
    assert torch.equal(Q.dequantize_nf4(q), torch.zeros(128, 64))
    q, _, _ = _assert_same_as_bnb(torch.zeros(100), False)  # ragged all-zero block: absmax clamped to 1e-38
    assert q.absmax[0] == 0 and q.absmax[1] == torch.tensor(1e-38) and not Q.dequantize_nf4(q).any()
    W = torch.cat([torch.full((64,), 0.3), torch.full((64,), -2.5), torch.zeros(64), torch.full((31,), 7.0)])
    q, _, _ = _assert_same_as_bnb(W, False)
    assert torch.equal(Q.dequantize_nf4(q), W)  # a constant block is its own absmax: +-1 levels are exact
    _assert_same_as_bnb(W, True)


def test_double_quant_8bit_rounding_matches_bnb_kernel():
    # bnb's C kernel rounds to a 65536-point grid before finding the nearest level: hit grid points and
    # level midpoints, where a plain nearest-level rule would disagree with it.
    g = torch.Generator().manual_seed(1)
    grid = (2.0 * torch.randint(0, 65536, (20000,), generator=g).float()) / 65535.0 - 1.0
    code = Q.dynamic_code()
    mids = ((code[:-1] + code[1:]) / 2)[torch.randint(0, 255, (20000,), generator=g)]
    wide = torch.randn(20000, generator=g) * torch.exp(3 * torch.randn(20000, generator=g))
    for x in (grid, mids, wide, torch.cat([torch.zeros(256), wide[:300]])):
        for blocksize in (256, 4096):
            q_bnb, state = BF.quantize_blockwise(x, blocksize=blocksize)
            q, absmax = Q._dynamic_quantize(x, blocksize)
            assert torch.equal(q, q_bnb) and torch.equal(absmax, state.absmax)


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_round_trip_error_bound(double_quant):
    W = _weights((256, 320), seed=5)
    q = Q.quantize_nf4(W, double_quant=double_quant)
    err = (Q.dequantize_nf4(q) - W).abs().reshape(-1, 64)  # (B, 64)
    true_absmax = W.reshape(-1, 64).abs().amax(dim=1)
    half_gap = Q.nf4_code().diff().max() / 2  # the widest gap between levels, halved
    # nearest level: |w - level * a| <= a * half_gap; a quantized absmax a' adds |level| * |a - a'| <= |a - a'|
    bound = true_absmax * half_gap + (Q.nf4_absmax(q) - true_absmax).abs() + 1e-6
    assert torch.all(err <= bound[:, None])
    assert (err.pow(2).mean() / W.pow(2).mean()).sqrt() < 0.12  # ~10% relative RMS error for normal weights


def test_bits_per_weight():
    W = _weights((512, 512), seed=6)
    assert Q.bits_per_weight(Q.quantize_nf4(W)) == 4.5
    q = Q.quantize_nf4(W, double_quant=True)
    B = 512 * 512 // 64
    expected = 4 + 8 * B / W.numel() + 32 / W.numel() + 32 * math.ceil(B / 256) / W.numel()
    assert Q.bits_per_weight(q) == pytest.approx(expected) and Q.bits_per_weight(q) < 4.13


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_int8_matches_bnb_vectorwise(dtype):
    W = _weights((50, 33), seed=7, dtype=dtype)
    W[3] = 0  # a zero row
    W[5, 2] = 40.0  # an outlier: with no decomposition it just coarsens its own row
    q_bnb, stats, outliers = BF.int8_vectorwise_quant(W.clone(), threshold=0.0)
    q = Q.quantize_int8(W)
    assert outliers is None and torch.equal(q.q, q_bnb) and torch.equal(q.absmax, stats)
    assert torch.equal(Q.dequantize_int8(q, torch.float32), BF.int8_vectorwise_dequant(q_bnb, stats))
    back = Q.dequantize_int8(q, torch.float32)
    assert torch.all((back - W.float()).abs() <= q.absmax[:, None] / 254 * (1 + 1e-5) + 1e-7)  # half a step
    assert Q.dequantize_int8(q).dtype == dtype and not back[3].any()


def test_q4_1_matches_gguf_and_round_trips():
    for shape, seed in [((64, 96), 8), ((5, 32), 9), ((3, 4, 64), 10)]:
        W = _weights(shape, seed=seed)
        W.reshape(-1, 32)[1] = 0.25  # a constant block: d = 0
        raw = Q.quantize_q4_1(W)
        assert raw == gguf_quants.quantize(W.numpy(), GGMLQuantizationType.Q4_1).tobytes()
        assert len(raw) == W.numel() // 32 * 20
        back = core_quants.dequantize(np.frombuffer(raw, np.uint8), 3, tuple(W.shape))
        assert np.array_equal(back, gguf_quants.dequantize(np.frombuffer(raw, np.uint8).reshape(-1, 20),
                                                           GGMLQuantizationType.Q4_1).reshape(W.shape))
        x = W.numpy().reshape(-1, 32)
        d = (x.max(1) - x.min(1)) / 15
        # half a step, plus the fp16 rounding of d (times up to 15) and of m
        bound = d / 2 + 2.0 ** -11 * (15 * d + np.abs(x.min(1))) + 1e-6
        assert np.all(np.abs(back.reshape(-1, 32) - x) <= bound[:, None])
        assert np.array_equal(back.reshape(-1, 32)[1], np.full(32, 0.25, np.float32))


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_linear(double_quant):
    torch.manual_seed(11)
    linear = nn.Linear(96, 40)
    layer = Q.NF4Linear.from_linear(linear, double_quant=double_quant)
    assert not any(p.requires_grad for p in layer.parameters())
    x = torch.randn(2, 5, 96, requires_grad=True)
    W = Q.dequantize_nf4(Q.quantize_nf4(linear.weight, double_quant=double_quant))
    y = layer(x)
    assert y.shape == (2, 5, 40) and torch.equal(y, F.linear(x, W, linear.bias))
    assert torch.allclose(y, x @ W.T + linear.bias, atol=1e-5)
    y.sum().backward()  # gradients flow to the input (and so to LoRA adapters around the layer)
    assert torch.allclose(x.grad, W.sum(0).expand(2, 5, 96), atol=1e-5)
    expected = 96 * 40 // 2 + 40 * 4 + (96 * 40 // 64) * (1 if double_quant else 4) + (8 if double_quant else 0)
    assert layer.memory_bytes() == expected < 96 * 40 * 4 / 6
    assert torch.equal(layer(x.detach().bfloat16()), F.linear(x.detach().bfloat16(), W.bfloat16(), linear.bias.bfloat16()))
    assert "nf4" in repr(layer)


def test_bad_inputs_are_refused():
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        Q.quantize_nf4(torch.ones(64, dtype=torch.int32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        Q.quantize_nf4(np.ones(64, np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        Q.quantize_nf4(torch.zeros(0, 64))
    with pytest.raises(ValueError, match="non-empty"):
        Q.quantize_int8(torch.tensor(1.0))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="inf or NaN"):
            Q.quantize_nf4(torch.tensor([1.0, bad] * 32))
    with pytest.raises(ValueError, match="blocksize must be one of"):
        Q.quantize_nf4(torch.ones(96), blocksize=48)
    q = Q.quantize_nf4(torch.ones(128))
    with pytest.raises(ValueError, match="packed uint8 bytes"):
        Q.dequantize_nf4(Q.NF4Tensor(q.packed[:10], q.absmax, q.shape, q.dtype))
    with pytest.raises(ValueError, match=r"\(out, in\) matrix"):
        Q.quantize_int8(torch.ones(4, 4, 4))
    with pytest.raises(ValueError, match="multiple of 32"):
        Q.quantize_q4_1(torch.ones(4, 48))
    with pytest.raises(ValueError, match="65504"):
        Q.quantize_q4_1(torch.full((32,), 1e5))
    with pytest.raises(TypeError, match="nn.Linear"):
        Q.NF4Linear.from_linear(nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match=r"\(out, in\) weight"):
        Q.NF4Linear(Q.quantize_nf4(torch.ones(4, 4, 4)))
