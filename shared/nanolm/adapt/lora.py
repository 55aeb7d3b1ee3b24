"""LoRA and DoRA from scratch: fine-tune a frozen model by learning a small low-rank change to its matrices.

Full fine-tuning changes every entry of a weight W (out, in). LoRA (Hu et al. 2021) freezes W and learns
its change as a product of two thin matrices, W + scaling * B @ A, with A (r, in) and B (out, r) for a
small rank r: out*in numbers to learn become r*(out + in). B starts at zero, so training starts from
the base model exactly; A starts random (Kaiming-uniform, as PEFT does), so B gets a gradient at once.

    y = x @ W.T + scaling * dropout(x) @ A.T @ B.T        scaling = alpha / r (rsLoRA: alpha / sqrt(r))

The low-rank path never forms B @ A: two thin products cost less than one full one. After training,
`merge` adds scaling * B @ A into W (inference then costs nothing extra) and `unmerge` takes it out.
rsLoRA (Kalajdzievski 2023) divides by sqrt(r) instead of r, so that larger ranks still learn.

DoRA (Liu et al. 2024) splits each output row of the weight into a length and a direction. It learns a
magnitude vector m (one number per output row, starting at the row norms of W) and the direction by LoRA:

    W' = m * (W + scaling * B @ A) / ||W + scaling * B @ A||        (norm over the input dim, per row)

As in the paper (section 4.3) and PEFT, the norm is detached: it rescales but receives no gradient.

Our Llama fuses matrices: attn.wqkv is [W_q; W_k; W_v] by rows and ffn.gate_up is [W_gate; W_up].
Hugging Face keeps q_proj, k_proj, ... separate, so a LoRA on q_proj is, here, an adapter on the q rows
of wqkv. One LoRALinear therefore holds one adapter per block of output rows it adapts.

Shapes: N any leading dims, I in_features, O out_features, R rows of one block, r rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# target -> (module inside a block, row block of that module); gate/up and q/k/v share a fused matrix
TARGETS = {"q": ("attn.wqkv", "q"), "k": ("attn.wqkv", "k"), "v": ("attn.wqkv", "v"), "o": ("attn.wo", "o"),
           "gate": ("ffn.gate_up", "gate"), "up": ("ffn.gate_up", "up"), "down": ("ffn.down", "down")}
PRESETS = {"attention": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down"), "all": tuple(TARGETS)}
# our target -> Hugging Face LlamaForCausalLM module (what PEFT's target_modules names)
HF_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


class Adapter(nn.Module):
    """One low-rank update of a block of R output rows: A (r, I), B (R, r), and for DoRA a magnitude (R,)."""

    def __init__(self, weight: torch.Tensor, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
                 use_dora: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {r}")
        rows, fan_in = weight.shape  # the frozen block this adapter changes, (R, I)
        self.r, self.alpha, self.rslora, self.use_dora = r, alpha, rslora, use_dora
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        A = torch.empty(r, fan_in, dtype=weight.dtype)  # initialized on the CPU, where the generator lives
        nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
        self.A = nn.Parameter(A.to(weight.device))  # (r, I)
        self.B = nn.Parameter(torch.zeros(rows, r, dtype=weight.dtype, device=weight.device))  # (R, r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.magnitude = nn.Parameter(self.weight_norm(weight)) if use_dora else None  # (R,)
        self.merge_norm: torch.Tensor | None = None  # DoRA: the norm used by merge, needed to unmerge

    def delta(self) -> torch.Tensor:
        """scaling * B @ A, the change this adapter makes to its rows (R, I)."""
        return (self.B @ self.A) * self.scaling

    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """||W + scaling * B @ A|| per output row (R,), detached (DoRA treats it as a constant)."""
        return torch.linalg.norm(weight + self.delta().detach(), dim=1).detach()

    def forward(self, x: torch.Tensor, weight: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """What to add to the block's base output base (N, R), given the input x (N, I) and the block's W."""
        x_drop = self.dropout(x)
        lora = F.linear(F.linear(x_drop, self.A), self.B)  # (N, r) -> (N, R): B @ A is never formed
        if self.magnitude is None:
            return lora * self.scaling
        scale = self.magnitude / self.weight_norm(weight)  # (R,) m / ||W + sBA||
        if not isinstance(self.dropout, nn.Identity) and self.training:
            base = F.linear(x_drop, weight)  # with dropout, PEFT rescales W @ dropout(x), not W @ x
        return (scale - 1) * base + scale * lora * self.scaling  # base + this = scale * (W + sBA) x

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The block's weight with this adapter folded in (R, I); DoRA remembers its norm for unmerge."""
        if self.magnitude is None:
            return weight + self.delta()
        self.merge_norm = self.weight_norm(weight)
        return (self.magnitude / self.merge_norm)[:, None] * (weight + self.delta())

    def unmerged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The inverse of merged_weight: the block's weight without this adapter (R, I)."""
        if self.magnitude is None:
            return weight - self.delta()
        return weight / (self.magnitude / self.merge_norm)[:, None] - self.delta()


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus low-rank adapters on blocks of its output rows (one block: the whole matrix)."""

    def __init__(self, base: nn.Linear, blocks: dict[str, int] | None = None):
        super().__init__()
        blocks = blocks or {"all": base.out_features}  # block name -> number of rows, in row order
        if sum(blocks.values()) != base.out_features:
            raise ValueError(f"row blocks {blocks} do not add up to out_features={base.out_features}")
        self.base = base
        self.base.requires_grad_(False)
        self.blocks = dict(blocks)
        self.adapters = nn.ModuleDict()  # block name -> Adapter
        self.merged = False

    def rows(self, block: str) -> slice:
        """The output rows of one block."""
        names = list(self.blocks)
        start = sum(self.blocks[n] for n in names[: names.index(block)])
        return slice(start, start + self.blocks[block])

    def add_adapter(self, block: str, r: int, alpha: float, **options) -> Adapter:
        """Adapt one block of rows (options: dropout, rslora, use_dora, generator)."""
        if block not in self.blocks:
            raise ValueError(f"no row block {block!r} in this layer; it has {list(self.blocks)}")
        if block in self.adapters:
            raise ValueError(f"block {block!r} already has an adapter")
        if self.merged:
            raise RuntimeError("unmerge() before adding an adapter")
        self.adapters[block] = Adapter(self.base.weight[self.rows(block)], r, alpha, **options)
        return self.adapters[block]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, I) -> (N, O): the frozen layer's output plus each adapter's on its own rows."""
        y = self.base(x)  # (N, O)
        if self.merged or not self.adapters:
            return y
        pieces = list(y.split(list(self.blocks.values()), dim=-1))  # (N, R) per block
        bias = self.base.bias
        for i, name in enumerate(self.blocks):
            if name in self.adapters:
                rows = self.rows(name)
                base = pieces[i] if bias is None else pieces[i] - bias[rows]  # W x without the bias
                pieces[i] = pieces[i] + self.adapters[name](x, self.base.weight[rows], base)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold every adapter into the frozen weight: forward then costs one matmul, same output."""
        if self.merged:
            raise RuntimeError("this layer is already merged")
        for name, adapter in self.adapters.items():
            W = self.base.weight[self.rows(name)]
            W.copy_(adapter.merged_weight(W))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the adapters back out of the weight (restores it up to float rounding)."""
        if not self.merged:
            raise RuntimeError("this layer is not merged")
        for name, adapter in self.adapters.items():
            W = self.base.weight[self.rows(name)]
            W.copy_(adapter.unmerged_weight(W))
        self.merged = False

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={a.r}{' dora' if a.use_dora else ''}" for n, a in self.adapters.items())


