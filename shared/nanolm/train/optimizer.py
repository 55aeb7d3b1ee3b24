"""AdamW with weight decay on matrices only, and the global gradient norm and its clipping."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


def split_decay(model: nn.Module) -> tuple[list[str], list[str]]:
    """(decayed, not decayed) parameter names: matrices (dim >= 2, embeddings too) vs biases and norm gains."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied weight appears once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(name)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on matrices and embeddings, none on biases and norm gains."""
    params = dict(model.named_parameters())
    decay, no_decay = split_decay(model)
    return [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over param_groups: the fused kernel on CUDA and CPU, the foreach (multi-tensor) one elsewhere.

    On this course's 2-core CPU the fused step of a 0.9M-parameter GPT took 0.64 ms, foreach 2.6 ms.
    """
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                             eps=cfg.eps, **fast)


def grad_norm(model: nn.Module) -> torch.Tensor:
    """The global L2 norm of all gradients (a device tensor, no sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    # one multi-tensor kernel for all per-tensor norms (what torch.nn.utils uses inside)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale all gradients so their global norm is at most max_norm; returns the pre-clip norm.

    The same arithmetic as torch.nn.utils.clip_grad_norm_ (coefficient max_norm / (norm + 1e-6),
    capped at 1), without its per-call grouping, which took about 3 ms a step on a 0.9M-parameter
    GPT on this CPU, against 0.9 ms here: small models feel that.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = grad_norm(model)
    if grads:
        torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return norm
