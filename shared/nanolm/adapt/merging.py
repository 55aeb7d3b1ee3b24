"""Merging LoRA adapters: one adapter that does the work of several, and what each recipe loses.

A LoRA adapter for one weight matrix W (out, in) is two thin matrices, A (r, in) and B (out, r), and a
number, the scaling (lora_alpha / r). It changes the layer to W + scaling * B @ A. Adapters trained for
different tasks can be mixed with weights w_i, and the mix we want is the exact weighted sum of the changes:

    exact = sum_i w_i * s_i * B_i @ A_i                                        (out, in)

Each recipe below is an answer to "what do we store instead?", and `error` measures its cost as the
relative Frobenius error ||merged - exact||_F / ||exact||_F:

    concatenation  stack the A's by rows and the B's by columns, with w_i * s_i folded into A_i: B @ A is
                   exactly the sum. Exact, but the rank grows to sum_i r_i.
    linear         PEFT's "linear": A = sum_i sign_i c_i A_i, B = sum_i c_i B_i with c_i = sqrt|w_i s_i|.
                   The rank stays r, but B @ A = sum_ij c_i c_j B_i A_j has cross terms (i != j) nobody
                   asked for. It is exact for one adapter, or when the cross terms vanish (adapters in
                   disjoint rank slots). Sharing A is NOT enough: then B @ A = (sum_j sign_j c_j) *
                   (sum_i c_i B_i) @ A, and two equal weights give twice the exact sum.
    svd            the exact sum cut to `rank` by its SVD: the best rank-k matrix there is (Eckart-Young),
                   and its error is the tail of the singular values, sqrt(sum_{j>k} sigma_j^2) / ||exact||.
    ties           (on full deltas) trim each delta to its largest `density` fraction, elect each entry's
                   sign by the sign of the summed trimmed values, and average the entries that agree with
                   it (Yadav et al. 2023, "TIES-merging"), so opposite updates no longer cancel.
    dare           (on full deltas) drop each entry with probability 1 - density and rescale the survivors
                   by 1 / density (Yu et al. 2023, "DARE"): random, but unbiased, E[dare] = exact.

ties and dare are sparsification recipes for task vectors (full fine-tuning deltas); on adapters they work
on the deltas B @ A, and `svd` can turn their result back into a rank-k adapter.
The functions follow PEFT's (peft/utils/merge_utils.py and LoraModel.add_weighted_adapter) operation for
operation, so the tests can check them against PEFT; where PEFT picks a variant, the docstring says which.

Shapes: n adapters, r rank, out x in the weight matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor


class Adapter(NamedTuple):
    """One LoRA adapter for one weight matrix: delta W = scaling * B @ A."""

    A: Tensor  # (r, in)
    B: Tensor  # (out, r)
    scaling: float


AdapterLike = Adapter | tuple[Tensor, Tensor, float]
Weights = Sequence[float] | Tensor


# ---------------------------------------------------------------------------------------------------------
# checks: every public function refuses bad input with a ValueError that says what is wrong


def _check_pair(A: Tensor, B: Tensor) -> None:
    """Refuse an (A, B) pair that is not (r, in) and (out, r)."""
    if A.dim() != 2 or B.dim() != 2:
        raise ValueError(f"A must be (r, in) and B (out, r), got A {tuple(A.shape)} and B {tuple(B.shape)}")
    if B.shape[1] != A.shape[0]:
        raise ValueError(f"B's columns must match A's rows (the rank), got A {tuple(A.shape)} and B {tuple(B.shape)}")


def _weights(weights: Weights, n: int) -> list[float]:
    """The weights as a list of n finite floats."""
    ws = [float(w) for w in (weights.flatten().tolist() if isinstance(weights, Tensor) else weights)]
    if len(ws) != n:
        raise ValueError(f"need one weight per adapter: {n} adapters, {len(ws)} weights")
    if not all(math.isfinite(w) for w in ws):
        raise ValueError(f"weights must be finite, got {ws}")
    return ws


def _check_adapters(adapters: Sequence[AdapterLike], weights: Weights) -> tuple[list[Adapter], list[float]]:
    """Adapters as Adapter tuples over one (out, in) matrix, and their weights as floats."""
    if len(adapters) == 0:
        raise ValueError("nothing to merge: the list of adapters is empty")
    checked = [Adapter(*a) for a in adapters]
    for a in checked:
        _check_pair(a.A, a.B)
    shapes = {(a.B.shape[0], a.A.shape[1]) for a in checked}
    if len(shapes) != 1:
        raise ValueError(f"adapters change matrices of different shapes (out, in): {sorted(shapes)}")
    return checked, _weights(weights, len(checked))


def _check_deltas(deltas: Sequence[Tensor], weights: Weights) -> tuple[Tensor, list[float]]:
    """Deltas stacked into one (n, out, in) tensor, and their weights as floats."""
    if len(deltas) == 0:
        raise ValueError("nothing to merge: the list of deltas is empty")
    shapes = {tuple(d.shape) for d in deltas}
    if len(shapes) != 1:
        raise ValueError(f"deltas must all have one shape, got {sorted(shapes)}")
    return torch.stack(list(deltas)), _weights(weights, len(deltas))


def _check_density(density: float) -> None:
    """Refuse a density outside (0, 1]: the fraction of entries kept."""
    if not 0.0 < density <= 1.0:  # also refuses nan
        raise ValueError(f"density is the fraction of entries kept and must lie in (0, 1], got {density}")


# ---------------------------------------------------------------------------------------------------------
# the exact sum and the error of a merge against it


def delta(A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """The change an adapter makes to its weight matrix: scaling * B @ A, (out, in)."""
    _check_pair(A, B)
    return (B @ A) * scaling  # (out, r) @ (r, in) -> (out, in), PEFT's get_delta_weight order


def _weighted_sum(stacked: Tensor, weights: list[float]) -> Tensor:
    """sum_i w_i * stacked[i] as PEFT's task_arithmetic computes it: (n, ...) -> (...)."""
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)  # (n,)
    w = w.view(w.shape + (1,) * (stacked.dim() - 1))  # (n, 1, 1)
    return (stacked * w).sum(dim=0)


