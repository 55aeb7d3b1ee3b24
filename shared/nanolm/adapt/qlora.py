"""QLoRA: LoRA adapters on a base model whose matrices are stored in 4 bits (NF4).

LoRA freezes the base weights, so they need no gradients and no optimizer state: only their storage is
left, and QLoRA (Dettmers et al. 2023) shrinks that by storing them in NF4 (nanolm.adapt.quant), about
4.13 bits a weight with double quantization instead of 32. Every forward pass dequantizes a matrix to
the compute dtype just for its matmul; the adapters on top stay in full precision and learn as in LoRA:

    y = x @ dequant(W_nf4).T + scaling * x @ A.T @ B.T

`quant.NF4Linear` is the frozen 4-bit layer, but `lora.LoRALinear` cannot wrap it: LoRALinear reads its
base's `.weight` as a tensor (to slice row blocks, to merge into), and NF4Linear's `weight()` is a method
that dequantizes. `QLoRALinear` is the small difference: it holds an NF4Linear and one `lora.Adapter` per
row block exactly as LoRALinear does (same names, so `lora.lora_state` and `adapters` files fit both),
and its base matmul is `_NF4Matmul`, which saves only the input-free 4-bit weight for the backward pass
and dequantizes again there, as bitsandbytes does: autograd through F.linear would keep every layer's
dequantized float32 matrix alive until backward, the memory QLoRA exists to save.

Merging an adapter into a 4-bit weight would round it away, so there is no merge here: `to_lora` turns a
QLoRA model into a LoRA model whose base weights are the dequantized NF4 weights (same adapters), and its
forward equals the QLoRA model's exactly (the same float32 operations on the same values).

Shapes: N any leading dims, I in_features, O out_features, R rows of one block.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .lora import Adapter, LoRALinear, _check_plain_llama, apply_lora
from .quant import NF4Linear

QUANTIZED = ("attn.wqkv", "attn.wo", "ffn.gate_up", "ffn.down")  # every matrix a LoRA target lives in


class _NF4Matmul(torch.autograd.Function):
    """x @ dequant(W).T + b whose backward dequantizes W again instead of keeping it from the forward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, base: NF4Linear) -> torch.Tensor:
        ctx.base = base  # the module, not its dequantized weight: 4-bit buffers are all the graph keeps
        bias = None if base.bias is None else base.bias.to(x.dtype)
        return F.linear(x, base.weight().to(x.dtype), bias)  # same ops as NF4Linear.forward

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        return grad @ ctx.base.weight().to(grad.dtype), None  # (N, O) @ (O, I) -> (N, I); W is frozen


