"""How sure is a benchmark number? Intervals for accuracies, and the centered average of nanochat's CORE.

A model that answers 124 of 300 questions right has an accuracy of 41.3%, but a second draw of 300
questions would give a different number. The interval says how far: with 95% confidence the accuracy on
the whole population of such questions lies in

    wilson(124, 300)            -> (0.359, 0.470)       "41.3% [35.9, 47.0] (n=300)"

The Wilson score interval (Wilson 1927) inverts the normal test of a proportion instead of putting
p ± z·sqrt(p(1-p)/n) around the estimate, so it never leaves [0, 1] and stays honest at 0 of 10
(upper bound 27.8%, where the textbook formula gives the empty interval [0, 0]). Its width shrinks like
1/sqrt(n): four times the questions halve the interval.

`bootstrap` makes an interval for any statistic (a mean score, a median length): resample the values
with replacement, compute the statistic each time, and read the middle 95% of those results (the
percentile bootstrap, Efron 1979). Seeded, so the same values give the same interval every run. For a
mean of 0/1 values and a large n it agrees with Wilson.

Benchmarks differ in how easy they are to guess: 25% on a four-choice test is chance, 25% on a
free-answer test is not. nanochat's CORE score (after DCLM) centers each task first,

    centered(acc, chance) = (acc - chance) / (1 - chance)      0 at chance, 1 at a perfect score

with chance = chance_of([n choices of each item]) = mean of 1/n_i (0 for a task without choices), and
averages the centered accuracies over the tasks (`core_average`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal: a two-sided 95% interval


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (lo, hi) of a proportion successes/n; z=1.96 gives 95%."""
    if n <= 0:
        raise ValueError(f"an interval needs at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo, hi = max(0.0, center - half), min(1.0, center + half)
    return (0.0 if successes == 0 else lo), (1.0 if successes == n else hi)  # exact at the ends


def bootstrap(values: Sequence[float], stat: Callable = np.mean, n_resamples: int = 2000, seed: int = 0,
              level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval (lo, hi) of stat(values): seeded, so the same inputs give the same."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-D sequence of values, got shape {x.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    results = np.empty(n_resamples)
    for i in range(n_resamples):  # one resample at a time: memory stays O(n) for any n_resamples
        results[i] = stat(x[rng.integers(0, len(x), size=len(x))])
    tail = (1 - level) / 2
    lo, hi = np.quantile(results, [tail, 1 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Accuracy:
    """An accuracy with its count and 95% Wilson interval."""

    value: float  # correct / n
    n: int
    correct: int
    lo: float
    hi: float

    def as_dict(self) -> dict:
        """The fields as a plain dict (for JSON metrics)."""
        return {"value": self.value, "n": self.n, "correct": self.correct, "lo": self.lo, "hi": self.hi}


def accuracy(correct: Sequence[bool], z: float = Z95) -> Accuracy:
    """The accuracy of a list of right/wrong outcomes, with its Wilson interval."""
    n = len(correct)
    k = int(sum(bool(c) for c in correct))
    lo, hi = wilson(k, n, z)
    return Accuracy(value=k / n, n=n, correct=k, lo=lo, hi=hi)


def fmt_interval(acc: Accuracy) -> str:
    """An accuracy as text, e.g. "41.3% [35.9, 47.0] (n=300)"."""
    return f"{100 * acc.value:.1f}% [{100 * acc.lo:.1f}, {100 * acc.hi:.1f}] (n={acc.n})"


def chance_of(n_choices_per_item: Sequence[int]) -> float:
    """The accuracy of guessing uniformly: the mean of 1/n_i over the items' numbers of choices."""
    if len(n_choices_per_item) == 0:
        raise ValueError("chance_of needs at least one item")
    if any(k < 1 for k in n_choices_per_item):
        raise ValueError(f"every item needs at least one choice, got {min(n_choices_per_item)}")
    return float(np.mean([1.0 / k for k in n_choices_per_item]))


def centered(acc: float, chance: float) -> float:
    """(acc - chance) / (1 - chance): 0 at chance, 1 at a perfect score, below 0 when worse than guessing."""
    if not 0 <= chance < 1:
        raise ValueError(f"chance must lie in [0, 1), got {chance}")
    return (acc - chance) / (1 - chance)


def core_average(centered_by_task: dict[str, float]) -> float:
    """nanochat's CORE: the mean of the tasks' centered accuracies, each task weighing the same."""
    if not centered_by_task:
        raise ValueError("core_average needs at least one task")
    return float(np.mean(list(centered_by_task.values())))
