"""Where the memory of training goes, computed for a Llama of any size and measured on a real one.

Four things live in memory while a model trains, per parameter or per token:

    parameters, gradients      P values each (bf16 mixed precision: 2 bytes; fp32: 4)
    AdamW state                m and v, fp32: 8 bytes per parameter (+ a 4-byte fp32 master copy of each
                               parameter when the parameters themselves are bf16)
    activations                what autograd saves in forward for backward: `values_per_token_layer`
                               per token and layer, plus the logits (V per token) at the end

Plain AdamW in fp32 costs 4 + 4 + 8 = 16 bytes a parameter; mixed precision 2 + 2 + 4 + 8 = 16 too
(the ZeRO paper's 2 + 2 + 12). Sharding divides them over `world` GPUs (Rajbhandari et al., 2020):
ZeRO-1 the optimizer state (with the master copy), ZeRO-2 also the gradients, ZeRO-3 (= FSDP's
FULL_SHARD) also the parameters. Activations are not sharded by any of these; activation
checkpointing keeps only each block's input (C per token and layer) and recomputes the rest in
backward, one block at a time: one extra forward for a large cut in memory.

`values_per_token_layer` counts what this course's Llama block saves, tensor by tensor (the list is in
the function); `saved_bytes` measures the same with autograd's saved-tensor hooks, and notebook 15
checks one against the other.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from ..model.llama import LlamaConfig

STAGES = ("ddp", "zero1", "zero2", "zero3")


def llama_params(cfg: LlamaConfig) -> int:
    """Parameters of a Llama (RoPE, RMSNorm, SwiGLU, GQA, no biases), counted from its sizes alone."""
    C, F, V, D = cfg.n_embd, cfg.ffn_hidden, cfg.vocab_size, cfg.head_dim
    attention = C * (cfg.n_head + 2 * cfg.n_kv_head) * D + cfg.n_head * D * C  # wqkv, wo
    per_layer = attention + 3 * C * F + 2 * C  # gate_up (2F x C), down (C x F), two RMSNorm gains
    head = 0 if cfg.tie_embeddings else V * C
    return V * C + cfg.n_layer * per_layer + C + head


def values_per_token_layer(cfg: LlamaConfig) -> int:
    """Values one Llama block saves for backward, per token (fp32, SDPA attention, no dropout).

        RMSNorm before attention   input, normalized input, output (read by wqkv), 1/rms    3C + 1
        wqkv output                kept whole: v is a view of it                             (H + 2 Hkv) D
        queries and keys, rotated  read by attention                                         (H + Hkv) D
        attention                  output (H D), log-sum-exp per head (H)                    H D + H
        wo input                   the heads side by side                                    H D
        RMSNorm before the MLP     as above                                                  3C + 1
        SwiGLU                     gate_up output 2F, silu(gate) F, the product F            4F
    No T x T attention matrix: the fused attention kernel recomputes it in backward.
    """
    C, F, H, Hkv, D = cfg.n_embd, cfg.ffn_hidden, cfg.n_head, cfg.n_kv_head, cfg.head_dim
    return 2 * (3 * C + 1) + (H + 2 * Hkv) * D + (H + Hkv) * D + 2 * H * D + H + 4 * F


def activation_bytes(cfg: LlamaConfig, tokens: int, *, dtype_bytes: int = 4, checkpointing: bool = False) -> int:
    """Bytes saved for backward by one forward over `tokens` tokens (batch x sequence).

    Without checkpointing: every layer's values, plus the final norm (3C + 1) and the logits (V).
    With it: each block's input (C per token and layer), plus the final norm and the logits; backward
    then holds one block's values at a time on top (`plan` adds them). Left out, as too small to
    matter: the token ids and targets (int64) and the RoPE table (T x D, shared by the batch).
    """
    kept = cfg.n_embd if checkpointing else values_per_token_layer(cfg)
    return tokens * (cfg.n_layer * kept + 3 * cfg.n_embd + 1 + cfg.vocab_size) * dtype_bytes


def state_bytes(n_params: int, *, stage: str = "ddp", world: int = 1, mixed: bool = True) -> dict[str, float]:
    """Bytes per GPU of parameters, gradients and optimizer state (AdamW) under a ZeRO stage."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    level = STAGES.index(stage)  # 0 nothing sharded ... 3 everything
    p = 2 if mixed else 4
    optimizer = 8 + (4 if mixed else 0)  # m, v (+ the fp32 master weights)
    return {"params": n_params * p / (world if level >= 3 else 1),
            "grads": n_params * p / (world if level >= 2 else 1),
            "optimizer": n_params * optimizer / (world if level >= 1 else 1)}


@dataclass
class Plan:
    """Memory per GPU of one training setup, in bytes."""

    name: str
    params: int
    state: float  # parameters + gradients + optimizer state, on one GPU
    activations: float

    @property
    def total(self) -> float:
        return self.state + self.activations


def plan(name: str, cfg: LlamaConfig, *, tokens_per_gpu: int, stage: str = "ddp", world: int = 1,
         mixed: bool = True, checkpointing: bool = False) -> Plan:
    """Memory per GPU for training cfg on `world` GPUs, each seeing tokens_per_gpu tokens per micro-batch."""
    n = llama_params(cfg)
    state = sum(state_bytes(n, stage=stage, world=world, mixed=mixed).values())
    dtype_bytes = 2 if mixed else 4
    act = activation_bytes(cfg, tokens_per_gpu, dtype_bytes=dtype_bytes, checkpointing=checkpointing)
    if checkpointing:  # backward reruns one block at a time and holds its values
        act += tokens_per_gpu * values_per_token_layer(cfg) * dtype_bytes
    return Plan(name, n, state, act)


def saved_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Measure: bytes of the tensors autograd saves during model(x, y), parameters left out, each storage once.

    Returns (bytes, loss); the loss can still be backpropagated.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x, y)
    return sum(saved.values()), loss


@contextlib.contextmanager
def activation_checkpointing(model: torch.nn.Module):
    """Within the block: each of model.blocks keeps only its input in forward and reruns itself in backward."""
    blocks = list(model.blocks)
    for block in blocks:  # an instance attribute wins over the class's forward; state_dict keys unchanged
        block.forward = functools.partial(checkpoint, type(block).forward.__get__(block), use_reentrant=False)
    try:
        yield model
    finally:
        for block in blocks:
            del block.forward


GB = 1e9
GPUS_GB = (24, 80, 141)  # a 24 GB card (RTX 4090, L4), an 80 GB A100/H100, a 141 GB H200

# Sizes of public models, for the memory table (vocabulary, width, depth, heads, MLP width, tied?).
REFERENCE_MODELS = {
    "SmolLM2-135M": LlamaConfig(vocab_size=49152, n_layer=30, n_embd=576, n_head=9, n_kv_head=3, ffn_hidden=1536),
    "Llama-3.2-1B": LlamaConfig(vocab_size=128256, n_layer=16, n_embd=2048, n_head=32, n_kv_head=8,
                                ffn_hidden=8192),
    "Llama-2-7B": LlamaConfig(vocab_size=32000, n_layer=32, n_embd=4096, n_head=32, n_kv_head=32, ffn_hidden=11008,
                              tie_embeddings=False),
}
