"""Numerical gradients by central differences, and a checker with relative error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def numerical_grad(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, (f(x+eps) - f(x-eps)) / 2eps, one coordinate at a time.

    `x` must be a float64 array; it is changed in place during the call and restored.
    """
    if x.dtype != np.float64:
        raise TypeError(f"numerical_grad needs float64 input (got {x.dtype}); float32 loses the digits it measures")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)  # views into x and grad
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        f_plus = float(f(x))
        flat[i] = old - eps
        f_minus = float(f(x))
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|a| + |b|): 0 for equal arrays, ~1 for unrelated ones, scale-free."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    num = np.abs(a - b).max(initial=0.0)
    den = (np.abs(a) + np.abs(b)).max(initial=0.0)
    return 0.0 if den == 0 else float(num / den)


@dataclass
class GradCheck:
    """Result of comparing an analytic gradient with a numerical one."""

    ok: bool
    rel_error: float
    numeric: np.ndarray

    def __str__(self) -> str:
        return f"gradcheck {'passed' if self.ok else 'FAILED'}: relative error {self.rel_error:.1e}"


def check(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    analytic: np.ndarray,
    eps: float = 1e-6,
    tol: float = 1e-6,
) -> GradCheck:
    """Compare `analytic` (your gradient of f at x) with central differences; ok when rel_error < tol."""
    numeric = numerical_grad(f, x, eps)
    err = rel_error(analytic, numeric)
    return GradCheck(err < tol, err, numeric)
