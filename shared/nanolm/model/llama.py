"""A Llama-style decoder in one readable file: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases.

token embedding -> n_layer pre-norm blocks -> final RMSNorm -> linear head (tied to the embedding
unless tie_embeddings=False). Each block: x + attn(norm_1(x)), then x + ffn(norm_2(x)). What
changed since GPT-2 (nanolm.gpt):

- positions: no learned position table. Queries and keys are rotated by angles proportional to their
  position (RoPE), so a query-key dot product depends only on the offset between the two positions.
  `apply_rope` uses the half-split pairing (feature i turns together with feature i + D/2), the form
  of Hugging Face's LlamaForCausalLM; `apply_rope_complex` is Meta's original interleaved complex
  form (features 2i and 2i+1 as one complex number). The two agree after `interleaved_to_half`.
- RMSNorm (rescale only: no mean subtraction, no bias) instead of LayerNorm.
- SwiGLU feed-forward, down(silu(gate(x)) * up(x)), with hidden width 8*round(C/3): three matrices
  with the parameters of GELU's two C x 4C matrices. (gate and up live in one matrix `gate_up`, and
  queries, keys and values in one `wqkv`, so that each is one matrix product; `to_hf` splits them.)
- grouped-query attention: n_head query heads share n_kv_head key/value heads (n_kv_head = n_head is
  multi-head attention, 1 is multi-query attention); optional RMSNorm of queries and keys (qk_norm).
- no biases anywhere, and a KV cache (nanolm.model.kvcache) for generation; the generation loop
  (`stream`, `generate`) is nanolm.model.generate, shared with the GPT.

Knobs for ablations, each putting back one GPT-2 choice: pos="learned", norm="layer", mlp="gelu",
bias=True. Parts from later notebook sections: attention="mla" (nanolm.mla, DeepSeek-V2 multi-head
latent attention) and n_experts > 0 (nanolm.moe, a mixture-of-experts feed-forward).

Shapes: B batch, T time, C n_embd, H n_head, Hkv n_kv_head, D = C // H head size, V vocab_size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..core import artifacts
from .attend import ATTENTION_MODES, run_attention
from .generate import GenerationMixin
from .kvcache import KVCache
from .layers import GELUMLP, RMSNorm, SwiGLU, apply_rope, gpt2_init, rope_angles, rope_frequencies
from .mla import LatentAttention
from .moe import MoE
from .weights import WeightsMixin

CHOICES = {"pos": ("rope", "learned", "none"), "norm": ("rms", "layer"), "mlp": ("swiglu", "gelu"),
           "attention": ("gqa", "mla")}


@dataclass
class LlamaConfig:
    """The sizes and choices of a Llama-style model; saved with every checkpoint."""

    vocab_size: int = 4096
    block_size: int = 256  # the context it is trained on (with RoPE the model itself runs at any length)
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # key/value heads: None -> n_head (MHA); 1 = MQA; in between = GQA
    n_embd: int = 128
    ffn_hidden: int | None = None  # None -> 8 * round(C / 3) for SwiGLU (GELU's 8C^2 params), 4C for GELU
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    tie_embeddings: bool = True
    dropout: float = 0.0
    pos: str = "rope"  # "rope" | "learned" | "none"
    norm: str = "rms"  # "rms" | "layer"
    mlp: str = "swiglu"  # "swiglu" | "gelu"
    bias: bool = False
    attention: str = "gqa"  # "gqa" (MHA, GQA, MQA) | "mla" (nanolm.mla)
    kv_rank: int = 0  # MLA: width of the shared key/value latent
    rope_dim: int = 0  # MLA: width of the decoupled RoPE key (shared by all heads); 0 unless pos="rope"
    n_experts: int = 0  # > 0: mixture-of-experts feed-forward (nanolm.moe)
    top_k: int = 2  # MoE: experts per token
    expert_hidden: int | None = None  # MoE: None -> ffn_hidden // top_k (active params = the dense FFN's)
    aux_loss_coef: float = 0.01  # MoE: weight of the load-balancing loss (added in training mode)

    def __post_init__(self):
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        sizes = {k: getattr(self, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}
        if bad := {k: v for k, v in sizes.items() if v < 1}:
            raise ValueError(f"LlamaConfig sizes must be positive, got {bad}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head size, got {self.head_dim}")
        if self.ffn_hidden is None:
            self.ffn_hidden = 8 * round(self.n_embd / 3) if self.mlp == "swiglu" else 4 * self.n_embd
        if self.attention == "mla":
            self._check_mla()
        if self.n_experts:
            if not 1 <= self.top_k <= self.n_experts:
                raise ValueError(f"top_k must be in [1, n_experts={self.n_experts}], got {self.top_k}")
            if self.expert_hidden is None:
                self.expert_hidden = max(1, self.ffn_hidden // self.top_k)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def _check_mla(self) -> None:
        """MLA needs a latent (kv_rank >= 1) and a decoupled RoPE key (even rope_dim >= 2) exactly when pos='rope'."""
        if self.kv_rank < 1:
            raise ValueError(f"attention='mla' needs kv_rank >= 1, got {self.kv_rank}")
        if self.pos == "rope" and (self.rope_dim < 2 or self.rope_dim % 2):
            raise ValueError(f"attention='mla' with pos='rope' needs an even rope_dim >= 2, got {self.rope_dim}")
        if self.pos != "rope" and self.rope_dim:
            raise ValueError(f"attention='mla' with pos={self.pos!r} rotates nothing: set rope_dim=0 "
                             f"(got {self.rope_dim}); the decoupled RoPE key exists only with pos='rope'")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LlamaConfig:
        """Build from a saved dict; unknown keys are an error (a checkpoint from another model)."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"not a LlamaConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------------------- attention and FFN


