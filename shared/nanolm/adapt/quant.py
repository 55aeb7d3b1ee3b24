"""Weight quantization from scratch: NF4 (QLoRA), int8 per row (LLM.int8) and GGUF's Q4_1.

A weight matrix is mostly small numbers near zero, roughly normally distributed. Quantization stores
each number as a small integer plus a few shared floats that say how to turn the integers back:

    int8   one scale per output row: q = round(127 * w / absmax(row)), w ~ q * absmax / 127.
           This is LLM.int8's vector-wise quantization WITHOUT its outlier decomposition (the few
           large-magnitude input columns kept in fp16); here every column is quantized.
    NF4    blocks of 64 weights share one absmax; each weight becomes the index (4 bits) of the
           nearest of 16 levels. The levels are not evenly spaced: they are quantiles of a normal
           distribution, so each level is used about equally often by normal weights (NormalFloat,
           Dettmers et al. 2023). 4 bits + 32/64 bits of absmax = 4.5 bits per weight.
    NF4 + double quantization: the fp32 absmax values are themselves quantized, to 8 bits in blocks
           of 256 after subtracting their mean: 4 + 8/64 + 32/(64*256) ~ 4.127 bits per weight.
    Q4_1   GGUF's asymmetric format: blocks of 32, x ~ d * q + m with q in 0..15, d and m in fp16.

QLoRA freezes the NF4 base weights and trains small LoRA adapters on top: `NF4Linear` is that frozen
base, dequantizing its weight to the input's dtype in every forward pass.

Every NF4 detail follows bitsandbytes 0.50.2 on CPU, so packed bytes and absmax agree bit for bit:
the scaled block is w * (1 / absmax) for full blocks but w / absmax for a ragged last block, whose
absmax is also clamped to 1e-38 (an all-zero last block stores 1e-38, a full one stores 0); a value
exactly between two levels takes the lower one; two indices pack into a byte high nibble first, an
odd count padded with the index of 0.0. The 8-bit absmax code is not nearest-level: bnb's C kernel
maps each scaled value to one of 65536 grid points, fma-rounded, and looks the grid point up in a
table of nearest levels; `_dynamic_quantize` reproduces that table and rounding.

Shapes: W (out, in) or any shape for NF4; n = W.numel(); B = ceil(n / blocksize) blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

NF4_OFFSET = 0.9677083  # the outermost quantile probability of the NF4 paper's code (create_normal_map)
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # the block sizes bitsandbytes accepts
ABSMAX_BLOCK = 256  # double quantization: absmax values per 8-bit block
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
Q4_1_BLOCK, Q4_1_BYTES = 32, 20  # elements and bytes per GGUF Q4_1 block


def nf4_code() -> Tensor:
    """(16,) float32 NF4 levels: normal quantiles at evenly spaced probabilities, scaled to [-1, 1]."""
    # 8 positive levels from probabilities offset..0.5 (9 points, 0.5 dropped), 7 negative ones from
    # 8 points, and an exact zero: asymmetric so that 0 is a level. Probabilities on a float32 grid
    # (as the paper's code), quantiles in float64, then float32 and divided by the largest.
    pos = torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 9)[:-1].double())
    neg = -torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 8)[:-1].double())
    levels = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).float().sort().values
    return levels / levels.max()


def dynamic_code() -> Tensor:
    """(256,) float32 sorted 8-bit dynamic code (Dettmers 2015): 7 decades, finer near the top of each."""
    # Decade 10^(e) for e = -6..0 gets 2^i levels (i = e + 6): the midpoints of an even split of
    # [0.1, 1] into 2^i parts, times 10^e, with both signs; plus 0 and 1. 2 * 127 + 2 = 256 levels.
    levels = [torch.tensor([0.0, 1.0])]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2 ** i + 1)
        mids = (edges[:-1] + edges[1:]) / 2.0
        levels += [10.0 ** (i - 6) * mids, -(10.0 ** (i - 6)) * mids]
    return torch.cat(levels).sort().values


def _midpoints(code: Tensor) -> Tensor:
    """(K,) sorted levels -> (K-1,) float32 decision boundaries halfway between neighbours."""
    return (code[:-1] + code[1:]) / 2


def _check_float(W: Tensor, what: str) -> None:
    """Refuse what no quantizer here can encode: non-tensors, other dtypes, empty or non-finite values."""
    if not isinstance(W, Tensor):
        raise TypeError(f"{what} needs a torch.Tensor, got {type(W).__name__}")
    if W.dtype not in FLOATS:
        raise TypeError(f"{what} needs a float32, float16 or bfloat16 tensor, got {W.dtype}")
    if W.dim() == 0 or W.numel() == 0:
        raise ValueError(f"{what} needs a non-empty tensor with at least one dimension, got shape {tuple(W.shape)}")
    if not torch.isfinite(W).all():
        raise ValueError(f"{what}: the tensor holds inf or NaN, which has no quantized form")


@dataclass
class NF4Tensor:
    """A weight in NF4: packed 4-bit indices, per-block absmax (fp32, or 8-bit + its own state)."""

    packed: Tensor  # ((n + 1) // 2, 1) uint8, element 2k in the high nibble of byte k (bnb's layout)
    absmax: Tensor  # (B,) float32, or (B,) uint8 indices into dynamic_code() when double-quantized
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int = 64
    offset: Tensor | None = None  # () float32 mean of the absmax values (double quantization only)
    absmax2: Tensor | None = None  # (ceil(B / 256),) float32 scale of each block of 256 absmax codes

    @property
    def double_quant(self) -> bool:
        """Whether the absmax values are themselves 8-bit quantized."""
        return self.offset is not None

    def nbytes(self) -> int:
        """Bytes of storage: packed indices plus absmax (and its second-level state)."""
        parts = [self.packed, self.absmax, self.offset, self.absmax2]
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


def _block_absmax(flat: Tensor, blocksize: int) -> tuple[Tensor, Tensor]:
    """flat (n,) -> absmax (B,) float32 and each element scaled into [-1, 1] by its block's absmax, (n,)."""
    n = flat.numel()
    full = n - n % blocksize
    blocks = flat[:full].reshape(-1, blocksize)  # (B_full, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1).reshape(-1)
    if full < n:  # a ragged last block: bnb divides instead, and keeps the clamped absmax
        last = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, last[None]])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / last, -1, 1)])
    return absmax, scaled


