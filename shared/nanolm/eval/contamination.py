"""Did the model see the test? Long word n-grams shared by the training corpus and a benchmark's items.

A benchmark measures what a model can do with questions it has never seen. If a question (or its
answer) sits in the training text, a high score may be memory, not skill. The test of the GPT-3 paper
(Brown et al. 2020) and of lm-evaluation-harness's decontamination tool: an item is contaminated when
any run of n = 13 consecutive words of the item also occurs somewhere in the training corpus. Thirteen
words are long enough that a shared run is almost never chance ("one of the most important" is five),
and short enough to catch a copied question inside a longer page.

Both sides are normalized the same way first (`words`): lowercase, delete every character that is
neither a letter, a digit nor whitespace (punctuation and symbols, as lm-eval's janitor deletes
punctuation; so "don't" -> "dont", "well-known" -> "wellknown"), split on whitespace. A copy with other
capitals or punctuation is still caught; a paraphrase, or the same words in another order, is not.

    index = NgramIndex(training_documents)          # every 13-gram of every document
    overlap(index, benchmark_items)                 # counts, fractions and the contaminated items

The index keeps 8 bytes per distinct n-gram, not the words: each word gets a stable 64-bit hash
(blake2b, 8-byte digest, the same in every process and on every machine), and an n-gram's hash is those
13 numbers read as the digits of one number in base P, modulo 2**64 (a polynomial hash, computed for all
positions at once with numpy). The hashes sit in one sorted numpy array, so a lookup is a binary search;
10 MB of text (~2 M n-grams) takes ~15 MB and a few seconds. Two different n-grams share a hash with
probability ~2**-64 per pair: negligible next to everything else that is approximate here.

N-grams are taken within each document, never across the boundary of two: the last words of one page
followed by the first words of the next are no text anybody wrote.

What this cannot see: an item of fewer than n words has no n-gram at all, so it is never flagged even
if it was copied word for word. `overlap` counts such items as the blind spot instead of as clean.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

import numpy as np

N = 13  # the GPT-3 paper's and lm-eval's n-gram length
BASE = np.uint64(0x100000001B3)  # odd, so each position's multiplier P**k is invertible mod 2**64
_DROP = re.compile(r"[^\w\s]|_")  # neither a letter, a digit nor whitespace (\w also matches "_")


def words(text: str) -> list[str]:
    """Lowercase, delete punctuation and symbols, split on whitespace: the normalized words of a text."""
    return _DROP.sub("", text.lower()).split()


def ngrams(words: Sequence[str], n: int = N) -> list[tuple[str, ...]]:
    """The n-grams of a word list, in order (none when it has fewer than n words)."""
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def word_hash(word: str) -> int:
    """A stable 64-bit hash of a word: its blake2b 8-byte digest as an unsigned integer."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def ngram_hashes(words: Sequence[str], n: int = N, cache: dict[str, int] | None = None) -> np.ndarray:
    """The 64-bit hash of every n-gram of a word list, in order: [len(words) - n + 1] uint64."""
    m = len(words) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    cache = {} if cache is None else cache
    w = np.fromiter((cache[x] if x in cache else cache.setdefault(x, word_hash(x)) for x in words),
                    dtype=np.uint64, count=len(words))  # [len(words)]
    h = w[:m].copy()  # [m] Horner's rule: h = (...(w0*P + w1)*P + ...)*P + w(n-1), wrapping mod 2**64
    for k in range(1, n):
        h *= BASE
        h += w[k:k + m]
    return h


class NgramIndex:
    """The set of n-gram hashes of a corpus, taken document by document, as one sorted uint64 array."""

    def __init__(self, texts: Iterable[str], n: int = N):
        """Hash every n-gram of every text (one text = one document; no n-gram crosses two)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.n = n
        self.documents = 0  # documents read
        self.total = 0  # n-grams read, repeats included
        cache: dict[str, int] = {}
        parts = []
        for text in texts:
            self.documents += 1
            h = ngram_hashes(words(text), n, cache)
            self.total += len(h)
            parts.append(h)
        self.hashes = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)

    def __len__(self) -> int:
        """The number of distinct n-grams."""
        return len(self.hashes)

    def __repr__(self) -> str:
        """Its size at a glance."""
        return (f"NgramIndex(n={self.n}, documents={self.documents}, ngrams={self.total}, "
                f"distinct={len(self)}, bytes={self.hashes.nbytes})")

    def hits(self, text: str) -> int:
        """How many of the text's n-grams (repeats counted) occur in the corpus."""
        h = ngram_hashes(words(text), self.n)
        if len(h) == 0 or len(self.hashes) == 0:
            return 0
        at = np.searchsorted(self.hashes, h).clip(max=len(self.hashes) - 1)  # binary search, [len(h)]
        return int((self.hashes[at] == h).sum())

    def contains_any(self, text: str) -> bool:
        """Whether at least one n-gram of the text occurs in the corpus."""
        return self.hits(text) > 0


def overlap(index: NgramIndex, items: Sequence[str], n: int | None = None) -> dict:
    """Which benchmark items share an n-gram with the corpus, and which are too short to tell."""
    n = index.n if n is None else n
    if n != index.n:
        raise ValueError(f"the index holds {index.n}-grams, not {n}-grams: build it with n={n}")
    contaminated, blind = [], []
    for i, item in enumerate(items):
        if len(words(item)) < n:
            blind.append(i)  # no n-gram at all: a copy could not be detected
        elif index.contains_any(item):
            contaminated.append(i)
    checked = len(items)
    return {
        "n": n,
        "checked": checked,
        "contaminated": len(contaminated),
        "blind": len(blind),  # shorter than n words: neither clean nor contaminated, unknown
        "clean": checked - len(contaminated) - len(blind),
        "contaminated_fraction": len(contaminated) / checked if checked else 0.0,
        "blind_fraction": len(blind) / checked if checked else 0.0,
        "contaminated_indices": contaminated,
        "blind_indices": blind,
    }
