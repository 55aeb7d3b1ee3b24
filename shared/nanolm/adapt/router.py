"""A router: which task is this prompt? Picking an adapter when nobody says which one to use.

A library of adapters (one per task) keeps every task intact, but only if each prompt meets its own
adapter. At test time the task id is often unknown, so a router guesses it from the prompt itself, with
the base model as the reader: its hidden states already separate the kinds of text it has seen.

    prompt tokens --base model--> final-norm states (T, C) --mean over tokens--> feature (C,)
    feature - mean of the training features --normalize--> compare with each task's centroid (cosine)

`prompt_features` reads the output of `model.norm_f` (what the head sees) with a forward hook, and
averages it over the prompt's tokens. Batches are right-padded: with causal attention a real token never
attends to the pads after it, and the pads are masked out of the mean, so padding changes nothing.

`Router` is a nearest-centroid classifier (no training loop, no extra parameters to tune): the centroid of
a task is the mean of its unit-length centered features. Centering matters: a language model's states
share a large common direction (every feature has a high cosine with every other one), and subtracting
the mean leaves the part that tells tasks apart. `confusion` shows where it errs (rows: the true task,
columns: the guess). Its memory is one vector per task plus the mean: (K + 1) * C floats.

Shapes: N prompts, T tokens, C n_embd, K tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- features


def _pad(prompts: Sequence[list[int]], block_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and a mask (B, T), 1 on real tokens; each prompt cut to its last block_size."""
    cut = [p[-block_size:] for p in prompts]  # the end of a long prompt is what a model continues from
    T = max(len(p) for p in cut)
    ids = torch.zeros(len(cut), T, dtype=torch.long, device=device)
    mask = torch.zeros(len(cut), T, dtype=torch.float32, device=device)
    for b, p in enumerate(cut):
        ids[b, : len(p)] = torch.tensor(p, device=device)
        mask[b, : len(p)] = 1.0
    return ids, mask


@torch.no_grad()
def prompt_features(model: nn.Module, prompts: Sequence[list[int]], batch_size: int = 32) -> torch.Tensor:
    """(N, C) float32 on the CPU: each prompt's final-norm hidden states, averaged over its tokens."""
    if not prompts:
        raise ValueError("prompt_features needs at least one prompt (a list of token ids), got none")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if empty := [k for k, p in enumerate(prompts) if len(p) == 0]:
        raise ValueError(f"prompts {empty[:5]} have no token: a feature is a mean over tokens, give each one")
    if not isinstance(getattr(model, "norm_f", None), nn.Module):
        raise ValueError("prompt_features reads the final norm's output: the model needs a `norm_f` module")
    device, was_training = next(model.parameters()).device, model.training
    seen: list[torch.Tensor] = []
    hook = model.norm_f.register_forward_hook(lambda _m, _inp, out: seen.append(out))
    model.eval()
    out = []
    try:
        for i in range(0, len(prompts), batch_size):
            ids, mask = _pad(prompts[i : i + batch_size], model.config.block_size, device)
            seen.clear()
            model(ids)
            h = seen[-1].float()  # (B, T, C): the states the head reads
            mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, C): pads left out
            out.append(mean.cpu())
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(out)  # (N, C)


# ----------------------------------------------------------------------------- the router


class Router:
    """Nearest centroid by cosine similarity after centering: fit on labelled features, then predict."""

    def __init__(self, mean: torch.Tensor, centroids: torch.Tensor, names: Sequence[str]):
        if centroids.ndim != 2 or mean.shape != (centroids.shape[1],) or len(names) != centroids.shape[0]:
            raise ValueError(f"a router needs mean (C,), centroids (K, C) and K names; got mean "
                             f"{tuple(mean.shape)}, centroids {tuple(centroids.shape)}, {len(names)} names")
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be distinct, got {list(names)}")
        self.mean = mean.float()  # (C,)
        self.centroids = centroids.float()  # (K, C), unit rows
        self.names = list(names)

    @classmethod
    def fit(cls, features: torch.Tensor, labels: Sequence[str]) -> Router:
        """Centroid of each label = the normalized mean of its unit, centered features; names in first-seen order."""
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(f"features must be (N, C) with N >= 1, got shape {tuple(features.shape)}")
        if len(labels) != features.shape[0]:
            raise ValueError(f"one label per feature row: got {len(labels)} labels for {features.shape[0]} rows")
        features = features.float()
        mean = features.mean(0)  # (C,)
        unit = F.normalize(features - mean, dim=-1)  # (N, C)
        names = list(dict.fromkeys(labels))  # first-seen order, each once
        rows = torch.tensor([names.index(label) for label in labels])
        centroids = torch.stack([unit[rows == k].mean(0) for k in range(len(names))])  # (K, C)
        return cls(mean, F.normalize(centroids, dim=-1), names)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, K) cosine similarities of each centered feature with each task's centroid."""
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features must be (N, {self.mean.shape[0]}), got {tuple(features.shape)}")
        unit = F.normalize(features.float().cpu() - self.mean, dim=-1)  # (N, C)
        return unit @ self.centroids.T  # (N, K)

    def predict(self, features: torch.Tensor) -> list[str]:
        """The most similar task of each feature row."""
        return [self.names[k] for k in self.scores(features).argmax(-1).tolist()]

    def state(self) -> dict[str, torch.Tensor]:
        """{"mean": (C,), "centroids": (K, C)}: with `names`, all a saved router needs."""
        return {"mean": self.mean.clone(), "centroids": self.centroids.clone()}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], names: Sequence[str]) -> Router:
        """The router that `state()` and `names` describe."""
        if set(state) != {"mean", "centroids"}:
            raise ValueError(f"a router state has the keys 'mean' and 'centroids', got {sorted(state)}")
        return cls(state["mean"], state["centroids"], names)

    def memory_bytes(self) -> int:
        """Bytes of the mean and the centroids, float32: (K + 1) * C * 4."""
        return (self.mean.numel() + self.centroids.numel()) * 4


def confusion(true: Sequence[str], pred: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """(K, K) int counts: entry [a, b] = prompts of task names[a] routed to names[b]; the diagonal is right."""
    if len(true) != len(pred):
        raise ValueError(f"true and pred must have one label per prompt each, got {len(true)} and {len(pred)}")
    index = {name: k for k, name in enumerate(names)}
    if len(index) != len(names):
        raise ValueError(f"names must be distinct, got {list(names)}")
    if unknown := sorted({x for x in (*true, *pred) if x not in index}):
        raise ValueError(f"labels {unknown} are not among names {list(names)}")
    out = np.zeros((len(names), len(names)), dtype=np.int64)
    for t, p in zip(true, pred, strict=True):
        out[index[t], index[p]] += 1
    return out