def _lut(code: Tensor) -> Tensor:
    """(65536,) uint8: for each point of bnb's grid over [-1, 1], the index of its nearest level in code."""
    i = torch.arange(65536, dtype=torch.float32, device=code.device)
    grid = (2.0 * i) / 65535.0 - 1.0  # float32, in the same order as the C kernel
    return torch.bucketize(grid, _midpoints(code)).to(torch.uint8)  # count of midpoints strictly below


def _dynamic_quantize(x: Tensor, blocksize: int) -> tuple[Tensor, Tensor]:
    """x (n,) float32 -> 8-bit dynamic-code indices (n,) uint8 and per-block absmax (ceil(n / blocksize),)."""
    n = x.numel()
    padded = F.pad(x, (0, -n % blocksize)).reshape(-1, blocksize)  # zero padding leaves each absmax alone
    absmax = padded.abs().amax(dim=1)  # (nb,)
    inv = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))  # (nb,) float32 reciprocal
    v = torch.clamp(padded * inv[:, None], -1, 1)
    t = (v + 1.0) * 0.5  # float32
    # grid index = trunc(fma(t, 65535, 0.5)) in float32: the float64 product is exact, one rounding to float32
    grid = (t.double() * 65535.0 + 0.5).float().trunc().to(torch.int64).clamp(0, 65535)
    q = _lut(dynamic_code().to(x.device))[grid]
    q = torch.where(absmax[:, None] == 0, torch.zeros_like(q), q)  # the kernel writes index 0 for a zero block
    return q.reshape(-1)[:n], absmax


def quantize_nf4(W: Tensor, blocksize: int = 64, double_quant: bool = False) -> NF4Tensor:
    """Any-shape float tensor -> NF4Tensor, as bnb's quantize_4bit(quant_type='nf4') lays it out."""
    _check_float(W, "quantize_nf4")
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {blocksize}")
    flat = W.detach().reshape(-1).float()  # (n,)
    absmax, scaled = _block_absmax(flat, blocksize)  # (B,), (n,)
    if scaled.numel() % 2:
        scaled = F.pad(scaled, (0, 1))  # pad with 0.0, which becomes the index of level 0.0
    q = torch.bucketize(scaled, _midpoints(nf4_code().to(W.device))).to(torch.uint8)  # ties -> lower level
    packed = ((q[0::2] << 4) | q[1::2])[:, None]  # ((n + 1) // 2, 1)
    if not double_quant:
        return NF4Tensor(packed, absmax, W.shape, W.dtype, blocksize)
    offset = absmax.mean()
    q_absmax, absmax2 = _dynamic_quantize(absmax - offset, ABSMAX_BLOCK)
    return NF4Tensor(packed, q_absmax, W.shape, W.dtype, blocksize, offset, absmax2)


def nf4_absmax(q: NF4Tensor) -> Tensor:
    """(B,) float32 absmax of every block, undoing double quantization when there is one."""
    if not q.double_quant:
        return q.absmax
    scales = q.absmax2.repeat_interleave(ABSMAX_BLOCK)[: q.absmax.numel()]  # (B,)
    return dynamic_code().to(q.absmax.device)[q.absmax.long()] * scales + q.offset


def dequantize_nf4(q: NF4Tensor) -> Tensor:
    """NF4Tensor -> tensor of its original shape and dtype: level[index] * absmax of the block."""
    n = math.prod(q.shape)
    blocks = -(-n // q.blocksize)
    if q.packed.dtype != torch.uint8 or q.packed.numel() != (n + 1) // 2 or q.absmax.numel() != blocks:
        raise ValueError(f"an NF4Tensor of shape {tuple(q.shape)} and blocksize {q.blocksize} needs "
                         f"{(n + 1) // 2} packed uint8 bytes and {blocks} absmax values, got "
                         f"{q.packed.numel()} {q.packed.dtype} and {q.absmax.numel()}")
    packed = q.packed.reshape(-1)
    idx = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n].long()  # (n,)
    values = nf4_code().to(packed.device)[idx]  # (n,) float32
    scale = nf4_absmax(q).repeat_interleave(q.blocksize)[:n]  # (n,)
    return (values * scale).reshape(q.shape).to(q.dtype)


