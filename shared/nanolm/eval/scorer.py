"""Scoring answers by log-probability: how a language model takes a multiple-choice test.

A benchmark item is a context ("Question: ... Answer:") and a few candidate continuations. The model
never writes an answer; it scores each one: the summed log-probability of the continuation's tokens
given the context. The choice it would most likely have written wins. How to compare choices of
different lengths is the whole game, and the harnesses disagree:

    acc        argmax of the summed log-probability          (favours short answers)
    acc_norm   argmax of log-probability per character       (lm-evaluation-harness's acc_norm)
    acc_bytes  argmax of log-probability per UTF-8 byte      (the same idea, tokenizer-free)
    acc_token  argmax of the mean log-probability per token  (nanochat: lowest mean loss)

Tokenization follows lm-evaluation-harness exactly, so per-item numbers can be compared with it:
trailing spaces of the context move to the continuation, the pair is encoded as one string, and the
continuation's tokens are what follows the context's own encoding.

Shared prefix: every choice of an item has the same context. `score` runs the context once, keeps
its KV cache, copies it into one row per choice and runs only the continuations, a batch of
(n_choices, longest continuation - 1) tokens. `score_full` runs each (context + continuation) from
scratch, as a harness without a cache does; both give the same numbers up to float rounding.

A continuation as long as the model's context or longer (the course's 128-token models meet some) is scored
with a sliding window instead, each of its tokens predicted from the block_size tokens before it.

Shapes: B choices, Tc context tokens, L longest continuation, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .perplexity import windows  # sliding windows that score every position once

Encode = Callable[[str], list[int]]
METRICS = ("acc", "acc_norm", "acc_bytes", "acc_token")


@dataclass(frozen=True)
class Choice:
    """One candidate's score: summed log-probability, greedy or not, and the lengths metrics divide by."""

    logprob: float  # sum over the continuation's tokens of log p(token | everything before it)
    greedy: bool  # every continuation token was the model's argmax: it would have written this itself
    n_tokens: int
    n_chars: int  # of the choice text, without the delimiter (as lm-evaluation-harness counts)
    n_bytes: int

    @property
    def loss(self) -> float:
        """Mean negative log-probability per token (nanochat's criterion)."""
        return -self.logprob / self.n_tokens


