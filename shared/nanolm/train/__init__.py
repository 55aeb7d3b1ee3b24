"""train: the training loop, learning-rate schedules, AdamW groups, checkpoints and FLOP counting.

It stands on core, text and model. Its modules, each one idea: config (TrainConfig, BatchSource,
precision), schedules, optimizer, checkpoint, loop (Trainer), throughput, threads (ThreadWatch),
flops. The names a notebook needs are gathered here, so `from nanolm import train` then
`train.Trainer(...)` reads as it should; each stays defined in its own module.
"""

from .checkpoint import (
    CheckpointError,
    checkpoint_info,
    get_rng_state,
    last_checkpoint,
    set_rng_state,
)
from .config import PRECISIONS, SCHEDULES, BatchSource, TrainConfig, autocast, resolve_precision
from .loop import Trainer, human, progress_line
from .optimizer import clip_grad_norm, grad_norm, make_optimizer, param_groups, split_decay
from .schedules import constant_lr, cosine_lr, lr_at, wsd_lr
from .threads import ThreadWatch
from .throughput import compare_throughput, minimal_loop

__all__ = [
    "PRECISIONS", "SCHEDULES", "BatchSource", "CheckpointError", "ThreadWatch", "TrainConfig", "Trainer", "autocast",
    "checkpoint_info", "clip_grad_norm", "compare_throughput", "constant_lr", "cosine_lr",
    "get_rng_state", "grad_norm", "human", "last_checkpoint", "lr_at", "make_optimizer", "minimal_loop",
    "param_groups", "progress_line", "resolve_precision", "set_rng_state", "split_decay", "wsd_lr",
]
