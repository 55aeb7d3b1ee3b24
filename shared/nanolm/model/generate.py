"""One generation loop for both model families: prefill, one token per step through a KV cache, sampling, stop tokens.

A model that mixes in `GenerationMixin` needs a `config` with n_layer and block_size and a
`forward(idx, targets=None, cache=None) -> (logits, loss)` whose positions start at cache.length.
It then gets `new_cache`, `stream` and `generate`, all running the loop below:

- without a cache, every step re-runs the model on the last block_size tokens;
- with one, the prompt's last block_size tokens are run once (the prefill) and then one new token per
  step. When the cache is full (block_size positions), it is emptied and refilled from the last
  max(1, block_size // 2) tokens, which get positions 0, 1, ... again; then steps continue until it
  is full once more. So the model sees between block_size / 2 and block_size tokens of context.

Both paths give the same logits, hence the same greedy tokens, while every prediction is made from at
most block_size tokens (prompt plus tokens so far). After that they differ: the uncached path always
sees the last block_size tokens at positions 0 .. block_size - 1, the cached path a window of
block_size / 2 to block_size tokens that restarts at position 0 after each rebuild.

Shapes: B batch, T prompt length, V vocab_size.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch
from torch import nn

from .kvcache import KVCache
from .sampling import sample_next


def _stop_ids(stop: Collection[int] | None, device: torch.device) -> torch.Tensor | None:
    """The stop token ids as a 1-d tensor on device, or None."""
    if stop is None:
        return None
    if isinstance(stop, int) or isinstance(stop, torch.Tensor) and stop.dim() == 0:
        raise TypeError(f"stop is a collection of token ids, e.g. {{{int(stop)}}}, not one id")
    ids = torch.as_tensor(list(stop), dtype=torch.long, device=device)
    return ids if ids.numel() else None


def _next_logits(model: nn.Module, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """Logits (B, V) of the token after idx (B, L): uncached, prefill, rebuild of a full cache, or one step."""
    bs = model.config.block_size
    with torch.no_grad():
        if cache is None:
            context = idx[:, -bs:]  # the model sees at most block_size tokens
        elif cache.length == 0:  # prefill: the prompt's keys and values in one pass
            context = idx[:, -bs:]
        elif cache.length >= cache.max_len:  # full: start again from the recent half, at position 0
            cache.reset()
            context = idx[:, -max(1, bs // 2):]
        else:
            context = idx[:, -1:]  # one new token at position cache.length
        logits, _ = model(context, cache=cache)
    return logits[:, -1, :]


def stream(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
           stop: Collection[int] | None = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield up to max_new_tokens sampled tokens (B, 1) one at a time, continuing idx (B, T); see the module doc.

    temperature 0 is greedy (argmax). stop: token ids that end generation. Batch size 1: the stop token
    is yielded, then generation ends. B > 1: generation ends once every row has produced a stop token
    at some step; rows that finished earlier keep being sampled until then (cut each row after its
    first stop token). The model runs in eval mode and without gradients; its mode is restored after.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    stop_ids = _stop_ids(stop, idx.device)
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # rows that produced a stop token
    # the cache holds what this call can reach: a short answer never allocates block_size positions
    span = min(model.config.block_size, idx.size(1) + max_new_tokens)
    cache = model.new_cache(max(1, span)) if use_cache else None
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            nxt = sample_next(_next_logits(model, idx, cache), temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
            finished = False
            if stop_ids is not None:
                done |= torch.isin(nxt[:, 0], stop_ids)
                finished = bool(done.all())  # one device sync per step, only with stop tokens
            yield nxt
            if finished:
                return
    finally:
        model.train(was_training)


class GenerationMixin:
    """new_cache, stream and generate for a model with config.n_layer, config.block_size and a cached forward."""

    def new_cache(self, max_len: int | None = None) -> KVCache:
        """An empty KV cache for up to max_len positions (default block_size)."""
        return KVCache(self.config.n_layer, max_len or self.config.block_size)

    def stream(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, generator: torch.Generator | None = None,
               stop: Collection[int] | None = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
        """Yield up to max_new_tokens sampled tokens (B, 1), continuing idx (B, T); see nanolm.model.generate.stream."""
        return stream(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      generator=generator, stop=stop, use_cache=use_cache)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None,
                 stop: Collection[int] | None = None, use_cache: bool = True) -> torch.Tensor:
        """idx (B, T) extended by the tokens of `stream` -> (B, T + n), n <= max_new_tokens (fewer after a stop)."""
        new = list(self.stream(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               generator=generator, stop=stop, use_cache=use_cache))
        return torch.cat([idx, *new], dim=1)
