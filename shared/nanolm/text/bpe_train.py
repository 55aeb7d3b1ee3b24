"""Training byte-level BPE: repeatedly glue the most frequent adjacent pair of tokens into a new token.

    train_plain  recounts every pair after every merge: short enough to read line by line.
    train_fast   counts unique pre-tokens once, keeps pair counts up to date incrementally and
                 indexes which pre-tokens hold each pair: the same merges, far faster.

Both break ties the same way: the highest count wins, then the pair whose (left bytes,
right bytes) is lexicographically smallest; a merge that would recreate the bytes of an
existing token is skipped (so every token's bytes are unique, as tiktoken requires).
`train` runs one of them and returns a `nanolm.text.bpe.Tokenizer`.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Literal

from .bpe import SPECIAL_TOKENS, Pair, Tokenizer, num_merges
from .pretokenize import TokenizerError, pattern_regex, pretoken_counts, pretokenize, utf8


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in ids, scanning left to right, by `new_id`."""
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out




def train_plain(texts: str | Iterable[str], num_merges: int, pattern: str = "gpt4") -> list[Pair]:
    """Learn BPE merges the simple way: count all pairs, merge the most frequent, repeat."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    chunks = [list(utf8(piece)) for text in texts for piece in pretokenize(text, pattern)]
    vocab = [bytes([i]) for i in range(256)]  # token id -> its bytes
    known = set(vocab)
    merges: list[Pair] = []
    while len(merges) < num_merges:
        counts: Counter[Pair] = Counter()
        for ids in chunks:
            counts.update(zip(ids, ids[1:], strict=False))
        # a pair whose bytes are already a token would make two ids for the same bytes: skip it
        candidates = [p for p in counts if vocab[p[0]] + vocab[p[1]] not in known]
        if not candidates:
            break
        # tie-break: highest count, then the lexicographically smallest (left bytes, right bytes)
        best = min(candidates, key=lambda p: (-counts[p], vocab[p[0]], vocab[p[1]]))
        new_id = len(vocab)
        chunks = [merge_pair(ids, best, new_id) for ids in chunks]
        merges.append(best)
        vocab.append(vocab[best[0]] + vocab[best[1]])
        known.add(vocab[-1])
    return merges


def train_fast(
    data: str | Iterable[str] | Mapping[bytes, int],
    num_merges: int,
    pattern: str = "gpt4",
    progress: bool = False,
) -> list[Pair]:
    """The same merges as train_plain, computed from pre-token counts with incremental pair counts.

    `data` is a text, several texts, or ready-made pre-token counts (bytes -> count).
    """
    counts = data if isinstance(data, Mapping) else pretoken_counts(data, pattern)
    words = [list(w) for w in counts]        # each distinct pre-token as a list of token ids
    freqs = [counts[w] for w in counts]      # how often it occurs in the corpus
    vocab = [bytes([i]) for i in range(256)]
    known = set(vocab)
    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)  # pair -> indices of the words that hold it
    for wi, (w, f) in enumerate(zip(words, freqs, strict=True)):
        for p in zip(w, w[1:], strict=False):
            pair_counts[p] += f
            where[p].add(wi)
    # A max-heap by (count, then smallest bytes) made from a min-heap; stale entries are skipped.
    heap = [(-c, vocab[a], vocab[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[Pair] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_merges, desc="BPE merges", leave=False)
    while len(merges) < num_merges and heap:
        negc, ba, bb, a, b = heapq.heappop(heap)
        pair = (a, b)
        if pair_counts.get(pair, 0) != -negc:
            continue  # a stale entry: this pair's count changed after it was pushed
        if ba + bb in known:
            continue  # would duplicate an existing token's bytes (train_plain skips it too)
        new_id = len(vocab)
        merges.append(pair)
        vocab.append(ba + bb)
        known.add(ba + bb)
        _apply_merge(pair, new_id, words, freqs, pair_counts, where, heap, vocab)
        pair_counts.pop(pair, None)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return merges


def _apply_merge(pair: Pair, new_id: int, words: list[list[int]], freqs: list[int],
                 pair_counts: dict[Pair, int], where: dict[Pair, set[int]], heap: list, vocab: list[bytes]) -> None:
    """Merge `pair` into new_id in every word that holds it; update the pair counts, the index and the heap."""
    delta: dict[Pair, int] = defaultdict(int)
    for wi in where.pop(pair):
        w = words[wi]
        new_w = merge_pair(w, pair, new_id)
        if len(new_w) == len(w):
            continue
        f = freqs[wi]
        for p in zip(w, w[1:], strict=False):
            delta[p] -= f
        for p in zip(new_w, new_w[1:], strict=False):
            delta[p] += f
            where[p].add(wi)
        words[wi] = new_w
    for p, d in delta.items():
        if d == 0 or p == pair:
            continue
        c = pair_counts[p] + d
        if c > 0:
            pair_counts[p] = c
            heapq.heappush(heap, (-c, vocab[p[0]], vocab[p[1]], p[0], p[1]))
        else:
            del pair_counts[p]
            where.pop(p, None)


def train(
    texts: str | Iterable[str] | Mapping[bytes, int],
    vocab_size: int,
    pattern: str = "gpt4",
    special_tokens: Iterable[str] = SPECIAL_TOKENS,
    trainer: Literal["fast", "plain"] = "fast",
    progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer whose vocabulary (bytes + merges + specials) has vocab_size ids.

    `texts` is a text, several texts, or (fast trainer only) ready pre-token counts from pretoken_counts().
    """
    special_tokens = tuple(special_tokens)
    n = num_merges(vocab_size, len(special_tokens))
    pattern_regex(pattern)
    if trainer == "fast":
        merges = train_fast(texts, n, pattern, progress=progress)
    elif trainer == "plain":
        if isinstance(texts, Mapping):
            raise TokenizerError("the plain trainer needs text, not pre-token counts")
        merges = train_plain(texts, n, pattern)
    else:
        raise TokenizerError(f"unknown trainer {trainer!r}; use 'fast' or 'plain'")
    return Tokenizer.from_merges(merges, pattern, special_tokens)
