"""Int8 weight-only decoding: every matrix of a served model in int8 with one scale per output row.

Generating one token reads every weight once and does two flops per weight: on a CPU that is limited by
how fast memory delivers the weights, not by arithmetic. Storing them in 1 byte instead of 4 should cut the
time of each decode step, as long as the matrix product reads the int8 values directly. So `Int8Linear`
keeps the weight as nanolm.adapt.quant's per-row int8 (q = round(127 w / absmax(row))) and multiplies with
`torch.ops.aten._weight_int8pack_mm` (x @ (q * scale)^T in one kernel, without building the float weight;
the kernel gpt-fast uses), or, with kernel="dequantize", by building the float weight first (the slow,
obvious way, for comparison). Activations stay float32; only the stored weights lose precision.

`quantize` converts a plain Llama (no LoRA): the attention and MLP matrices of every block and the head.
A tied head gets its own int8 copy, so the embedding lookup stays exact. Notebook 16 measures the speed
and the quality cost on notebook 10's benchmark items.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..adapt.quant import quantize_int8

KERNELS = ("int8pack", "dequantize")


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T for an int8 weight q (out, in) and a float32 scale per output row."""

    def __init__(self, linear: nn.Linear, kernel: str = "int8pack"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if linear.bias is not None:
            raise ValueError("Int8Linear is for the bias-free matrices of a Llama")
        q = quantize_int8(linear.weight.detach().float())
        self.register_buffer("q", q.q)  # (out, in) int8
        self.register_buffer("scale", q.absmax / 127.0)  # (out,) float32
        self.kernel, self.out_features, self.in_features = kernel, *q.q.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.kernel == "int8pack" and flat.device.type == "cpu" and flat.dtype == torch.float32:
            y = torch.ops.aten._weight_int8pack_mm(flat, self.q, self.scale)
        else:
            y = flat @ (self.q.float() * self.scale[:, None]).to(flat.dtype).T
        return y.reshape(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The float weight the int8 values stand for: q * scale."""
        return self.q.float() * self.scale[:, None]


def quantize(model: nn.Module, kernel: str = "int8pack") -> nn.Module:
    """A copy of a plain Llama with every block matrix and the head in int8 (the embedding stays float)."""
    if any(".adapters." in name for name, _ in model.named_parameters()):
        raise ValueError("quantize a model without LoRA adapters (merge or remove them first)")
    out = copy.deepcopy(model).eval()
    for block in out.blocks:
        block.attn.wqkv = Int8Linear(block.attn.wqkv, kernel)
        block.attn.wo = Int8Linear(block.attn.wo, kernel)
        block.ffn.gate_up = Int8Linear(block.ffn.gate_up, kernel)
        block.ffn.down = Int8Linear(block.ffn.down, kernel)
    out.head = Int8Linear(out.head, kernel)  # a tied head becomes its own int8 copy
    return out


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the stored weights: parameters and int8 buffers (each tensor once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen and t.dim() >= 1:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def step_bytes(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: all of them, except that an embedding table that is not also
    the head is read one row at a time (so it counts one row)."""
    table = model.tok_emb.weight
    if getattr(model.head, "weight", None) is table:  # tied and float: the head reads the whole table
        return weight_bytes(model)
    return weight_bytes(model) - table.numel() * table.element_size() + table[0].numel() * table.element_size()
