"""Device choice, seeding and thread counts."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch


def pick_device() -> torch.device:
    """CUDA if available, then Apple MPS, else CPU; NANOLM_DEVICE overrides (e.g. 'cpu')."""
    forced = os.environ.get("NANOLM_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices), and pick deterministic cuDNN kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators
    torch.backends.cudnn.deterministic = True  # cheap: only slows a few conv kernels
    torch.backends.cudnn.benchmark = False


def describe(device: torch.device) -> str:
    """One line naming the device, e.g. 'cpu (2 threads), torch 2.13.0'."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = f"cpu ({torch.get_num_threads()} threads)"
    else:
        name = device.type
    return f"{name}, torch {torch.__version__.split('+')[0]}"


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the block on n CPU threads, then restore the previous count (None: leave it as it is).

    Threads are a per-task choice: on a 2-core machine a tiny model or token-by-token decoding runs
    faster on one thread (splitting a small matrix product costs more than it saves), while large
    batched matrix products gain from two. Measure, then choose per task, not once per notebook.
    """
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
