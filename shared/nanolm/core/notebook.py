"""The setup every notebook starts with, in one call: profile, sizes, seed, plot style, device, threads.

    PROFILE, cfg, DEVICE = notebook.setup(NOTEBOOK, PROFILE, SEED, SIZES)

resolves the profile ("auto" -> gpu or cpu), picks that profile's row of the notebook's size table,
seeds Python, NumPy and torch, applies the course's plot style, picks the device and prints two
lines a reader can check: what runs where, and the size table with the active column starred.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from . import device as devices
from . import plotting, profiles


def setup(notebook: str, profile: str, seed: int, sizes: dict[str, dict], *, threads: int | None = None,
          dtype: torch.dtype | None = None, use_device: bool = True) -> tuple[str, SimpleNamespace, torch.device]:
    """-> (the concrete profile, its sizes as attributes, the device); prints the setup.

    threads: the CPU thread count for the notebook's default (None keeps torch's; a cell that knows
    better uses `device.threads(n)` around its work). dtype: a default dtype (float64 for notebooks that
    compare many digits). use_device=False keeps everything on the CPU (notebooks that teach on it).
    """
    profile = profiles.resolve(profile)
    cfg = profiles.sizes(sizes, profile)
    devices.seed_everything(seed)
    plotting.use_style()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    dev = devices.pick_device() if use_device else torch.device("cpu")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    print(f"{notebook} | profile {profile} | seed {seed} | {devices.describe(dev)}")
    print(profiles.show(sizes, profile))
    return profile, cfg, dev


TOLERANCE_CLASSES = (1e-12, 1e-9, 1e-6, 1e-3)  # float64 round-off, loose float64, float32, "close"


def within(diff: float) -> str:
    """A measured difference as the smallest tolerance class it falls under: "< 1e-12", ..., or ">= 1e-3 (X)".

    A checked cell prints this rather than the raw value (round-off differs in the last bits between machines)
    or a literal True (which no regression changes): a parity that loses three digits changes the printed class.
    """
    if isinstance(diff, torch.Tensor):
        diff = diff.detach()  # a difference of tensors that still track gradients
    diff = abs(float(diff))
    if diff != diff:  # NaN
        return "nan"
    for bound in TOLERANCE_CLASSES:
        if diff < bound:
            return f"< {bound:.0e}"
    return f">= {TOLERANCE_CLASSES[-1]:.0e} ({diff:.2e})"
