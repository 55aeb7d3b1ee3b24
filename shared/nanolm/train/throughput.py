"""Is the training loop slow? Tokens/s of the Trainer against a bare loop on the same model and data."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from torch import nn

from .config import BatchSource, TrainConfig, autocast, resolve_precision
from .loop import Trainer
from .optimizer import make_optimizer


def minimal_loop(model: nn.Module, source: BatchSource, steps: int, cfg: TrainConfig,
                 device: torch.device | str = "cpu") -> float:
    """Tokens/s of a bare loop (forward, backward, AdamW step, same precision) over `steps` steps."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = torch.device(device)
    model.to(device).train()
    precision = resolve_precision(cfg.precision, device)
    opt = make_optimizer(model, cfg, device)
    tokens, last = 0, None
    t0 = time.perf_counter()
    for _ in range(steps):
        for _ in range(cfg.grad_accum):
            x, y = source.next_batch()
            x, y = x.to(device), y.to(device)
            with autocast(precision, device):
                _, loss = model(x, y)
            (loss / cfg.grad_accum).backward()
            tokens += x.numel()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = loss
    last.item()  # wait for the device
    return tokens / (time.perf_counter() - t0)


def compare_throughput(make_model: Callable[[], nn.Module], make_source: Callable[[], BatchSource],
                       cfg: TrainConfig, device: torch.device | str = "cpu", steps: int = 20,
                       warmup: int = 3, repeats: int = 2) -> dict[str, float]:
    """Tokens/s of Trainer.run vs minimal_loop on fresh copies of the same model (best of `repeats`).

    Both are timed from outside over `steps` steps after `warmup` steps (Trainer.run waits for the
    device before it returns, minimal_loop reads its last loss)."""
    if steps < 1 or warmup < 0 or repeats < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0 and repeats >= 1, got {steps}, {warmup}, {repeats}")
    run_cfg = dataclasses.replace(cfg, max_steps=warmup + steps, eval_every=0, checkpoint_every=0,
                                  log_every=warmup + steps, warmup_steps=0, seed=None)
    best_trainer, best_minimal = 0.0, 0.0
    for _ in range(repeats):
        trainer = Trainer(make_model(), run_cfg, make_source(), device=device, printer=None,
                          peak_flops_per_s=1.0)
        trainer.run(until_step=warmup)
        tokens, t0 = trainer.tokens_seen, time.perf_counter()
        trainer.run()
        best_trainer = max(best_trainer, (trainer.tokens_seen - tokens) / (time.perf_counter() - t0))
        model, source = make_model(), make_source()
        if warmup:
            minimal_loop(model, source, warmup, run_cfg, device)
        best_minimal = max(best_minimal, minimal_loop(model, source, steps, run_cfg, device))
    return {"trainer_tok_per_s": best_trainer, "minimal_tok_per_s": best_minimal,
            "ratio": best_trainer / best_minimal}
