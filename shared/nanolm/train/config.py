"""What a training run is told: TrainConfig, the BatchSource protocol, and the precision it runs in."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

SCHEDULES = ("cosine", "wsd", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@runtime_checkable
class BatchSource(Protocol):
    """Where batches come from: the training loop only needs these three methods."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) pair, both (B, T) int64 token ids (y is x shifted by one)."""
        ...

    def state_dict(self) -> dict:
        """The position in the data, as JSON-able values (ints, strings, lists)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Go back to a position returned by state_dict()."""
        ...


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained (saved in every checkpoint)."""

    max_steps: int = 1000
    batch_size: int = 16  # sequences per micro-batch (documentation: the source makes the batches)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 6e-4  # peak learning rate
    min_lr: float = 6e-5  # floor of the decay
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine", "wsd" (warmup-stable-decay) or "constant"
    decay_fraction: float = 0.2  # wsd: the last fraction of max_steps decays linearly to min_lr
    weight_decay: float = 0.1  # on matrices (dim >= 2) only
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    eval_every: int = 100  # steps between evaluations; 0 turns them off
    eval_batches: int = 10  # batches per validation source and evaluation
    log_every: int = 10  # steps between progress lines
    precision: str = "auto"  # "auto", "fp32", "bf16", "fp16"
    compile: bool = False  # torch.compile the model's forward
    checkpoint_every: int = 0  # steps between checkpoints into checkpoint_dir/last; 0: never
    checkpoint_dir: str | None = None
    seed: int | None = 0  # seeds python, numpy and torch when the Trainer is made (None: leave them)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_steps < 1 or self.grad_accum < 1 or self.warmup_steps < 0:
            raise ValueError("max_steps and grad_accum must be >= 1 and warmup_steps >= 0")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("checkpoint_every needs a checkpoint_dir")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'auto' -> bf16 on a bf16 CUDA GPU, fp16 on an older one, fp32 on CPU/MPS; others pass through."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"  # CPU: bf16 autocast measured slower than fp32 here, and less exact
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