class QLoRALinear(nn.Module):
    """A frozen NF4Linear plus LoRA adapters (lora.Adapter) on blocks of its output rows."""

    def __init__(self, base: NF4Linear, blocks: dict[str, int] | None = None):
        super().__init__()
        if not isinstance(base, NF4Linear):
            raise TypeError(f"QLoRALinear wraps an NF4Linear, got {type(base).__name__}")
        blocks = blocks or {"all": base.out_features}
        if sum(blocks.values()) != base.out_features:
            raise ValueError(f"row blocks {blocks} do not add up to out_features={base.out_features}")
        self.base = base.requires_grad_(False)
        self.blocks = dict(blocks)
        self.adapters = nn.ModuleDict()  # block name -> Adapter

    rows = LoRALinear.rows  # the output rows of one block: the same bookkeeping

    def add_adapter(self, block: str, r: int, alpha: float, **options) -> Adapter:
        """Adapt one block of rows (options: dropout, rslora, use_dora, generator), as LoRALinear does."""
        if block not in self.blocks:
            raise ValueError(f"no row block {block!r} in this layer; it has {list(self.blocks)}")
        if block in self.adapters:
            raise ValueError(f"block {block!r} already has an adapter")
        self.adapters[block] = Adapter(self.base.weight()[self.rows(block)], r, alpha, **options)
        return self.adapters[block]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, I) -> (N, O): the 4-bit layer's output plus each adapter's on its own rows."""
        y = _NF4Matmul.apply(x, self.base)  # (N, O)
        if not self.adapters:
            return y
        dora = any(a.magnitude is not None for a in self.adapters.values())
        W = self.base.weight().to(x.dtype) if dora else None  # DoRA needs the weight's row norms (detached)
        pieces = list(y.split(list(self.blocks.values()), dim=-1))  # (N, R) per block
        bias = self.base.bias
        for i, name in enumerate(self.blocks):
            if name in self.adapters:
                rows = self.rows(name)
                base = pieces[i] if bias is None else pieces[i] - bias[rows].to(x.dtype)  # W x without the bias
                pieces[i] = pieces[i] + self.adapters[name](x, None if W is None else W[rows], base)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={a.r}{' dora' if a.use_dora else ''}" for n, a in self.adapters.items())


# ----------------------------------------------------------------------------- a whole Llama


def _target_layers(model: nn.Module) -> Iterable[tuple[nn.Module, str, str]]:
    """(parent module, attribute, path) of every matrix in QUANTIZED, block by block."""
    for block in model.blocks:
        for path in QUANTIZED:
            parent_name, attr = path.split(".")
            yield getattr(block, parent_name), attr, path


def quantize_base(model: nn.Module, blocksize: int = 64, double_quant: bool = True) -> nn.Module:
    """Replace every matrix LoRA can target (wqkv, wo, gate_up, down) by a frozen NF4Linear, in place."""
    _check_plain_llama(model)
    for parent, attr, path in _target_layers(model):
        layer = getattr(parent, attr)
        if isinstance(layer, (LoRALinear, QLoRALinear, NF4Linear)):
            raise ValueError(f"{path} is already a {type(layer).__name__}: quantize_base a plain Llama, "
                             "then apply_qlora")
        setattr(parent, attr, NF4Linear.from_linear(layer, blocksize, double_quant))
    return model.requires_grad_(False)


def _wrap_nf4(layer: nn.Module, blocks: dict[str, int], path: str) -> QLoRALinear:
    """An NF4Linear becomes a QLoRALinear; one already wrapped is kept; anything else was never quantized."""
    if isinstance(layer, NF4Linear):
        return QLoRALinear(layer, blocks)
    if not isinstance(layer, QLoRALinear):
        raise ValueError(f"{path} is a {type(layer).__name__}, not 4-bit: quantize_base(model) first")
    return layer


def apply_qlora(model: nn.Module, r: int = 8, alpha: float = 16, targets: str | Iterable[str] = "all",
                dropout: float = 0.0, rslora: bool = False, use_dora: bool = False,
                seed: int | None = None) -> nn.Module:
    """Put LoRA adapters on the target matrices of a quantize_base'd Llama, in place (lora.apply_lora's loop)."""
    return apply_lora(model, r, alpha, targets, dropout, rslora, use_dora, seed, wrap=_wrap_nf4)


def qlora_layers(model: nn.Module) -> dict[str, QLoRALinear]:
    """Every QLoRALinear of a model by its module name (blocks.0.attn.wqkv, ...)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QLoRALinear)}


def _dequantized_linear(layer: NF4Linear) -> nn.Linear:
    """A frozen nn.Linear holding an NF4Linear's dequantized weight and its bias."""
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                       device=layer.packed.device, dtype=layer.dtype)
    with torch.no_grad():
        linear.weight.copy_(layer.weight())
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear.requires_grad_(False)


def to_lora(model: nn.Module) -> nn.Module:
    """Dequantize in place: NF4Linear -> nn.Linear, QLoRALinear -> LoRALinear with the same adapters."""
    for name, m in list(model.named_modules()):
        if isinstance(m, (QLoRALinear, NF4Linear)) and not name.endswith(".base"):
            parent_name, attr = name.rsplit(".", 1)
            if isinstance(m, NF4Linear):
                new = _dequantized_linear(m)
            else:
                new = LoRALinear(_dequantized_linear(m.base), m.blocks)
                new.adapters = m.adapters  # the very Adapter modules: trained values and names kept
            setattr(model.get_submodule(parent_name), attr, new)
    return model


def memory_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of a model's weights: 4-bit storage, the same matrices in fp32, the rest, adapters, total."""
    nf4 = [m for m in model.modules() if isinstance(m, NF4Linear)]
    adapters = {id(p): p for n, p in model.named_parameters() if ".adapters." in n}
    quantized = {id(t) for m in nf4 for t in list(m.buffers()) + list(m.parameters())}
    rest = {id(t): t for t in list(model.parameters()) + list(model.buffers())
            if id(t) not in quantized and id(t) not in adapters}  # a tied head counted once
    out = {"nf4": sum(m.memory_bytes() for m in nf4),
           "nf4_as_fp32": sum(m.in_features * m.out_features * 4 for m in nf4),
           "other": sum(t.numel() * t.element_size() for t in rest.values()),
           "adapters": sum(p.numel() * p.element_size() for p in adapters.values())}
    out["total"] = out["nf4"] + out["other"] + out["adapters"]
    return out