def bits_per_weight(q: NF4Tensor) -> float:
    """Storage bits per weight, absmax and second-level state included (4.5 plain, ~4.127 double)."""
    return 8 * q.nbytes() / math.prod(q.shape)


@dataclass
class Int8Tensor:
    """A weight matrix in int8 with one absmax per output row."""

    q: Tensor  # (out, in) int8
    absmax: Tensor  # (out,) float32: the row's largest |w|, which q = 127 stands for
    dtype: torch.dtype


def quantize_int8(W: Tensor) -> Int8Tensor:
    """(out, in) float weight -> Int8Tensor: q = round(w * 127 / absmax(row)), halves to even."""
    _check_float(W, "quantize_int8")
    if W.dim() != 2:
        raise ValueError(f"quantize_int8 needs an (out, in) matrix, got shape {tuple(W.shape)}")
    absmax = W.detach().abs().amax(dim=1).float()  # (out,)
    factor = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax))  # a zero row stays zero
    q = torch.round(W.detach() * factor[:, None]).to(torch.int8)  # (out, in), computed in float32
    return Int8Tensor(q, absmax, W.dtype)


def dequantize_int8(q: Int8Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Int8Tensor -> (out, in) tensor (its original dtype unless given): q * absmax / 127."""
    w = q.q * q.absmax[:, None] * (1.0 / 127.0)  # float32; the last step multiplies by float32(1/127)
    return w.to(dtype or q.dtype)


def quantize_q4_1(W: Tensor) -> bytes:
    """Float tensor, last dim a multiple of 32 -> GGUF Q4_1 bytes (20 per block of 32), as gguf-py."""
    _check_float(W, "quantize_q4_1")
    if W.shape[-1] % Q4_1_BLOCK:
        raise ValueError(f"Q4_1 blocks never cross rows: the last dim must be a multiple of 32, got {tuple(W.shape)}")
    if W.detach().abs().max().item() > 65504:
        raise ValueError("Q4_1 stores d and m in fp16: values beyond +-65504 cannot be encoded")
    x = W.detach().float().cpu().numpy().reshape(-1, Q4_1_BLOCK)  # (N, 32) float32
    hi, lo = x.max(axis=1, keepdims=True), x.min(axis=1, keepdims=True)  # (N, 1)
    d = (hi - lo) / np.float32(15)
    inv = np.where(d == 0, np.float32(0), np.float32(1) / np.where(d == 0, np.float32(1), d))
    q = np.trunc((x - lo) * inv + np.float32(0.5)).astype(np.uint8).clip(0, 15)  # (N, 32) round half up
    qs = q[:, :16] | (q[:, 16:] << np.uint8(4))  # byte j: element j low nibble, element j + 16 high
    d16, m16 = d.astype(np.float16).view(np.uint8), lo.astype(np.float16).view(np.uint8)  # (N, 2) each
    return np.concatenate([d16, m16, qs], axis=1).tobytes()


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight lives in NF4 and is dequantized in every forward pass."""

    def __init__(self, q: NF4Tensor, bias: Tensor | None = None):
        super().__init__()
        if len(q.shape) != 2:
            raise ValueError(f"NF4Linear needs an (out, in) weight, got shape {tuple(q.shape)}")
        self.out_features, self.in_features = q.shape
        self.shape, self.dtype, self.blocksize = q.shape, q.dtype, q.blocksize
        for name in ("packed", "absmax", "offset", "absmax2"):
            self.register_buffer(name, getattr(q, name))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, blocksize: int = 64, double_quant: bool = False) -> NF4Linear:
        """Quantize an nn.Linear's weight to NF4 (its bias stays in full precision, frozen)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"NF4Linear.from_linear needs an nn.Linear, got {type(linear).__name__}")
        return cls(quantize_nf4(linear.weight, blocksize, double_quant), linear.bias)

    def quantized(self) -> NF4Tensor:
        """The weight as an NF4Tensor (views of this module's buffers)."""
        return NF4Tensor(self.packed, self.absmax, self.shape, self.dtype, self.blocksize, self.offset, self.absmax2)

    def weight(self) -> Tensor:
        """(out, in) dequantized weight in the dtype it was quantized from."""
        return dequantize_nf4(self.quantized())

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out) = x @ W.T + b, W dequantized to x's dtype."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight().to(x.dtype), bias)

    def memory_bytes(self) -> int:
        """Bytes this layer holds: NF4 weight storage plus the bias."""
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.quantized().nbytes() + bias

    def extra_repr(self) -> str:
        """One line for print(model)."""
        kind = "nf4+dq" if self.offset is not None else "nf4"
        return f"in={self.in_features}, out={self.out_features}, {kind}, blocksize={self.blocksize}"