def exact(adapters: Sequence[AdapterLike], weights: Weights) -> Tensor:
    """The weighted sum of the adapters' deltas, sum_i w_i * s_i * B_i @ A_i: what every merge aims at."""
    checked, ws = _check_adapters(adapters, weights)
    deltas = torch.stack([delta(*a) for a in checked])  # (n, out, in)
    return _weighted_sum(deltas, ws)  # (out, in)


def error(merged_delta: Tensor, exact_delta: Tensor) -> float:
    """Relative Frobenius error ||merged - exact||_F / ||exact||_F (0 when both are zero, inf if only exact is)."""
    if merged_delta.shape != exact_delta.shape:
        raise ValueError(f"shapes differ: merged {tuple(merged_delta.shape)}, exact {tuple(exact_delta.shape)}")
    diff = torch.linalg.norm((merged_delta.double() - exact_delta.double()).flatten()).item()
    size = torch.linalg.norm(exact_delta.double().flatten()).item()
    if size == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / size


# ---------------------------------------------------------------------------------------------------------
# merges that return an adapter (A, B, scaling)


def concatenation(adapters: Sequence[AdapterLike], weights: Weights) -> Adapter:
    """PEFT's "cat": A's stacked by rows with w_i * s_i folded in, B's by columns; exact, rank sum_i r_i."""
    checked, ws = _check_adapters(adapters, weights)
    A = torch.cat([a.A * w * a.scaling for a, w in zip(checked, ws, strict=True)], dim=0)  # (sum r_i, in)
    B = torch.cat([a.B for a in checked], dim=1)  # (out, sum r_i)
    return Adapter(A, B, 1.0)  # B @ A = sum_i B_i @ (w_i s_i A_i): block by block, nothing else


def linear(adapters: Sequence[AdapterLike], weights: Weights) -> Adapter:
    """PEFT's "linear": A = sum sign_i c_i A_i, B = sum c_i B_i, c_i = sqrt|w_i s_i|; rank r, cross terms."""
    checked, ws = _check_adapters(adapters, weights)
    ranks = {a.A.shape[0] for a in checked}
    if len(ranks) != 1:
        raise ValueError(f"linear needs adapters of one rank (PEFT too), got ranks {sorted(ranks)}")
    products = [w * a.scaling for a, w in zip(checked, ws, strict=True)]
    c_B = [math.sqrt(abs(p)) for p in products]  # the sign goes on one side only, or it would cancel
    c_A = [c if p >= 0 else -c for c, p in zip(c_B, products, strict=True)]
    A = _weighted_sum(torch.stack([a.A for a in checked]), c_A)  # (n, r, in) -> (r, in)
    B = _weighted_sum(torch.stack([a.B for a in checked]), c_B)  # (n, out, r) -> (out, r)
    return Adapter(A, B, 1.0)  # PEFT gives the merged adapter lora_alpha = r: scaling 1


def svd(adapters: Sequence[AdapterLike], weights: Weights, rank: int) -> Adapter:
    """PEFT's "svd": the exact sum cut to `rank` singular directions; B = U_k S_k, A = V_k^T, scaling 1."""
    return from_delta(exact(adapters, weights), rank)


