"""Greedy completion until a stop string: how generative benchmarks (GSM8K, HumanEval) get an answer.

A harness asks for text "until" one of a few strings appears ("Question:" for GSM8K, "\\ndef" for
HumanEval): generation stops at the first of them, or at a stop token, or after max_new_tokens,
and the answer is everything before the stop string. Tokens are decoded as a whole after each step,
because a stop string can start in the middle of a token and a UTF-8 character can span two.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Completion:
    """The text before the first stop string, how many tokens were generated, and why it stopped."""

    text: str
    tokens: int
    stopped_by: str  # the stop string, "stop token" or "length"


def cut(text: str, until: Sequence[str]) -> tuple[str, str | None]:
    """(text before the earliest stop string, that string) or (text, None) when none occurs."""
    hits = [(text.find(s), s) for s in until if s and s in text]
    if not hits:
        return text, None
    at, s = min(hits)
    return text[:at], s


@torch.no_grad()
def complete(model: nn.Module, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str], prompt: str,
             max_new_tokens: int, until: Sequence[str] = (), stop_ids: Collection[int] | None = None) -> Completion:
    """Greedy continuation of prompt until a stop string, a stop token or max_new_tokens (see the module doc)."""
    device = next(model.parameters()).device
    ids: list[int] = []
    for tok in model.stream(torch.tensor([encode(prompt)], device=device), max_new_tokens, temperature=0):
        t = int(tok)
        if stop_ids and t in stop_ids:
            return Completion(cut(decode(ids), until)[0], len(ids) + 1, "stop token")
        ids.append(t)
        text, hit = cut(decode(ids), until)
        if hit is not None:
            return Completion(text, len(ids), hit)
    return Completion(decode(ids), len(ids), "length")


@torch.no_grad()
def chat_reply(model: nn.Module, fmt, messages: Sequence[dict], max_new_tokens: int, *, temperature: float = 0.0,
               generator: torch.Generator | None = None) -> tuple[str, list[dict[str, str]], list[int]]:
    """The model's next assistant turn in a chat format (nanolm.text.chat.Format): (content, tool calls, ids).

    Generation stops at the format's end token (or after max_new_tokens); a malformed tool call is left in
    the content rather than raised, so a benchmark can count it as wrong.
    """
    device = next(model.parameters()).device
    prompt = fmt.render(messages, add_generation_prompt=True).ids
    end = fmt.tokenizer.special(fmt.end)
    out = model.generate(torch.tensor([prompt], device=device), max_new_tokens, temperature=temperature,
                         generator=generator, stop={end})[0, len(prompt):].tolist()
    ids = out[: out.index(end) + 1] if end in out else out
    try:
        content, calls = fmt.parse_assistant(ids)
    except ValueError:
        content, calls = fmt.tokenizer.decode([i for i in ids if i != end]), []
    return content, calls, ids
