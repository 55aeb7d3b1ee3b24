"""Learning-rate schedules: pure functions of the step, so a resumed run needs only the step number."""

from __future__ import annotations

import math

from .config import TrainConfig


def cosine_lr(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup lr*(step+1)/(warmup+1), then cosine from lr down to min_lr at max_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def wsd_lr(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int,
           decay_fraction: float = 0.2) -> float:
    """Warmup-stable-decay: warmup, flat at lr, then linear to min_lr over the last decay_fraction."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, round(decay_fraction * max_steps))
    decay_start = max(warmup_steps, max_steps - decay_steps)
    if step < decay_start:
        return lr
    progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
    return lr + (min_lr - lr) * progress


def constant_lr(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warmup, then lr forever."""
    return lr * (step + 1) / (warmup_steps + 1) if step < warmup_steps else lr


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of (0-based) optimizer step `step` under cfg's schedule."""
    if cfg.schedule == "cosine":
        return cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
    if cfg.schedule == "wsd":
        return wsd_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps, cfg.decay_fraction)
    return constant_lr(step, cfg.lr, cfg.warmup_steps)