# ----------------------------------------------------------------------------- a whole Llama


def resolve_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """A preset name ("attention", "mlp", "all") or target names -> target names in canonical order."""
    names = PRESETS[targets] if isinstance(targets, str) and targets in PRESETS else (
        (targets,) if isinstance(targets, str) else tuple(targets))
    unknown = sorted(set(names) - set(TARGETS))
    if unknown or not names:
        raise ValueError(f"unknown LoRA targets {unknown or names}: use names from {list(TARGETS)} "
                         f"or a preset {list(PRESETS)}")
    return tuple(t for t in TARGETS if t in names)


def _row_blocks(cfg, module: str) -> dict[str, int]:
    """The row blocks of one of our Llama's matrices, as Hugging Face splits them."""
    D = cfg.head_dim
    return {"attn.wqkv": {"q": cfg.n_head * D, "k": cfg.n_kv_head * D, "v": cfg.n_kv_head * D},
            "attn.wo": {"o": cfg.n_embd}, "ffn.gate_up": {"gate": cfg.ffn_hidden, "up": cfg.ffn_hidden},
            "ffn.down": {"down": cfg.n_embd}}[module]


def _check_plain_llama(model: nn.Module) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "blocks") or not hasattr(cfg, "n_kv_head"):
        raise TypeError(f"apply_lora expects a nanolm Llama, got a {type(model).__name__}")
    off = {k: getattr(cfg, k) for k, v in (("attention", "gqa"), ("mlp", "swiglu"), ("n_experts", 0))
           if getattr(cfg, k) != v}
    if off:
        raise ValueError(f"apply_lora maps onto Hugging Face's Llama layout (GQA attention, SwiGLU, no experts); "
                         f"this model has {off}")