def from_delta(merged_delta: Tensor, rank: int) -> Adapter:
    """The best rank-`rank` adapter for any (out, in) delta, by SVD (Eckart-Young)."""
    if merged_delta.dim() != 2:
        raise ValueError(f"a delta is an (out, in) matrix, got shape {tuple(merged_delta.shape)}")
    if not 1 <= rank <= min(merged_delta.shape):
        raise ValueError(f"rank must lie in [1, {min(merged_delta.shape)}] for a {tuple(merged_delta.shape)} delta, got {rank}")
    U, S, Vh = torch.linalg.svd(merged_delta, full_matrices=False)  # (out, m), (m,), (m, in); m = min(out, in)
    B = U[:, :rank] * S[:rank]  # (out, k): U_k @ diag(S_k)
    A = Vh[:rank, :]  # (k, in)
    return Adapter(A, B, 1.0)


# ---------------------------------------------------------------------------------------------------------
# sparsifying merges on full deltas (task vectors): TIES and DARE


def trim(task: Tensor, density: float) -> Tensor:
    """Keep the int(density * numel) entries of largest magnitude, zero the rest (PEFT's magnitude pruning)."""
    _check_density(density)
    if density == 1.0:
        return task
    mask = torch.zeros_like(task).reshape(-1)  # (numel,)
    k = int(density * task.numel())
    top = torch.topk(task.abs().reshape(-1), k=k, largest=True)
    mask[top[1]] = 1
    return task * mask.reshape(task.shape)


def drop(task: Tensor, density: float, generator: torch.Generator | None = None, rescale: bool = True) -> Tensor:
    """Keep each entry with probability density (a Bernoulli mask), survivors divided by density if rescale."""
    _check_density(density)
    if density == 1.0:  # PEFT returns the tensor untouched and draws nothing
        return task
    mask = torch.bernoulli(torch.full_like(task, density), generator=generator)  # 1 = kept
    kept = task * mask
    return kept / density if rescale else kept


def majority_sign_mask(stacked: Tensor) -> Tensor:
    """(n, ...) bool: entries whose sign agrees with the sign of the sum over n ("total"; ties go to +)."""
    elected = torch.where(stacked.sum(dim=0) >= 0, 1, -1)  # (...): the sign each entry keeps
    return stacked.sign() == elected  # zeros (trimmed or dropped) agree with nothing


def _combine(stacked: Tensor, weights: list[float], elect_sign: bool) -> Tensor:
    """Weighted sum of (n, ...) sparse tasks, or PEFT's weighted disjoint mean of the sign-agreeing ones."""
    if not elect_sign:
        return _weighted_sum(stacked, weights)
    agree = majority_sign_mask(stacked)  # (n, ...): elected from the unweighted values, as PEFT does
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    weighted = stacked * w.view(w.shape + (1,) * (stacked.dim() - 1))  # (n, ...)
    total = (weighted * agree).sum(dim=0)  # (...)
    return total / torch.clamp(agree.sum(dim=0), min=1.0)  # divided by how many agree, not by their weights


def ties(deltas: Sequence[Tensor], weights: Weights, density: float, elect_sign: bool = True) -> Tensor:
    """TIES: trim each delta to its top `density` by magnitude, elect signs, weighted disjoint mean (PEFT's).

    PEFT's weighted variant: the sign is elected from the summed *unweighted* trimmed values ("total"), and
    each entry is sum_i w_i t_i over the agreeing tasks divided by their count. With all weights 1 this is
    the paper's disjoint mean (lambda = 1). elect_sign=False skips election and mean: PEFT's magnitude_prune.
    """
    _check_density(density)
    stacked, ws = _check_deltas(deltas, weights)  # (n, out, in)
    trimmed = torch.stack([trim(t, density) for t in stacked])  # (n, out, in), int(density * numel) kept each
    return _combine(trimmed, ws, elect_sign)


def dare(
    deltas: Sequence[Tensor],
    weights: Weights,
    density: float,
    generator: torch.Generator | int | None = None,
    rescale: bool = True,
    elect_sign: bool = False,
) -> Tensor:
    """DARE: drop entries with probability 1 - density, rescale by 1/density, weighted sum (PEFT's dare_linear).

    generator: a torch.Generator, a seed for a fresh one, or None for torch's global generator (what PEFT
    uses: torch.manual_seed(s) before PEFT's call equals generator=s here). One Bernoulli mask per delta,
    drawn in order. elect_sign=True adds TIES' election and disjoint mean: PEFT's dare_ties.
    """
    _check_density(density)
    stacked, ws = _check_deltas(deltas, weights)  # (n, out, in)
    if isinstance(generator, int):
        generator = torch.Generator(device=stacked.device).manual_seed(generator)
    dropped = torch.stack([drop(t, density, generator, rescale) for t in stacked])  # (n, out, in)
    return _combine(dropped, ws, elect_sign)
