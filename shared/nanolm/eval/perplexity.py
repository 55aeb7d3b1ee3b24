"""Perplexity: how surprised a model is by held-out text, measured so that different models compare.

A model's loss on a text is the mean over tokens of -log p(token | the tokens before it). Three
ways to report it, from the same summed negative log-likelihood NLL:

    token perplexity   exp(NLL / tokens)        depends on the tokenizer: a model with bigger tokens
                                                has fewer, harder predictions
    word perplexity    exp(NLL / words)         words split on whitespace, as lm-evaluation-harness's
                                                wikitext task counts them
    bits per byte      NLL / (ln 2 * bytes)     the only one comparable across tokenizers: the same
                                                text has the same bytes whatever cuts it into tokens

A text longer than the model's context is scored with a sliding window: each window of `window`
tokens moves by `stride`, and only the tokens not scored before count, each predicted from at least
window - stride tokens of context (the first window's tokens from whatever precedes them). Every
token but the first is scored exactly once, so the sums are token-weighted and the first token's
bytes are left out of the byte count.

An untrained model predicts close to uniformly: its token perplexity sits near the vocabulary size,
the sanity check that the bookkeeping is right.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

LN2 = math.log(2)


@dataclass(frozen=True)
class Perplexity:
    """Summed NLL of a text with the counts each report divides by."""

    nll: float  # nats, summed over scored tokens
    tokens: int  # tokens scored (all but the first)
    words: int
    bytes: int  # bytes of the scored tokens

    @property
    def loss(self) -> float:
        """Mean NLL per token, in nats."""
        return self.nll / self.tokens

    @property
    def token_ppl(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def word_ppl(self) -> float:
        return math.exp(self.nll / self.words)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (LN2 * self.bytes)

    def to_dict(self) -> dict:
        """The counts and every derived report, for a table or a JSON file."""
        return {**asdict(self), "loss": self.loss, "token_ppl": self.token_ppl, "word_ppl": self.word_ppl,
                "bits_per_byte": self.bits_per_byte}


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) of each window over n tokens; together they score 1..n-1 once.

    The first window scores all it holds; each later one scores the next `stride` tokens, seeing the
    window - stride tokens before them as context (more at the very end).
    """
    if window < 2 or not 1 <= stride < window:
        raise ValueError(f"need window >= 2 and 1 <= stride < window, got window={window}, stride={stride}")
    out, done = [], 1  # position 0 has nothing before it to predict it from
    while done < n:
        end = min(n, window if done == 1 else done + stride)
        out.append((max(0, end - window), end, done))
        done = end
    return out


@torch.no_grad()
def nll_of_ids(model: nn.Module, ids: list[int], window: int, stride: int) -> float:
    """Summed NLL (nats) of tokens 1..n-1 of ids, through sliding windows of the model's context."""
    device = next(model.parameters()).device
    x = torch.tensor(ids, device=device)
    total = 0.0
    for start, end, first in windows(len(ids), window, stride):
        logits, _ = model(x[None, start:end - 1])  # (1, end - 1 - start, V): predicts tokens start+1 .. end-1
        rows = logits[0, first - 1 - start:]  # the rows predicting tokens first .. end-1
        logp = F.log_softmax(rows.to(torch.promote_types(rows.dtype, torch.float32)), -1)  # bf16 -> float32
        total -= logp.gather(1, x[first:end, None]).sum().item()
    return total


def perplexity(model: nn.Module, encode, decode_bytes, text: str, window: int,
               stride: int | None = None) -> Perplexity:
    """Token, word and byte-level perplexity of text (see the module doc); stride defaults to window // 2."""
    ids = encode(text)
    if len(ids) < 2:
        raise ValueError("perplexity needs a text of at least two tokens")
    window = min(window, model.config.block_size)
    nll = nll_of_ids(model, ids, window, stride or max(1, window // 2))
    n_bytes = len(text.encode("utf-8")) - len(decode_bytes(ids[:1]))
    return Perplexity(nll, len(ids) - 1, len(text.split()), n_bytes)
