"""Profiles (smoke / cpu / gpu): how big each notebook runs, picked in one place."""

from __future__ import annotations

import os
from types import SimpleNamespace

PROFILES = ("smoke", "cpu", "gpu")


def resolve(profile: str | None = "auto") -> str:
    """Turn 'auto' (or None) into a concrete profile: 'gpu' when CUDA is available, else 'cpu'.

    Apple MPS counts as cpu-sized: the sizes of the cpu profile, run on the MPS device.
    """
    name = (profile or "auto").strip().lower()
    if name == "auto":
        name = os.environ.get("NANOLM_PROFILE", "auto").strip().lower()
    if name == "auto":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PROFILES:
        raise ValueError(
            f"Unknown profile {profile!r}. Use one of: auto, {', '.join(PROFILES)} "
            "(set PROFILE in the notebook's parameters cell, or NANOLM_PROFILE)."
        )
    return name


def check(profile: str) -> str:
    """`profile` if it is one of smoke/cpu/gpu; a profile names a folder, so nothing else may pass."""
    if not isinstance(profile, str) or profile not in PROFILES:
        raise ValueError(
            f"Unknown profile {profile!r}: artifacts and results live under checkpoints/<profile>/, so use one "
            f"of {', '.join(PROFILES)} (profiles.resolve('auto') picks one)."
        )
    return profile


def sizes(table: dict[str, dict], profile: str) -> SimpleNamespace:
    """Return the row of a notebook's size table for `profile`, as attributes (cfg.steps)."""
    missing = [p for p in PROFILES if p not in table]
    if missing:
        raise ValueError(f"size table lacks the profile(s) {missing}; give every profile a row")
    keys = set(table[PROFILES[0]])
    for p in PROFILES[1:]:
        if set(table[p]) != keys:
            raise ValueError(f"profile {p!r} has keys {sorted(table[p])}, expected {sorted(keys)}")
    return SimpleNamespace(**table[profile])


def show(table: dict[str, dict], profile: str) -> str:
    """A plain-text table of the sizes, one column per profile, the active one marked with *."""
    keys = list(table[PROFILES[0]])
    heads = [f"{p}*" if p == profile else p for p in PROFILES]
    rows = [["size", *heads]] + [[k, *(str(table[p][k]) for p in PROFILES)] for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