def encode_pair(encode: Encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) the way lm-evaluation-harness splits a pair (see module doc)."""
    if not context:
        raise ValueError("a context is needed: the first continuation token must be predicted from something")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx):]


def pick(choices: Sequence[Choice], metric: str = "acc") -> int:
    """Index of the winning choice under one of METRICS (ties go to the first, as numpy's argmax)."""
    keys = {"acc": lambda c: c.logprob, "acc_norm": lambda c: c.logprob / c.n_chars,
            "acc_bytes": lambda c: c.logprob / c.n_bytes, "acc_token": lambda c: -c.loss}
    if metric not in keys:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    values = [keys[metric](c) for c in choices]
    return values.index(max(values))


def _pairs(encode: Encode, context: str, choices: Sequence[str], delimiter: str):
    """Context ids and each choice's continuation ids."""
    if not choices:
        raise ValueError("an item needs at least one choice")
    pairs = [encode_pair(encode, context, delimiter + c) for c in choices]
    ctx, conts = pairs[0][0], [p[1] for p in pairs]
    if any(not c for c in conts):
        empty = [c for c, ids in zip(choices, conts, strict=True) if not ids]
        raise ValueError(f"a choice encodes to no tokens: {empty}")
    return ctx, conts


def _fits(ctx: list[int], conts: list[list[int]], block_size: int) -> list[int] | None:
    """The context cut to its right end so that the longest continuation fits, or None when that cannot be."""
    longest = max(len(c) for c in conts)
    return ctx[-(block_size - longest):] if longest < block_size else None  # the harness also keeps the right end


def _windowed(model: nn.Module, ctx: list[int], conts: list[list[int]], choices: Sequence[str]) -> list[Choice]:
    """Continuations longer than the context window: each token predicted from the block_size tokens before it."""
    bs, device, out = model.config.block_size, next(model.parameters()).device, []
    for ids, text in zip(conts, choices, strict=True):
        seq = ctx[-bs:] + ids
        first = len(seq) - len(ids)
        total, greedy = 0.0, True
        for start, end, lo in windows(len(seq), bs, max(1, bs // 2)):
            lo = max(lo, first)
            if end > lo:
                logits, _ = model(torch.tensor([seq[start:end - 1]], device=device))  # (1, end - 1 - start, V)
                logp = _log_softmax(logits[0, lo - 1 - start:])  # rows predicting seq[lo:end]
                target = torch.tensor(seq[lo:end], device=device)
                total += logp.gather(1, target[:, None]).sum().item()
                greedy = greedy and bool((logp.argmax(-1) == target).all())
        out.append(Choice(total, greedy, len(ids), len(text), len(text.encode("utf-8"))))
    return out


def _choices(logp: torch.Tensor, conts: list[list[int]], choices: Sequence[str]) -> list[Choice]:
    """Choice scores from log-probabilities logp (B, L, V) at each continuation's positions."""
    out = []
    for row, (ids, text) in enumerate(zip(conts, choices, strict=True)):
        lp = logp[row, :len(ids)]  # (len, V): the distributions that predict this continuation's tokens
        target = torch.tensor(ids, device=lp.device)
        total = lp.gather(1, target[:, None]).sum().item()
        greedy = bool((lp.argmax(-1) == target).all())
        out.append(Choice(total, greedy, len(ids), len(text), len(text.encode("utf-8"))))
    return out


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities in at least float32 (bf16 logits would round the sums; float64 stays float64)."""
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)


def _pad(rows: list[list[int]], device) -> torch.Tensor:
    """Right-pad token rows with 0 into (B, L): padding sits after every real token, so causality hides it."""
    width = max(1, max(len(r) for r in rows))
    return torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)


@torch.no_grad()
def score(model: nn.Module, encode: Encode, context: str, choices: Sequence[str], delimiter: str = " ") -> list[Choice]:
    """Score each choice as a continuation of context, running the context once (shared-prefix KV cache)."""
    device = next(model.parameters()).device
    full_ctx, conts = _pairs(encode, context, choices, delimiter)
    ctx = _fits(full_ctx, conts, model.config.block_size)
    if ctx is None:
        return _windowed(model, full_ctx, conts, choices)
    longest = max(len(c) for c in conts)
    cache = model.new_cache(len(ctx) + longest)
    ctx_logits, _ = model(torch.tensor([ctx], device=device), cache=cache)  # (1, Tc, V)
    first = _log_softmax(ctx_logits[:, -1])  # (1, V): predicts every continuation's first token
    logp = first[:, None].expand(len(conts), 1, -1)  # (B, 1, V)
    if longest > 1:
        cache.repeat(len(conts))
        rest, _ = model(_pad([c[:-1] for c in conts], device), cache=cache)  # (B, L - 1, V)
        logp = torch.cat([logp, _log_softmax(rest)], dim=1)  # (B, L, V)
    return _choices(logp, conts, choices)


@torch.no_grad()
def score_full(model: nn.Module, encode: Encode, context: str, choices: Sequence[str],
               delimiter: str = " ") -> list[Choice]:
    """The same scores with every (context + continuation) run from scratch in one padded batch."""
    device = next(model.parameters()).device
    full_ctx, conts = _pairs(encode, context, choices, delimiter)
    ctx = _fits(full_ctx, conts, model.config.block_size)
    if ctx is None:
        return _windowed(model, full_ctx, conts, choices)
    logits, _ = model(_pad([ctx + c[:-1] for c in conts], device))  # (B, Tc + L - 1, V)
    logp = _log_softmax(logits[:, len(ctx) - 1:])  # (B, L, V): from the last context position on
    return _choices(logp, conts, choices)
