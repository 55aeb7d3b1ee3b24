"""A decoder-only GPT in one readable file (GPT-2 style).

token + learned position embeddings -> n_layer pre-norm blocks -> final LayerNorm -> linear head
(tied to the token embedding). Each block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).

Attention is causal multi-head attention with one fused QKV projection, through nanolm.model.attend:
torch's F.scaled_dot_product_attention (fused kernels) by default; `model.set_attention("manual")`
switches to the written-out softmax(QK^T / sqrt(d)) V, which gives the same numbers and can keep the
weights for plotting. A KV cache (nanolm.model.kvcache) makes generation one token per step; the
generation loop itself (`stream`, `generate`) is nanolm.model.generate, shared with the Llama.
Initialization follows GPT-2: N(0, 0.02) weights, zero biases, and the two projections that write
into the residual stream scaled by 1/sqrt(2 * n_layer) so the stream's variance does not grow with
depth.

Shapes: B batch, T time (<= block_size), L positions so far with a KV cache (cached + new), C n_embd,
H n_head, D = C // H, V vocab_size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..core import artifacts
from .attend import naive_attention, sdpa_attention
from .generate import GenerationMixin
from .kvcache import KVCache
from .layers import gpt2_init
from .weights import WeightsMixin


@dataclass
class GPTConfig:
    """The sizes of a GPT; saved with every checkpoint so the model can be rebuilt."""

    vocab_size: int = 65
    block_size: int = 256  # longest context the model can see
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)

    def __post_init__(self):
        sizes = {k: getattr(self, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}
        if bad := {k: v for k, v in sizes.items() if v < 1}:
            raise ValueError(f"GPTConfig sizes must be positive, got {bad}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        """Build from a saved dict; unknown keys are an error (a checkpoint from another model)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"not a GPTConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.mode = "sdpa"  # or "manual"
        self.keep_weights = False
        self.weights: torch.Tensor | None = None  # (B, H, T, L) after a manual forward with keep_weights

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); with a cache, keys and values of the L tokens so far (this one last)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, H, T, D): each head attends in its own D-dim subspace
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, L, D)
        p_drop = self.dropout if self.training else 0.0
        if self.mode == "sdpa":
            y = sdpa_attention(q, k, v, causal=True, dropout_p=p_drop)  # (B, H, T, D)
        else:
            y, weights = naive_attention(q, k, v, causal=True, dropout_p=p_drop, return_weights=True)
            if self.keep_weights:
                self.weights = weights.detach()  # (B, H, T, L), before dropout
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 uses the tanh approximation of GELU ("gelu_new" in transformers)
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(GenerationMixin, WeightsMixin, nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying: one matrix reads and writes tokens
        self.apply(gpt2_init)
        for block in self.blocks:  # residual projections: std 0.02 / sqrt(2 * n_layer)
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, V), and the mean cross-entropy if targets are given.

        Targets equal to -100 are ignored (the convention of F.cross_entropy), for loss masks. With a
        cache, idx continues the cached tokens: its positions start at cache.length (at most block_size
        positions in all: learned positions end there) and its keys and values are appended.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            where = f"{start} cached + {T} new = {start + T} positions" if cache is not None else f"length {T}"
            raise ValueError(f"sequence of {where} is longer than block_size {self.config.block_size} "
                             "(learned positions have no embedding beyond it)")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.advance(T)
        logits = self.head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            # half-precision logits are upcast for a stable softmax; float32 and float64 stay as they are
            flat = logits.view(-1, logits.size(-1))
            flat = flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat
            loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def num_params(self, include_position: bool = True, active: bool = False) -> int:
        """Parameter count (the tied head once); GPT-2 papers exclude positions; active: as Llama's (all, here)."""
        n = sum(p.numel() for p in self.parameters())
        return n if include_position else n - self.pos_emb.weight.numel()

    def set_attention(self, mode: str, keep_weights: bool = False) -> None:
        """'sdpa' (fused, default) or 'manual' (written out; keep_weights stores them per block)."""
        if mode not in ("sdpa", "manual"):
            raise ValueError(f"attention mode must be 'sdpa' or 'manual', got {mode!r}")
        for block in self.blocks:
            block.attn.mode, block.attn.keep_weights = mode, keep_weights and mode == "manual"


# ---------------------------------------------------------------------- saving and loading


def save(name: str, model: GPT, *, notebook: str, profile: str, metrics: dict | None = None,
         files: dict | None = None) -> artifacts.Artifact:
    """Save a GPT as an artifact: safetensors weights + its config {"model": "gpt", ...} (+ metrics, files)."""
    return artifacts.save_model(name, model, "gpt", notebook=notebook, profile=profile, metrics=metrics,
                                files=files)


def load(name: str, *, profile: str, device: torch.device | str = "cpu") -> tuple[GPT, artifacts.Artifact]:
    """Load a GPT artifact (sha256-verified) -> (model in eval mode on device, the artifact)."""
    return artifacts.load_model(name, "gpt", GPT, GPTConfig, profile=profile, device=device)
