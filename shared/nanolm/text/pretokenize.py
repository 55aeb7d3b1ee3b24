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
# SmolLM2's split (GGUF pre "smollm") as transformers runs it: GPT-2's regex in Oniguruma, which knows Unicode
# 16.0. `regex` knows 17.0, so the letters and numbers new in 17.0 are "other" here (checked on every code point).
_U17_LETTERS = (
    r"\u0558\u058b-\u058c\u088f\u0c5c\u0cdc\u208f\u209d-\u209f\ua7ce-\ua7cf\ua7d2\ua7d4\ua7dd\ua7e2\ua7f1\uab6c-\uab6d"
    r"\U000107bb-\U000107bf\U00010940-\U00010959\U00010ec5-\U00010ec7\U00010ed9-\U00010eee\U00011b0a"
    r"\U00011db0-\U00011ddb\U00011df1\U00016ea0-\U00016eb8\U00016ebb-\U00016ed3\U00016ff2-\U00016ff3"
    r"\U000187f8-\U000187ff\U00018cd6-\U00018cda\U00018d09-\U00018d20\U00018d80-\U00018df2\U00018e00-\U00019191"
    r"\U000191a0-\U000191d2\U0001b123-\U0001b128\U0001b168\U0001d6a6\U0001df1f-\U0001df24\U0001df2b-\U0001df81"
    r"\U0001df90-\U0001df96\U0001dfcd-\U0001dfff\U0001e6c0-\U0001e6de\U0001e6e0-\U0001e6e2\U0001e6e4-\U0001e6e5"
    r"\U0001e6e7-\U0001e6ed\U0001e6f0-\U0001e6f4\U0001e6fe-\U0001e6ff\U0002b73a-\U0002b73f\U0002b81e"
    r"\U0002cea2-\U0002cead\U000323b0-\U00033479\U0003d000-\U0003fc3f"
)
_U17_NUMBERS = r"\U00011de0-\U00011de9\U0001246f\U00012475-\U0001247f\U00012550-\U00012686\U00016ff4-\U00016ff6"
_L16, _N16 = rf"[\p{{L}}--[{_U17_LETTERS}]]", rf"[\p{{N}}--[{_U17_NUMBERS}]]"
_OTHER16 = rf"[[^\s\p{{L}}\p{{N}}]{_U17_LETTERS}{_U17_NUMBERS}]"
SMOLLM_PATTERN = rf"""(?V1)'(?:[sdmt]|ll|ve|re)| ?{_L16}++| ?{_N16}++| ?{_OTHER16}++|\s++$|\s+(?!\S)|\s"""
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "smollm": SMOLLM_PATTERN}


class TokenizerError(ValueError):
    """A bad tokenizer file, pattern name, special-token request or token id."""



def pattern_regex(pattern: str) -> str:
    """The split regex of a pattern name (a key of PATTERNS); a clear error for anything else."""
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
