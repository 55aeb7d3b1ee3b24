"""ggml's tensor encodings, dequantized in NumPy: F32, F16, Q4_0, Q4_1, Q8_0 and Q8_1, vectorised over blocks.

A quantized tensor is a run of fixed-size blocks, each holding BLOCK = 32 consecutive elements of a row
(rows are never split across blocks) with its own scale. Block layouts, byte by byte (little-endian):

    Q4_0  18 bytes: d fp16 | 16 bytes qs              x = d * (q - 8)      q in 0..15
    Q4_1  20 bytes: d fp16 | m fp16 | 16 bytes qs     x = d * q + m        q in 0..15
    Q8_0  34 bytes: d fp16 | 32 bytes qs (int8)       x = d * q            q in -128..127
    Q8_1  36 bytes: d fp32 | s fp32 | 32 bytes qs     x = d * q            (s = d * sum(q), unused here)

In the 4-bit types byte j of qs holds two quants: its low nibble is element j and its high nibble is
element j + 16 (not j and j + 1). Every result is computed in float32 in the same order as the `gguf`
package (ggml's reference), so the two agree bit for bit.
"""

from __future__ import annotations

import numpy as np

# ggml type id -> (name, elements per block, bytes per block). Every type a GGUF file may hold, so that a
# file's layout can be checked; DEQUANTIZE below says which of them this module can turn into floats.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
}


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """qs (N, 16) uint8 -> (N, 32) uint8: low nibbles are elements 0..15, high nibbles elements 16..31."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The fp16 at bytes [start, start + 2) of every block -> (N, 1) float32."""
    return blocks[:, start:start + 2].copy().view(np.float16).astype(np.float32)


def _f32(blocks: np.ndarray, start: int) -> np.ndarray:
    """The fp32 at bytes [start, start + 4) of every block -> (N, 1) float32."""
    return blocks[:, start:start + 4].copy().view(np.float32)


def q4_0(blocks: np.ndarray) -> np.ndarray:
    """(N, 18) uint8 blocks [d fp16 | 16 bytes of 4-bit quants] -> (N, 32) float32, x = d * (q - 8)."""
    d = _f16(blocks, 0)
    q = _nibbles(blocks[:, 2:18]).astype(np.int8) - np.int8(8)
    return d * q.astype(np.float32)


def q4_1(blocks: np.ndarray) -> np.ndarray:
    """(N, 20) uint8 blocks [d fp16 | m fp16 | 16 bytes of 4-bit quants] -> (N, 32) float32, x = d * q + m."""
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    q = _nibbles(blocks[:, 4:20]).astype(np.float32)
    return d * q + m


def q8_0(blocks: np.ndarray) -> np.ndarray:
    """(N, 34) uint8 blocks [d fp16 | 32 int8 quants] -> (N, 32) float32, x = d * q."""
    d = _f16(blocks, 0)
    q = blocks[:, 2:34].view(np.int8).astype(np.float32)
    return q * d


def q8_1(blocks: np.ndarray) -> np.ndarray:
    """(N, 40) uint8 blocks [d fp32 | s fp32 | 32 int8 quants] -> (N, 32) float32, x = d * q."""
    d = _f32(blocks, 0)
    q = blocks[:, 8:40].view(np.int8).astype(np.float32)
    return q * d


BLOCK_DEQUANTIZERS = {2: q4_0, 3: q4_1, 8: q8_0, 9: q8_1}
SCALES = {2: (0,), 3: (0, 2), 8: (0,), 9: (0,)}  # byte offsets of each type's fp16/fp32 scales in a block
DEQUANTIZE = {0, 1, *BLOCK_DEQUANTIZERS}  # the type ids `dequantize` handles


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """A tensor's bytes (uint8) of the given ggml type -> float32 array of `shape` (numpy order).

    Raises ValueError for a type it cannot decode, a byte count that does not fit the shape, or a
    non-finite scale (GGUF has no checksum; an inf or NaN scale is the one damage a block shows).
    """
    name, block, size = GGML_TYPES.get(ggml_type, (f"type {ggml_type}", 0, 0))
    if ggml_type not in DEQUANTIZE:
        raise ValueError(f"cannot dequantize ggml type {name} (supported: F32, F16, Q4_0, Q4_1, Q8_0, Q8_1)")
    n = int(np.prod(shape, dtype=np.int64))
    if n % block or raw.size != n // block * size:
        raise ValueError(f"{raw.size} bytes of {name} do not hold a tensor of shape {shape}")
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if ggml_type == 0:
        out = raw.view(np.float32).copy()
    elif ggml_type == 1:
        out = raw.view(np.float16).astype(np.float32)
    else:
        blocks = raw.reshape(-1, size)  # (N, bytes per block)
        wide = _f32 if ggml_type == 9 else _f16
        for start in SCALES[ggml_type]:
            bad = ~np.isfinite(wide(blocks, start)[:, 0])
            if bad.any():
                raise ValueError(f"{name} block {int(np.argmax(bad))} has a non-finite scale: the data is damaged")
        out = BLOCK_DEQUANTIZERS[ggml_type](blocks)  # (N, 32)
    return out.reshape(shape)