def _wrap_linear(layer: nn.Module, blocks: dict[str, int], path: str) -> LoRALinear:
    """A plain nn.Linear becomes a LoRALinear; one already wrapped is kept (it gains another adapter)."""
    return layer if isinstance(layer, LoRALinear) else LoRALinear(layer, blocks)


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16, targets: str | Iterable[str] = "all",
               dropout: float = 0.0, rslora: bool = False, use_dora: bool = False,
               seed: int | None = None, wrap=_wrap_linear) -> nn.Module:
    """Freeze a Llama and put LoRA (or DoRA) adapters on the target matrices of every block, in place.

    wrap(layer, row_blocks, path) turns a target layer into one that holds adapters (qlora passes its own)."""
    _check_plain_llama(model)
    names = resolve_targets(targets)
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for block in model.blocks:
        for target in names:
            path, rows = TARGETS[target]
            parent_name, attr = path.split(".")
            parent = getattr(block, parent_name)
            layer = wrap(getattr(parent, attr), _row_blocks(model.config, path), path)
            setattr(parent, attr, layer)
            layer.add_adapter(rows, r, alpha, dropout=dropout, rslora=rslora, use_dora=use_dora,
                              generator=generator)
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear of a model by its module name (blocks.0.attn.wqkv, ...)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(number, bytes) of the parameters that get gradients: the adapters' only, after apply_lora."""
    params = [p for p in model.parameters() if p.requires_grad]
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def merge_all(model: nn.Module) -> nn.Module:
    """Merge every adapter into its frozen weight."""
    for layer in lora_layers(model).values():
        layer.merge()
    return model


def unmerge_all(model: nn.Module) -> nn.Module:
    """Take every merged adapter back out of its weight."""
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold the adapters in for good: each LoRALinear becomes its merged plain nn.Linear again, in place."""
    for name, layer in lora_layers(model).items():
        if not layer.merged:
            layer.merge()
        parent_name, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent_name), attr, layer.base)
    return model


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors (A, B, magnitude) by their state-dict names: blocks.0.attn.wqkv.adapters.q.A, ..."""
    return {k: v for k, v in model.state_dict().items() if ".adapters." in k}


def base_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen model's own tensors under their plain names (adapters left out, a tied head once)."""
    state = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if ".adapters." not in k}
    if getattr(model.config, "tie_embeddings", False):
        state.pop("head.weight", None)
    return state


def load_lora_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into a LoRA'd model; missing, unexpected or wrongly shaped ones are refused."""
    own = lora_state(model)
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"these adapter tensors do not fit the model's adapters: missing {missing[:4]}, "
                         f"unexpected {extra[:4]}. Apply LoRA with the adapter's targets (and DoRA setting) first.")
    bad = {k: (tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape}
    if bad:
        k, (got, want) = next(iter(bad.items()))
        raise ValueError(f"adapter tensor {k} has shape {got} but the model's is {want} ({len(bad)} differ): "
                         "the adapter was made with another rank r or for another base model")
    if any(layer.merged for layer in lora_layers(model).values()):
        raise RuntimeError("unmerge_all(model) before loading adapters: merged weights hold the old ones")
    model.load_state_dict(state, strict=False)


# ----------------------------------------------------------------------------- names in PEFT's files


def peft_name(ours: str, adapter: str | None = "default") -> str:
    """Our adapter tensor name -> PEFT's: blocks.3.attn.wqkv.adapters.q.A -> ...layers.3.self_attn.q_proj.lora_A...

    adapter="default" gives the name inside a live PeftModel (…lora_A.default.weight); adapter=None the key
    in PEFT's adapter_model.safetensors (…lora_A.weight; the magnitude is …lora_magnitude_vector).
    """
    _, layer, *_, target, kind = ours.split(".")  # blocks, i, attn, wqkv, adapters, q, A
    leaf = {"A": "lora_A", "B": "lora_B", "magnitude": "lora_magnitude_vector"}[kind]
    tail = f".{adapter}.weight" if adapter else ("" if kind == "magnitude" else ".weight")
    return f"base_model.model.model.layers.{layer}.{HF_MODULES[target]}.{leaf}{tail}"


def ours_name(peft: str) -> str:
    """PEFT's adapter tensor name (either form) -> ours; the inverse of peft_name."""
    parts = peft.removeprefix("base_model.model.model.layers.").split(".")
    layer, module = parts[0], f"{parts[1]}.{parts[2]}"
    target = {v: k for k, v in HF_MODULES.items()}.get(module)
    kind = {"lora_A": "A", "lora_B": "B", "lora_magnitude_vector": "magnitude"}.get(parts[3] if len(parts) > 3 else "")
    if not peft.startswith("base_model.model.model.layers.") or target is None or kind is None:
        raise ValueError(f"not a LoRA tensor of a Llama layer in PEFT's naming: {peft!r}")
    return f"blocks.{layer}.{TARGETS[target][0]}.adapters.{target}.{kind}"
