"""Elastic Weight Consolidation: remember an old task by pulling the weights that mattered for it back.

Training on task B moves every weight; some of them task A needed, most it did not care about. EWC
(Kirkpatrick et al. 2017) adds to B's loss a spring on each weight, as stiff as that weight was important
for A, anchored where A's training left it:

    loss_B(theta) + lam/2 * sum_i F_i * (theta_i - theta*_A,i)^2

Importance is the diagonal of the Fisher information at theta*_A, the expected squared gradient of the
log-likelihood: a weight whose nudge changes the model's predictions a lot has a large F_i. It is also the
curvature (the Hessian's diagonal, to a Gauss-Newton approximation) of A's loss there, so the penalty is a
quadratic picture of A's loss valley: cheap to move along flat directions, costly along steep ones.

    F_i = E_x E_{y ~ p_theta(y|x)} [ (d/dtheta_i log p_theta(y|x))^2 ]         kind="true"
    F_i ~ E_(x,y) in data          [ (d/dtheta_i log p_theta(y|x))^2 ]         kind="empirical"

The true Fisher samples y from the model's own predictions; the empirical one uses the data's labels (what
most implementations compute, and closer to the gradients training saw). Both are squares of per-example
gradients, averaged: the square of a batch's summed gradient would not do (cross terms between examples),
so `fisher_diagonal` runs one example at a time. Each example's loss is its mean cross-entropy over the
scored (label != -100) tokens, the normalisation of training. Several tasks: one (F, anchor) term each.

The memory cost is two copies of the trainable parameters per task (`EWC.memory_bytes`), set against a
replay buffer's (nanolm.adapt.continual) in the notebook. Shapes: T tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .finetune import IGNORE, Encoded

KINDS = ("empirical", "true")


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that train (requires_grad), by name; a tied weight appears once."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _example_loss(model: nn.Module, ids: list[int], labels: list[int], kind: str,
                  gen: torch.Generator | None) -> torch.Tensor:
    """One example's mean cross-entropy over its scored tokens, at the data's or sampled labels."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)  # (1, T)
    y = torch.tensor(labels, device=device)  # (T,)
    logits = model(x)[0][0]  # (T, V), in the model's dtype (our models' own loss rounds to float32)
    scored = y != IGNORE
    if kind == "true":  # y ~ the model's own predictive distribution, at the same positions
        probs = torch.softmax(logits[scored].detach().double(), dim=-1)  # (n, V)
        y = y.clone()
        y[scored] = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    return F.cross_entropy(logits, y, ignore_index=IGNORE)


def fisher_diagonal(model: nn.Module, encoded: Sequence[Encoded], *, kind: str = "empirical",
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """The diagonal Fisher of the trainable parameters: per-example squared gradients, averaged.

    kind="empirical" differentiates the loss at the data's labels, kind="true" at labels sampled from the
    model (torch.multinomial, seeded). Examples run one at a time (batch 1); the model is in eval mode
    meanwhile (no dropout) and returns to its mode after.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not encoded:
        raise ValueError("fisher_diagonal needs at least one encoded (ids, labels) example, got none")
    params = _trainable(model)
    if not params:
        raise ValueError("the model has no trainable parameter (requires_grad): nothing to weigh")
    for k, (_, labels) in enumerate(encoded):
        if all(t == IGNORE for t in labels):
            raise ValueError(f"example {k} has no scored token (every label is -100): its loss is undefined")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for ids, labels in encoded:
            loss = _example_loss(model, ids, labels, kind, gen)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for name, g in zip(params, grads, strict=True):
                if g is not None:  # None: the parameter does not reach this loss (its square is 0)
                    fisher[name] += g.detach() ** 2
    finally:
        model.train(was_training)
    return {name: f / len(encoded) for name, f in fisher.items()}


class EWC:
    """The EWC penalty lam/2 * sum over tasks and weights of F * (p - anchor)^2, one term per task.

    After training a task: `ewc.consolidate(model, fisher_diagonal(model, data))` fixes that task's
    anchor (the weights now) and importance; while training the next: `loss + ewc.penalty(model)`.
    """

    def __init__(self, lam: float):
        if lam < 0:
            raise ValueError(f"lam (the penalty's strength) must be >= 0, got {lam}")
        self.lam = lam
        self.terms: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []  # (fisher, anchor)
        self._flat: list[tuple[torch.Tensor, torch.Tensor]] = []  # the same, each as one flat vector
        self._names: list[str] = []  # the parameter order of the flat vectors

    def consolidate(self, model: nn.Module, fisher: dict[str, torch.Tensor]) -> None:
        """Add a term: the fisher and a detached copy of the model's trainable weights as the anchor."""
        params = _trainable(model)
        if set(fisher) != set(params):
            missing, extra = sorted(set(params) - set(fisher)), sorted(set(fisher) - set(params))
            raise ValueError(f"fisher must name exactly the model's trainable parameters: missing {missing}, "
                             f"unknown {extra}; compute it with fisher_diagonal on this model")
        for name, p in params.items():
            if fisher[name].shape != p.shape:
                raise ValueError(f"fisher[{name!r}] has shape {tuple(fisher[name].shape)}, "
                                 f"the parameter {tuple(p.shape)}")
        if self._names and list(params) != self._names:
            raise ValueError("every term must anchor the same parameters (consolidate on the same model)")
        anchor = {name: p.detach().clone() for name, p in params.items()}
        importance = {name: fisher[name].detach().to(p.device) for name, p in params.items()}
        self.terms.append((importance, anchor))
        self._names = list(params)
        self._flat.append(tuple(torch.cat([d[n].reshape(-1) for n in self._names]) for d in (importance, anchor)))

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """lam/2 * sum_terms sum_params (F * (p - anchor)^2).sum(): a scalar, differentiable in the weights.

        The weights are joined into one flat vector first, so a step costs a few operations per task
        instead of a few per task and parameter tensor (the same sum)."""
        first = next(model.parameters())
        if not self.terms:
            return torch.zeros((), dtype=first.dtype, device=first.device)  # no terms: exactly 0
        params = _trainable(model)
        missing = [n for n in self._names if n not in params]
        if missing:
            raise ValueError(f"the model has no trainable parameter {missing[0]!r} that a term anchors; "
                             "penalize the model the terms were consolidated on")
        flat = torch.cat([params[n].reshape(-1) for n in self._names])
        total = sum((f * (flat - a) ** 2).sum() for f, a in self._flat)
        return self.lam / 2 * total

    def memory_bytes(self) -> int:
        """Bytes of every stored fisher and anchor: two copies of the trainable weights per task."""
        return sum(t.numel() * t.element_size() for fisher, anchor in self.terms
                   for t in (*fisher.values(), *anchor.values()))

    def __len__(self) -> int:
        return len(self.terms)
