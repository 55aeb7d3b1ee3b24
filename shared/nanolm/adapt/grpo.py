"""Group Relative Policy Optimization: reinforcement learning from a reward, with the group as the baseline.

GRPO (Shao et al. 2024, DeepSeekMath, section 4) is PPO without the value network. For each prompt q it
samples a group of G completions o_1..o_G from the current policy (pi_old, the weights that sampled them),
scores each with a reward r_i (a checker, a unit test, a reward model), and compares each completion with
its own group: the baseline is the group's mean reward, so no critic has to learn it.

    advantage   A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)         the same for every token of o_i

A group whose completions all got the same reward (all right, all wrong) has A = 0 everywhere: it teaches
nothing (`zero_variance_groups` lists them; TRL logs their share as frac_reward_zero_std). std is the
unbiased (Bessel) one, eps = 1e-4, as in TRL; Dr. GRPO (Liu et al. 2025) drops the division (scale=False),
since it weighs easy and hard questions unequally.

Each token t of o_i gets PPO's clipped surrogate, with the probability ratio to the sampling policy

    ratio_it = exp(log pi(o_it) - log pi_old(o_it))
    L_it     = -min(ratio_it A_i, clip(ratio_it, 1 - eps_low, 1 + eps_high) A_i) + beta KL_it

where clipping stops the update once the ratio has moved far enough in the direction A asks for (there the
gradient is zero). The KL to the frozen reference pi_ref (the model before RL) is estimated per token on the
sampled tokens with Schulman's k3 estimator (DeepSeekMath eq. 4),

    KL_it = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1          >= 0, and unbiased for KL(pi || pi_ref)

since E_pi[pi_ref / pi] = 1. Only completion tokens count (mask (B, T): 1 up to and including the first
eos). The normalisation is where the variants differ (TRL 1.16's GRPOTrainer._compute_loss names):

    grpo     mean over each sequence's tokens, then mean over sequences      DeepSeekMath eq. 3
    bnpo     sum over all tokens / number of tokens in the batch
    dr_grpo  sum over all tokens / (B * max_completion_length)                Dr. GRPO: no length bias

TRL 1.16 also has "dapo" (its default: bnpo normalised by the tokens of the whole generation batch across
processes and accumulation steps; on one batch it is bnpo), "luspo", "cispo", "sapo" and "vespo", and options
(importance_sampling_level="sequence" for GSPO, delta two-sided clipping, top_entropy_quantile, vLLM
importance-sampling correction, an entropy bonus) that are left out here. With one optimisation step per
batch, pi_old = pi: old_logp=None uses logp.detach(), so ratio = 1 while the gradient is A * grad log pi.

What GRPO needs from the notebook's sampling loop is here in pieces: `repeat_prompts` (each prompt G times in
a row, as TRL's sampler orders them), `completion_mask` (stop at the first eos), `token_logprobs` (from
.dpo: the log-prob of each sampled token, float32 at least), then `group_advantages` and `grpo_loss`.

Shapes: N = B completions (B / G prompts), T completion tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

from .dpo import token_logprobs

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
SCALES = {True: "group", False: "none", "group": "group", "batch": "batch", "none": "none"}
Prompt = TypeVar("Prompt")

__all__ = ["LOSS_TYPES", "completion_mask", "group_advantages", "grpo_loss", "k3_kl", "repeat_prompts",
           "token_logprobs", "zero_variance_groups"]


def repeat_prompts(prompts: Sequence[Prompt], group_size: int) -> list[Prompt]:
    """Each prompt group_size times in a row: [p0, p0, ..., p1, p1, ...], so group g is rows g*G..(g+1)*G-1."""
    if group_size < 1 or not prompts:
        raise ValueError(f"repeat_prompts needs prompts and group_size >= 1, got {len(prompts)} and {group_size}")
    return [p for p in prompts for _ in range(group_size)]


def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 on each completion's tokens up to and including its first eos, 0 after: (B, T) ids -> (B, T) int."""
    if completion_ids.dim() != 2:
        raise ValueError(f"completion_ids must be (B, T), got {tuple(completion_ids.shape)}")
    B, T = completion_ids.shape
    is_eos = completion_ids == eos_id
    first = torch.full((B,), T, dtype=torch.long, device=completion_ids.device)  # no eos: keep all T
    has = is_eos.any(1)
    first[has] = is_eos.int().argmax(1)[has]
    return (torch.arange(T, device=completion_ids.device).expand(B, T) <= first.unsqueeze(1)).int()


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) rewards -> (N / G, G), checked."""
    if rewards.dim() != 1 or group_size < 1 or len(rewards) % group_size:
        raise ValueError(f"rewards must be (N,) with N a multiple of group_size >= 1, got "
                         f"{tuple(rewards.shape)} and group_size {group_size}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards must be finite (score every completion; an unscorable one needs a reward too)")
    return rewards.view(-1, group_size)


def _std(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased (Bessel) std as TRL's nanstd; zeros where there is a single value."""
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        return torch.zeros_like(x.mean() if dim is None else x.mean(dim))
    mean = x.mean() if dim is None else x.mean(dim, keepdim=True)
    var = ((x - mean) ** 2).mean() if dim is None else ((x - mean) ** 2).mean(dim)
    return (var * (n / (n - 1))).sqrt()


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: bool | str = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - group mean) / (std + eps): (N,) -> (N,). scale: True/"group", "batch" (one std), False/"none"."""
    if scale not in SCALES:
        raise ValueError(f"scale must be True, False, 'group', 'batch' or 'none', got {scale!r}")
    grouped = _grouped(rewards, group_size)  # (N / G, G)
    advantages = (grouped - grouped.mean(1, keepdim=True)).flatten()
    mode = SCALES[scale]
    if mode == "group":
        advantages = advantages / (_std(grouped, 1).repeat_interleave(group_size) + eps)
    elif mode == "batch":
        advantages = advantages / (_std(rewards) + eps)
    return advantages


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> list[int]:
    """The groups whose rewards are all equal (std ~ 0, TRL's isclose test): their advantages are all 0."""
    std = _std(_grouped(rewards, group_size), 1)
    return torch.isclose(std, torch.zeros_like(std)).nonzero().flatten().tolist()


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 per token: exp(ref - logp) - (ref - logp) - 1 (>= 0, 0 where equal); any equal shapes."""
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} must have one shape")
    return torch.exp(ref_logp - logp) - (ref_logp - logp) - 1


def _check_grpo(logp, old_logp, ref_logp, advantages, mask, beta, loss_type, epsilon_low, epsilon_high) -> None:
    """Shapes and settings of grpo_loss, with messages that say what to pass."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if logp.dim() != 2 or mask.shape != logp.shape:
        raise ValueError(f"logp and mask must be (B, T) of one shape, got {tuple(logp.shape)} and {tuple(mask.shape)}")
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} must be (B, T) like logp {tuple(logp.shape)}, got {tuple(t.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be (B,) = ({logp.shape[0]},), got {tuple(advantages.shape)}")
    if beta != 0.0 and ref_logp is None:
        raise ValueError(f"beta={beta} needs ref_logp, the frozen reference's log-probs (or set beta=0)")
    if epsilon_low < 0 or epsilon_high < 0:
        raise ValueError(f"epsilon_low and epsilon_high must be >= 0, got {epsilon_low} and {epsilon_high}")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of x over the mask's tokens (0 if none), as TRL logs its metrics."""
    return ((x * mask).sum() / mask.sum().clamp(min=1.0)).item()


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, epsilon_low: float = 0.2,
              epsilon_high: float = 0.2, beta: float = 0.04, loss_type: str = "grpo",
              max_completion_length: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss of B completions (scalar) and its stats: kl (masked mean) and the clipped shares.

    logp (B, T): the policy's log-probs of the sampled tokens (with gradient); old_logp: the sampling policy's
    (None: logp.detach(), one step per batch); ref_logp: the frozen reference's (None only with beta = 0);
    advantages (B,); mask (B, T) 1 on completion tokens. max_completion_length: dr_grpo's constant (None: T).
    The stats carry TRL's names: kl, clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean.
    """
    _check_grpo(logp, old_logp, ref_logp, advantages, mask, beta, loss_type, epsilon_low, epsilon_high)
    old_logp = logp.detach() if old_logp is None else old_logp
    A = advantages.unsqueeze(1)  # (B, 1): one advantage for every token of a completion
    ratio = torch.exp(logp - old_logp)  # (B, T)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * A, clipped * A)
    stats = {}
    if beta != 0.0:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = _masked_mean(kl.detach(), mask)
    if loss_type == "grpo":  # each sequence's mean over its tokens, then the mean over sequences
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":  # every token of the batch weighs the same
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    else:  # dr_grpo: a constant denominator, so a token's weight depends on no length
        loss = (per_token * mask).sum() / (per_token.size(0) * (max_completion_length or logp.shape[1]))
    low = (ratio < 1 - epsilon_low) & (A < 0)  # clipped where the ratio went far enough the way A asks
    high = (ratio > 1 + epsilon_high) & (A > 0)
    stats.update({"clip_ratio/low_mean": _masked_mean(low.float(), mask),
                  "clip_ratio/high_mean": _masked_mean(high.float(), mask),
                  "clip_ratio/region_mean": _masked_mean((low | high).float(), mask)})
    return loss, stats