class Attention(nn.Module):
    """Causal grouped-query attention with RoPE: n_head query heads share n_kv_head key/value heads."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        C, H, Hkv, D = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.n_head, self.n_kv_head, self.head_dim = H, Hkv, D
        self.wqkv = nn.Linear(C, (H + 2 * Hkv) * D, bias=cfg.bias)  # [W_q; W_k; W_v] by rows: one matmul
        self.wo = nn.Linear(H * D, C, bias=cfg.bias)
        self.q_norm = RMSNorm(D, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(D, cfg.norm_eps) if cfg.qk_norm else None
        self.rope = cfg.pos == "rope"
        self.register_buffer("inv_freq", rope_frequencies(D, cfg.rope_theta), persistent=False)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.mode = "auto"

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, T, C) at `positions` (T,) -> (B, T, C); rope: (cos, sin) of those positions, if precomputed."""
        B, T, _ = x.shape
        H, Hkv = self.n_head, self.n_kv_head
        qkv = self.wqkv(x).view(B, T, H + 2 * Hkv, self.head_dim).transpose(1, 2)  # (B, H + 2Hkv, T, D)
        qk, v = qkv.split([H + Hkv, Hkv], dim=1)  # queries and keys (B, H + Hkv, T, D), values (B, Hkv, T, D)
        if self.q_norm is not None:
            q, k = qk.split([H, Hkv], dim=1)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=1)
        if self.rope:  # queries and keys turn by the same angles: one call for both
            cos, sin = rope if rope is not None else rope_angles(positions, self.inv_freq)
            qk = apply_rope(qk, cos, sin)
        q, k = qk.split([H, Hkv], dim=1)  # (B, H, T, D), (B, Hkv, T, D)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Hkv, L, D): every position so far, this one last
        p_drop = self.dropout if self.training else 0.0
        y = run_attention(q, k, v, self.mode, p_drop)  # (B, H, T, D)
        return self.resid_drop(self.wo(y.transpose(1, 2).reshape(B, T, -1)))


