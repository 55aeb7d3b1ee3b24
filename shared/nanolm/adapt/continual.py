"""Continual learning, measured: the accuracy matrix, what it says about forgetting, and replay.

A model learns tasks one after another, 0, 1, ..., T-1. After each stage i it is tested on every task,
old and future, and the scores fill one row of the accuracy matrix R (T, T):

    R[i][j] = accuracy on task j after training on tasks 0..i          (row = stage, column = task)

    stage \\ task    0     1     2
        0         R00   R01   R02      the diagonal: each task just after it was learned
        1         R10   R11   R12      below it: old tasks, later (did they survive?)
        2         R20   R21   R22      above it: future tasks, not yet trained (anything transferred?)

Every metric is a reading of this matrix (GEM, Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018):

    ACC   average_accuracy    mean of the last row: how good the final model is on everything
    BWT   backward_transfer   1/(T-1) sum_{j<T-1} (R[T-1][j] - R[j][j]): how the last model does on
                              each old task against just after learning it; negative = forgetting
    FWT   forward_transfer    1/(T-1) sum_{j>=1} (R[j-1][j] - b[j]): a task before its own training,
                              against a baseline b (accuracy at random init); positive = transfer
    F     forgetting          for each old task, the best it ever was (from the stage it was learned
                              on) minus where it ends: max_{l in j..T-2} R[l][j] - R[T-1][j], averaged

BWT compares with the diagonal, forgetting with the best row: a task that kept improving after its own
stage and then fell back shows a small BWT drop but its full loss in forgetting.

Replay is the oldest remedy: keep a few examples of every old task (`ReplayBuffer`, a uniform sample of
k per task) and replay them in every batch of the new task's training (`replay_batches`). Its cost is memory, counted by
`ReplayBuffer.memory_bytes` in the bytes the examples need, so that it can be set against EWC's
(nanolm.adapt.ewc) or an adapter library's.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .finetune import collate

# ----------------------------------------------------------------------------- the accuracy matrix


def _matrix(R, min_tasks: int = 1) -> np.ndarray:
    """R as a float64 (T, T) array, checked: square, at least min_tasks x min_tasks, finite."""
    a = np.asarray(R, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"the accuracy matrix R must be square (T, T), R[i][j] = accuracy on task j after "
                         f"training tasks 0..i; got shape {a.shape}")
    if a.shape[0] < min_tasks:
        raise ValueError(f"this metric needs at least {min_tasks} tasks (a {min_tasks}x{min_tasks} matrix), "
                         f"got {a.shape[0]}x{a.shape[1]}")
    if not np.isfinite(a).all():
        raise ValueError("the accuracy matrix R has NaN or infinite entries: fill every cell with a score")
    return a


def average_accuracy(R) -> float:
    """ACC: the mean of the last row, the final model's accuracy over all T tasks."""
    a = _matrix(R)
    return float(a[-1].mean())


def backward_transfer(R) -> float:
    """BWT: 1/(T-1) sum_{j<T-1} (R[T-1][j] - R[j][j]); negative means the old tasks were forgotten."""
    a = _matrix(R, 2)
    T = a.shape[0]
    return float(np.mean([a[T - 1, j] - a[j, j] for j in range(T - 1)]))


