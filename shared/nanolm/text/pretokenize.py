"""Pre-tokenization: cut text into pieces (words, numbers, punctuation runs, spaces) that BPE never merges across.

The split patterns are GPT-2's (r50k) and GPT-4's (cl100k_base) exactly as tiktoken uses them, so our
splits and tiktoken's agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}


class TokenizerError(ValueError):
    """A bad tokenizer file, pattern name, special-token request or token id."""



def pattern_regex(pattern: str) -> str:
    """The split regex of a pattern name ('gpt2' or 'gpt4'); a clear error for anything else."""
    if pattern not in PATTERNS:
        raise TokenizerError(f"unknown split pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    return PATTERNS[pattern]


_COMPILED: dict[str, regex.Pattern] = {}


def compiled(pattern: str) -> regex.Pattern:
    if pattern not in _COMPILED:
        _COMPILED[pattern] = regex.compile(pattern_regex(pattern))
    return _COMPILED[pattern]


def pretokenize(text: str, pattern: str = "gpt4") -> list[str]:
    """Cut text into pre-tokens with the named split pattern; ''.join(result) == text."""
    return compiled(pattern).findall(text)


def pretoken_counts(texts: str | Iterable[str], pattern: str = "gpt4") -> Counter[bytes]:
    """How often each distinct pre-token occurs (as UTF-8 bytes) across one or more texts."""
    if isinstance(texts, str):
        texts = [texts]
    split = compiled(pattern).findall
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(split(text))
    return Counter({utf8(piece): n for piece, n in counts.items()})


def utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TokenizerError(
            f"text holds a lone surrogate {text[e.start:e.end]!r} at {e.start}, which has no UTF-8 "
            "bytes; clean it first (e.g. s.encode('utf-8', 'replace').decode())"
        ) from e
