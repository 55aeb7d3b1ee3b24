"""GRPO's outer loop: sample a group of completions per prompt, score them, take one policy-gradient step.

The formulas live in nanolm.adapt.grpo; this is the loop around them (what TRL's GRPOTrainer does in
`_generate_and_score_completions` and `training_step`), small enough to read in one sitting:

    for each step:
        pick P prompts; for each, sample G completions at temperature > 0      (the group)
        reward each completion (a checker, a reward model, a sum of both)      (G rewards per prompt)
        A = group-normalised rewards                                           (grpo.group_advantages)
        log-probs of the sampled tokens under the policy (with gradient) and the frozen reference
        loss = grpo.grpo_loss(...), one optimizer step                         (pi_old = pi: ratio 1)

Completions are padded to max_new with the stop token and masked after the first one (it is trained:
the model must learn to stop). Prompts of one step may differ in length: each group is run on its own,
then the (G, max_new) blocks are stacked, so every loss type sees the whole batch as TRL would.

A group's reward function gets a `Group` (prompt ids, completion ids, mask, decoded texts, the prompt's
target) and returns G rewards: a checker compares texts with the target, a reward model reads the ids.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from . import grpo
from .dpo import token_logprobs
from .finetune import record


class Group(NamedTuple):
    prompt_ids: list[int]
    completions: torch.Tensor  # (G, max_new) sampled ids, the stop token after the end
    mask: torch.Tensor  # (G, max_new) 1 up to and including the first stop token
    texts: list[str]  # each completion decoded, the stop token and what follows cut
    target: Any  # what the prompt's reward needs (the problem, the answer...)


RewardFn = Callable[[Group], Sequence[float]]


@dataclass
class Settings:
    group_size: int = 8  # G completions per prompt
    prompts_per_step: int = 4  # P prompts per step: a batch of P * G completions
    max_new: int = 16  # completion tokens at most
    temperature: float = 1.0
    lr: float = 1e-4
    beta: float = 0.04  # weight of the k3 KL to the reference (0: no reference needed)
    loss_type: str = "grpo"  # or "bnpo", "dr_grpo" (see nanolm.adapt.grpo)
    epsilon: float = 0.2
    scale: bool | str = True  # divide advantages by the group's std (Dr. GRPO: False)


@torch.no_grad()
def sample_group(model: nn.Module, prompt_ids: Sequence[int], s: Settings, stop_id: int,
                 decode: Callable[[list[int]], str], target: Any = None,
                 generator: torch.Generator | None = None) -> Group:
    """G completions of one prompt, padded to max_new with stop_id, their mask and texts."""
    device = next(model.parameters()).device
    idx = torch.tensor([list(prompt_ids)] * s.group_size, device=device)
    out = model.generate(idx, s.max_new, temperature=s.temperature, generator=generator, stop={stop_id})
    completions = torch.full((s.group_size, s.max_new), stop_id, dtype=torch.long, device=device)
    completions[:, : out.size(1) - idx.size(1)] = out[:, idx.size(1):]
    mask = grpo.completion_mask(completions, stop_id)
    completions = completions.masked_fill(mask == 0, stop_id)  # rows that stopped early kept sampling: clear it
    texts = [decode([t for t in row[: int(m.sum())].tolist() if t != stop_id]) for row, m in zip(completions, mask, strict=True)]
    return Group(list(prompt_ids), completions, mask, texts, target)


def completion_logprobs(model: nn.Module, group: Group) -> torch.Tensor:
    """log pi(token) of each sampled completion token: (G, max_new), float32, with gradient if the model has it."""
    prompt = torch.tensor(group.prompt_ids, device=group.completions.device).expand(group.completions.size(0), -1)
    logits, _ = model(torch.cat([prompt, group.completions], dim=1))
    P = prompt.size(1)
    return token_logprobs(logits[:, P - 1 : -1], group.completions)


def step(model: nn.Module, ref: nn.Module | None, optimizer: torch.optim.Optimizer, groups: Sequence[Group],
         reward_fn: RewardFn, s: Settings) -> dict[str, float]:
    """Reward the groups, then one GRPO update of model; returns the step's statistics."""
    rewards = torch.tensor([float(r) for g in groups for r in reward_fn(g)])  # (P * G,)
    if rewards.numel() != len(groups) * s.group_size:
        raise ValueError(f"the reward function must return {s.group_size} rewards per group")
    advantages = grpo.group_advantages(rewards, s.group_size, scale=s.scale)
    zero = grpo.zero_variance_groups(rewards, s.group_size)
    model.train()
    logp = torch.cat([completion_logprobs(model, g) for g in groups])  # (P * G, max_new)
    ref_logp = None
    if s.beta:
        with torch.no_grad():
            ref_logp = torch.cat([completion_logprobs(ref, g) for g in groups])
    mask = torch.cat([g.mask for g in groups]).float()
    loss, stats = grpo.grpo_loss(logp, None, ref_logp, advantages.to(logp.device), mask, beta=s.beta,
                                 loss_type=s.loss_type, epsilon_low=s.epsilon, epsilon_high=s.epsilon)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"reward": rewards.mean().item(), "zero_variance": len(zero) / len(groups), "loss": loss.item(),
            "kl": stats.get("kl", 0.0), "length": mask.sum(1).mean().item()}


def train(model: nn.Module, ref: nn.Module | None, prompts: Sequence[tuple[Sequence[int], Any]],
          reward_fn: RewardFn, *, steps: int, s: Settings, stop_id: int, decode: Callable[[list[int]], str],
          seed: int = 0, log_every: int = 0) -> dict[str, list[float]]:
    """`steps` GRPO steps on prompts drawn at random (prompt ids, target); the history of every statistic."""
    if steps < 1 or not prompts:
        raise ValueError(f"need steps >= 1 and at least one prompt, got {steps} and {len(prompts)}")
    if s.beta and ref is None:
        raise ValueError(f"beta={s.beta} needs a frozen reference model (or set beta=0)")
    rng, gen = random.Random(seed), torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr, weight_decay=0.0)
    history: dict[str, list[float]] = {}
    for k in range(1, steps + 1):
        batch = rng.sample(list(prompts), min(s.prompts_per_step, len(prompts)))
        groups = [sample_group(model, ids, s, stop_id, decode, target, gen) for ids, target in batch]
        record(history, step(model, ref, optimizer, groups, reward_fn, s), k, steps, log_every,
               lambda h: f"reward {h['reward'][-1]:.2f} | zero-variance groups "
                         f"{h['zero_variance'][-1]:.0%} | kl {h['kl'][-1]:.3f}")
    model.eval()
    return history