def make_norm(cfg: LlamaConfig, dim: int | None = None) -> nn.Module:
    """RMSNorm, or LayerNorm when cfg.norm == 'layer' (with a bias when cfg.bias)."""
    dim = dim or cfg.n_embd
    return RMSNorm(dim, cfg.norm_eps) if cfg.norm == "rms" else nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.norm_1 = make_norm(cfg)
        if cfg.attention == "mla":
            self.attn = LatentAttention(cfg)
        else:
            self.attn = Attention(cfg)
        self.norm_2 = make_norm(cfg)
        if cfg.n_experts:
            self.ffn = MoE(cfg.n_embd, cfg.expert_hidden, cfg.n_experts, cfg.top_k, bias=cfg.bias)
        elif cfg.mlp == "swiglu":
            self.ffn = SwiGLU(cfg.n_embd, cfg.ffn_hidden, cfg.bias, cfg.dropout)
        else:
            self.ffn = GELUMLP(cfg.n_embd, cfg.ffn_hidden, cfg.bias, cfg.dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None, layer: int,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), positions, cache, layer, rope)
        return x + self.ffn(self.norm_2(x))


# ----------------------------------------------------------------------------- the model

RESIDUAL_PROJECTIONS = ("attn.wo.weight", "ffn.down.weight", "ffn.proj.weight")  # write into the residual stream


class Llama(GenerationMixin, WeightsMixin, nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self.aux_loss: torch.Tensor | None = None  # MoE load-balancing loss of the last forward
        self.apply(gpt2_init)
        for name, p in self.named_parameters():  # residual projections: std 0.02 / sqrt(2 * n_layer)
            if name.endswith(RESIDUAL_PROJECTIONS) or (".experts." in name and name.endswith("down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, V), and the mean cross-entropy if targets are given.

        Targets equal to -100 are ignored. With a cache, idx continues the cached tokens: its positions
        start at cache.length, and its keys and values are appended. With RoPE (or no positions) T may
        exceed block_size; learned positions stop at block_size. In training mode an MoE model adds
        aux_loss_coef * its load-balancing loss to the returned loss (evaluation returns pure cross-entropy).
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if self.pos_emb is not None and start + T > self.config.block_size:
            raise ValueError(f"positions up to {start + T} exceed block_size {self.config.block_size} "
                             "(learned positions have no embedding beyond it)")
        positions = torch.arange(start, start + T, device=idx.device)
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        x = self.drop(x)
        rope = None  # every layer rotates by the same angles: compute them once
        if self.config.pos == "rope":
            rope = rope_angles(positions, self.blocks[0].attn.inv_freq)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, cache, i, rope)
        if cache is not None:
            cache.advance(T)
        logits = self.head(self.norm_f(x))  # (B, T, V)
        if self.config.n_experts:
            self.aux_loss = sum(b.ffn.aux_loss for b in self.blocks) / self.config.n_layer
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
            if self.config.n_experts and self.training:
                loss = loss + self.config.aux_loss_coef * self.aux_loss
        return logits, loss

    def num_params(self, include_position: bool = True, active: bool = False) -> int:
        """Parameter count (a tied head once); include_position=False leaves out a learned position table;
        active=True counts top_k of the n_experts experts (the parameters one token uses)."""
        n = sum(p.numel() for p in self.parameters())
        if not include_position and self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        if active and self.config.n_experts:
            per_expert = sum(p.numel() for p in self.blocks[0].ffn.experts[0].parameters())
            n -= self.config.n_layer * (self.config.n_experts - self.config.top_k) * per_expert
        return n

    def set_attention(self, mode: str) -> None:
        """'auto' (flash-attn on CUDA when installed, else SDPA), 'sdpa', 'manual' (written out) or 'tiled'."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
        for block in self.blocks:
            block.attn.mode = mode


# ---------------------------------------------------------------------- saving and loading


def save(name: str, model: Llama, *, notebook: str, profile: str, metrics: dict | None = None,
         files: dict | None = None) -> artifacts.Artifact:
    """Save a Llama as an artifact: safetensors weights + its config {"model": "llama", ...} (+ metrics, files)."""
    return artifacts.save_model(name, model, "llama", notebook=notebook, profile=profile, metrics=metrics,
                                files=files)


def load(name: str, *, profile: str, device: torch.device | str = "cpu") -> tuple[Llama, artifacts.Artifact]:
    """Load a Llama artifact (sha256-verified) -> (model in eval mode on device, the artifact)."""
    return artifacts.load_model(name, "llama", Llama, LlamaConfig, profile=profile, device=device)
