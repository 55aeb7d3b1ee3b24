"""A mixture-of-experts feed-forward: a router sends every token to its top-k of n_experts SwiGLUs.

The router is a linear map to one logit per expert. Each token goes to the k experts with the highest
router probabilities, and their outputs are mixed with those probabilities renormalized to sum to 1
(the gates). Only k experts run per token: the model holds n_experts FFNs of parameters but spends
the compute of k ("total" vs "active" parameters).

Left alone, routing collapses: a few experts win early, get all the gradient and keep winning. The
load-balancing loss of the Switch Transformer (Fedus et al., 2021) pushes back:

    aux = E * sum_e f_e * P_e,   f_e = share of the N*k token-slots routed to expert e,
                                 P_e = mean router probability of expert e over the N tokens.

It is 1 when both are uniform and grows as load concentrates (up to E when one expert takes all).
An optional capacity (capacity_factor * N * k / E slots per expert) drops the overflow tokens of an
expert, in token order; a dropped token gets nothing from that expert (the residual carries it on).

The forward pass never copies to the host on purpose: the routing counts of the last call stay on the
device (`expert_counts`) and are copied only when read (`tokens_per_expert`). (Gathering each expert's
tokens with nonzero() still waits for the device on a GPU: the number of tokens sets a tensor's shape.)

Shapes: N tokens (B * T flattened), C width, E n_experts, k top_k.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import SwiGLU


def route(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router logits (N, E) -> (probs (N, E), gates (N, k) summing to 1, experts (N, k) distinct per token)."""
    probs = logits.float().softmax(dim=-1)
    top, experts = probs.topk(k, dim=-1)
    return probs, top / top.sum(-1, keepdim=True), experts


def balance_loss(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's load-balancing loss E * sum_e f_e P_e (1 when routing is uniform)."""
    N, E = probs.shape
    f = torch.bincount(experts.flatten(), minlength=E).float() / experts.numel()  # (E,) share of slots
    return E * (f * probs.mean(0)).sum()


def capacity(n_tokens: int, n_experts: int, k: int, factor: float) -> int:
    """Slots per expert: ceil(factor * N * k / E)."""
    return math.ceil(factor * n_tokens * k / n_experts)


class MoE(nn.Module):
    """Top-k routed SwiGLU experts, (..., C) -> (..., C); keeps aux_loss and the routing counts of the last call."""

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int = 2, bias: bool = False,
                 capacity_factor: float | None = None):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
        self.top_k, self.capacity_factor = top_k, capacity_factor
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(dim, hidden, bias) for _ in range(n_experts))
        self.aux_loss = torch.tensor(0.0)
        # (E,) token-slots routed to each expert in the last call, before capacity: kept on the device
        self.register_buffer("expert_counts", torch.zeros(n_experts, dtype=torch.long), persistent=False)
        self.dropped = 0  # token-slots over capacity in the last call

    @property
    def tokens_per_expert(self) -> torch.Tensor:
        """(E,) token-slots routed to each expert in the last call (before capacity), copied to the CPU."""
        return self.expert_counts.cpu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, C)
        probs, gates, experts = route(self.router(flat), self.top_k)  # (N, E), (N, k), (N, k)
        self.aux_loss = balance_loss(probs, experts)
        E = len(self.experts)
        self.expert_counts = torch.bincount(experts.flatten(), minlength=E).detach()  # stays on the device
        cap = capacity(flat.size(0), E, self.top_k, self.capacity_factor) if self.capacity_factor else None
        self.dropped = 0
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (experts == e).nonzero(as_tuple=True)  # which tokens chose e, and as which choice
            if cap is not None and token.numel() > cap:
                self.dropped += token.numel() - cap
                token, slot = token[:cap], slot[:cap]  # first come, first served
            if token.numel():
                y = expert(flat[token]) * gates[token, slot, None].to(flat.dtype)  # (n_e, C)
                out.index_add_(0, token, y)
        return out.view(shape)