def forward_transfer(R, baseline: Sequence[float]) -> float:
    """FWT: 1/(T-1) sum_{j>=1} (R[j-1][j] - baseline[j]): each task just before it is trained, against
    its accuracy at random initialization (baseline, one number per task; baseline[0] is never used)."""
    a = _matrix(R, 2)
    b = np.asarray(baseline, dtype=np.float64)
    T = a.shape[0]
    if b.shape != (T,):
        raise ValueError(f"baseline needs one accuracy per task ({T}), got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError("baseline has NaN or infinite entries")
    return float(np.mean([a[j - 1, j] - b[j] for j in range(1, T)]))


def forgetting_per_task(R) -> list[float]:
    """For each old task j < T-1: max_{l in j..T-2} R[l][j] - R[T-1][j] (Chaudhry et al. 2018).

    Only stages from j on count: before its own stage a task was never learned, so it cannot be forgotten.
    """
    a = _matrix(R, 2)
    T = a.shape[0]
    return [float(a[j : T - 1, j].max() - a[T - 1, j]) for j in range(T - 1)]


def forgetting(R) -> float:
    """The mean of forgetting_per_task: how much, on average, an old task fell from its best."""
    return float(np.mean(forgetting_per_task(R)))


def forgetting_curve(R, j: int) -> list[float]:
    """Task j's accuracy from the stage it was learned on to the end: R[j][j], R[j+1][j], ..., R[T-1][j]."""
    a = _matrix(R)
    T = a.shape[0]
    if not 0 <= j < T:
        raise ValueError(f"task index j must be in 0..{T - 1}, got {j}")
    return [float(v) for v in a[j:, j]]


def summary(R, baseline: Sequence[float] | None = None) -> dict[str, float]:
    """{"acc", "bwt", "forgetting"} and, with a baseline, "fwt": every number of the matrix in one dict."""
    out = {"acc": average_accuracy(R), "bwt": backward_transfer(R)}
    if baseline is not None:
        out["fwt"] = forward_transfer(R, baseline)
    out["forgetting"] = forgetting(R)
    return out


# ----------------------------------------------------------------------------- replay


def _payload_bytes(item) -> int:
    """Bytes an example needs: 4 per int (int32), the UTF-8 bytes of a str, the sum over lists/tuples."""
    if isinstance(item, str):
        return len(item.encode("utf-8"))
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        return 4
    if isinstance(item, (list, tuple)):
        return sum(_payload_bytes(x) for x in item)
    raise ValueError(f"memory_bytes counts ints, strs and lists/tuples of them, got {type(item).__name__}; "
                     "store examples as Encoded (ids, labels) or (prompt, target) strings")


class ReplayBuffer:
    """A few examples of each finished task, kept to be mixed into the training of later ones.

    `add` keeps a uniform random sample of k examples of a task (seeded, so the same seed keeps the same
    examples, in their original order); adding a task again replaces its sample. Examples can be any
    objects: Encoded (ids, labels) pairs or (prompt, target) strings.

    `memory_bytes` is the payload a real buffer would need, not Python's object overhead: 4 bytes per
    integer (ids and labels as int32, so an Encoded pair of n tokens is 8n bytes) and the UTF-8 bytes of
    each string (a (prompt, target) pair is len(prompt) + len(target) bytes in ASCII).
    """

    def __init__(self) -> None:
        self._store: dict[str, list] = {}  # task -> its kept examples; dicts keep insertion (task) order

    def add(self, task: str, examples: Sequence, k: int, seed: int) -> None:
        """Keep a uniform sample of k of the examples for task (all of them when there are k or fewer)."""
        if k < 1:
            raise ValueError(f"k (examples kept per task) must be >= 1, got {k}")
        if not examples:
            raise ValueError(f"task {task!r}: add needs at least one example to keep, got none")
        n = len(examples)
        keep = sorted(random.Random(seed).sample(range(n), min(k, n)))  # sorted: the original order
        self._store[task] = [examples[i] for i in keep]

    def examples(self, exclude: str | None = None) -> list:
        """Every stored example, task by task in the order the tasks were added; exclude leaves one out."""
        return [x for task, kept in self._store.items() if task != exclude for x in kept]

    def groups(self, exclude: str | None = None) -> list[list]:
        """The kept examples task by task (for task-balanced replay)."""
        return [list(kept) for task, kept in self._store.items() if task != exclude]

    def tasks(self) -> list[str]:
        """The stored tasks, in the order they were first added."""
        return list(self._store)

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._store.values())

    def memory_bytes(self) -> int:
        """Bytes the stored examples need (4 per int, UTF-8 bytes per str): see the class docstring."""
        return sum(_payload_bytes(x) for kept in self._store.values() for x in kept)


def replay_batches(new: Sequence, old: Sequence[Sequence], ratio: float, batch_size: int,
                   seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches (x, y) of (ids, labels) pairs: a share `ratio` of each batch replayed, the rest new.

    A batch of B holds B * ratio replayed examples on average (the fraction is rounded up or down at random,
    so ratio 0.01 at B 32 replays one example in about every third batch). A replayed example picks an old
    task uniformly, then one of its kept examples: every old task gets the same share, however many
    examples it kept. ratio 0 or no old task: plain batches of the new task.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio is the replayed share of each batch, in [0, 1), got {ratio}")
    if not new or batch_size < 1:
        raise ValueError(f"replay_batches needs the new task's examples and batch_size >= 1, got "
                         f"{len(new)} and {batch_size}")
    old = [group for group in old if group]
    rng = random.Random(seed)
    while True:
        k = 0
        if old and ratio:
            k = int(batch_size * ratio)
            k += rng.random() < batch_size * ratio - k  # stochastic rounding keeps the mean exact
        batch = [rng.choice(rng.choice(old)) for _ in range(k)] + [rng.choice(new) for _ in range(batch_size - k)]
        yield collate(batch)
