"""Byte-level BPE: regex pre-tokenization, a plain and a fast trainer, a tiktoken-compatible encoder.

Every text is UTF-8 bytes, so the 256 byte values are the first tokens and no input is ever
unknown. Training repeatedly glues the most frequent adjacent pair of tokens into a new token:

    train_plain  recounts every pair after every merge: short enough to read line by line.
    train_fast   counts unique pre-tokens once, keeps pair counts up to date incrementally and
                 indexes which pre-tokens hold each pair: the same merges, far faster.

Both break ties the same way: the highest count wins, then the pair whose (left bytes,
right bytes) is lexicographically smallest; a merge that would recreate the bytes of an
existing token is skipped (so every token's bytes are unique, as tiktoken requires).

`Tokenizer` encodes the way tiktoken does (within a pre-token, repeatedly merge the adjacent
pair whose merged bytes have the lowest id), so GPT-2's and GPT-4's (cl100k) vocabularies load
into it and give tiktoken's ids, and a tokenizer we train exports to a `tiktoken.Encoding`.
It saves as plain text: a header, the special tokens, then one merge per line as two ids.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import regex

from .files import write_bytes_atomic

# Split patterns: a text is first cut into pre-tokens (words, numbers, punctuation runs, spaces);
# merges never cross a pre-token boundary. These are the patterns of GPT-2 (r50k) and GPT-4
# (cl100k_base) exactly as tiktoken uses them, so our splits and tiktoken's agree.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

# Special tokens reserved for the whole course: document boundary, padding, the chat template
# (notebook 13) and tool calls (notebook 14). They get the last ids of a trained vocabulary.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|tool_call|>",
    "<|tool_result|>",
)

FORMAT = "nanolm-bpe v1"
FILENAME = "tokenizer.bpe"  # the file inside the `bpe-tokenizer` artifact
ARTIFACT = "bpe-tokenizer"
_LONG_PIECE = 48  # pre-tokens longer than this (in bytes) are merged with a heap: O(n log n)
_CACHE_LIMIT = 200_000

Pair = tuple[int, int]


class TokenizerError(ValueError):
    """A bad tokenizer file, pattern name, special-token request or token id."""


# ----------------------------------------------------------------------------- pre-tokenization


def pattern_regex(pattern: str) -> str:
    """The split regex of a pattern name ('gpt2' or 'gpt4'); a clear error for anything else."""
    if pattern not in PATTERNS:
        raise TokenizerError(f"unknown split pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    return PATTERNS[pattern]


_COMPILED: dict[str, regex.Pattern] = {}


def _compiled(pattern: str) -> regex.Pattern:
    if pattern not in _COMPILED:
        _COMPILED[pattern] = regex.compile(pattern_regex(pattern))
    return _COMPILED[pattern]


def pretokenize(text: str, pattern: str = "gpt4") -> list[str]:
    """Cut text into pre-tokens with the named split pattern; ''.join(result) == text."""
    return _compiled(pattern).findall(text)


def pretoken_counts(texts: str | Iterable[str], pattern: str = "gpt4") -> Counter[bytes]:
    """How often each distinct pre-token occurs (as UTF-8 bytes) across one or more texts."""
    if isinstance(texts, str):
        texts = [texts]
    split = _compiled(pattern).findall
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(split(text))
    return Counter({_utf8(piece): n for piece, n in counts.items()})


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TokenizerError(
            f"text holds a lone surrogate {text[e.start:e.end]!r} at {e.start}, which has no UTF-8 "
            "bytes; clean it first (e.g. s.encode('utf-8', 'replace').decode())"
        ) from e


# ----------------------------------------------------------------------------- training


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


def _num_merges(vocab_size: int, n_special: int) -> int:
    n = vocab_size - 256 - n_special
    if n < 0:
        raise TokenizerError(f"vocab_size {vocab_size} is below 256 bytes + {n_special} special tokens")
    return n


def train_plain(texts: str | Iterable[str], num_merges: int, pattern: str = "gpt4") -> list[Pair]:
    """Learn BPE merges the simple way: count all pairs, merge the most frequent, repeat."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    chunks = [list(_utf8(piece)) for text in texts for piece in pretokenize(text, pattern)]
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
        pair_counts.pop(pair, None)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return merges


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
    n = _num_merges(vocab_size, len(special_tokens))
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


# ----------------------------------------------------------------------------- the tokenizer


class Tokenizer:
    """A byte-level BPE tokenizer: encode/decode, special-token policy, save/load, tiktoken export."""

    def __init__(
        self,
        vocab: list[bytes],
        pattern: str = "gpt4",
        special_tokens: Mapping[str, int] | None = None,
        merges: list[Pair] | None = None,
        name: str = "nanolm-bpe",
    ):
        """vocab[i] is the bytes of ordinary token i; it must hold all 256 single bytes, each once."""
        self.pattern = pattern
        self._split = _compiled(pattern)
        self.vocab = list(vocab)
        self.merges = list(merges) if merges is not None else None
        self.name = name
        self._id_of = {b: i for i, b in enumerate(self.vocab)}
        if len(self._id_of) != len(self.vocab):
            raise TokenizerError("two token ids share the same bytes; a BPE vocabulary needs unique bytes")
        missing = [b for b in range(256) if bytes([b]) not in self._id_of]
        if missing:
            raise TokenizerError(f"the vocabulary lacks {len(missing)} single bytes (e.g. {missing[0]})")
        self.byte_ids = [self._id_of[bytes([b])] for b in range(256)]  # byte value -> token id
        self.special_tokens = dict(special_tokens or {})
        for s, i in self.special_tokens.items():
            if i < len(self.vocab) or list(self.special_tokens.values()).count(i) > 1:
                raise TokenizerError(f"special token {s!r} has id {i}, which is already taken")
        self._special_of = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        self._pair_rank: dict[Pair, int] | None = None
        self._cache: dict[str, tuple[int, ...]] = {}
        self._tiktoken = None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_merges(cls, merges: list[Pair], pattern: str = "gpt4",
                    special_tokens: Iterable[str] = SPECIAL_TOKENS) -> Tokenizer:
        """Bytes 0..255, then one token per merge (id 256 + i), then the special tokens."""
        vocab = [bytes([i]) for i in range(256)]
        for k, (a, b) in enumerate(merges):
            if not (0 <= a < len(vocab) and 0 <= b < len(vocab)):
                raise TokenizerError(f"merge {k} ({a}, {b}) refers to a token that does not exist yet")
            vocab.append(vocab[a] + vocab[b])
        specials = {s: len(vocab) + i for i, s in enumerate(special_tokens)}
        return cls(vocab, pattern, specials, merges=list(merges))

    @classmethod
    def from_ranks(cls, ranks: Mapping[bytes, int], pattern: str,
                   special_tokens: Mapping[str, int] | None = None, name: str = "ranks") -> Tokenizer:
        """From tiktoken-style mergeable ranks (bytes -> id, ids 0..n-1 in any byte order)."""
        vocab: list[bytes | None] = [None] * len(ranks)
        for b, r in ranks.items():
            if not 0 <= r < len(ranks) or vocab[r] is not None:
                raise TokenizerError(f"ranks are not a permutation of 0..{len(ranks) - 1} (rank {r})")
            vocab[r] = b
        return cls(vocab, pattern, special_tokens, name=name)

    # -- sizes and lookups ----------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids (one more than the largest id), specials included."""
        return max([len(self.vocab) - 1, *self.special_tokens.values()]) + 1

    def special(self, token: str) -> int:
        """The id of a special token such as '<|endoftext|>'."""
        if token not in self.special_tokens:
            raise TokenizerError(f"{token!r} is not a special token of this tokenizer")
        return self.special_tokens[token]

    def token_bytes(self, i: int) -> bytes:
        """The bytes of one token id (a special token's text as UTF-8)."""
        if 0 <= i < len(self.vocab):
            return self.vocab[i]
        if i in self._special_of:
            return self._special_of[i]
        raise TokenizerError(f"token id {i} is not in this vocabulary (size {self.vocab_size})")

    def __repr__(self) -> str:
        return (f"Tokenizer({self.name!r}, pattern={self.pattern!r}, vocab_size={self.vocab_size}, "
                f"specials={len(self.special_tokens)})")

    # -- encoding --------------------------------------------------------------------------
    def _pairs(self) -> dict[Pair, int]:
        """(left id, right id) -> id of their concatenation, for every split of every token."""
        if self._pair_rank is None:
            table: dict[Pair, int] = {}
            id_of = self._id_of
            for i, tok in enumerate(self.vocab):
                for k in range(1, len(tok)):
                    left, right = id_of.get(tok[:k]), id_of.get(tok[k:])
                    if left is not None and right is not None:
                        table[(left, right)] = i
            self._pair_rank = table
        return self._pair_rank

    def _bpe(self, piece: bytes) -> list[int]:
        """Token ids of one pre-token: merge the adjacent pair with the lowest id, leftmost first."""
        whole = self._id_of.get(piece)
        if whole is not None:
            return [whole]  # the whole pre-token is a token (tiktoken takes this shortcut too)
        ids = [self.byte_ids[b] for b in piece]
        if len(ids) > _LONG_PIECE:
            return self._bpe_heap(ids)
        rank = self._pairs()
        while len(ids) > 1:
            best, at = None, -1
            for i in range(len(ids) - 1):
                r = rank.get((ids[i], ids[i + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            ids[at:at + 2] = [best]
        return ids

    def _bpe_heap(self, ids: list[int]) -> list[int]:
        """The same merges as _bpe for long pieces, with a heap and a linked list: O(n log n)."""
        rank = self._pairs()
        n = len(ids)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []
        for i in range(n - 1):
            r = rank.get((ids[i], ids[i + 1]))
            if r is not None:
                heap.append((r, i, ids[i], ids[i + 1]))
        heapq.heapify(heap)
        while heap:
            r, i, a, b = heapq.heappop(heap)
            j = nxt[i] if alive[i] else n
            if j >= n or ids[i] != a or ids[j] != b:
                continue  # stale: one side has merged since this entry was pushed
            ids[i] = r
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prv[nxt[i]] = i
            p = prv[i]
            if p >= 0 and (q := rank.get((ids[p], r))) is not None:
                heapq.heappush(heap, (q, p, ids[p], r))
            if nxt[i] < n and (q := rank.get((r, ids[nxt[i]]))) is not None:
                heapq.heappush(heap, (q, i, r, ids[nxt[i]]))
        return [ids[i] for i in range(n) if alive[i]]

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with no special tokens at all: '<|endoftext|>' becomes ordinary tokens."""
        out: list[int] = []
        cache = self._cache
        for piece in self._split.findall(text):
            ids = cache.get(piece)
            if ids is None:
                ids = tuple(self._bpe(_utf8(piece)))
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)
        return out

    def encode(
        self,
        text: str,
        allowed_special: Literal["none", "all"] | Iterable[str] = "none",
        disallowed_special: Literal["text", "raise"] = "text",
    ) -> list[int]:
        """Encode text; special-token text becomes a special id only where `allowed_special` says so.

        allowed_special: "none" (default), "all", or a set of special-token strings.
        disallowed_special: what to do with special-token text that is not allowed:
            "text" (default) encodes it as ordinary text, "raise" raises TokenizerError.
        """
        if allowed_special == "none":
            allowed: set[str] = set()
        elif allowed_special == "all":
            allowed = set(self.special_tokens)
        elif isinstance(allowed_special, str):
            raise TokenizerError(f"allowed_special is 'none', 'all' or a set of tokens, not {allowed_special!r}")
        else:
            allowed = set(allowed_special)
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise TokenizerError(f"not special tokens of this tokenizer: {sorted(unknown)}")
        if disallowed_special not in ("text", "raise"):
            raise TokenizerError(f"disallowed_special is 'text' or 'raise', not {disallowed_special!r}")
        if disallowed_special == "raise":
            for s in self.special_tokens:
                if s not in allowed and s in text:
                    raise TokenizerError(
                        f"text contains the special token {s!r}, which is not allowed here; pass "
                        f"allowed_special={{{s!r}}} to encode it as a special token, or "
                        "disallowed_special='text' to encode it as ordinary text"
                    )
        if not allowed:
            return self.encode_ordinary(text)
        splitter = regex.compile(
            "(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")"
        )
        out: list[int] = []
        for k, part in enumerate(splitter.split(text)):
            if k % 2:  # odd parts are the separators: allowed special tokens
                out.append(self.special_tokens[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    # -- decoding --------------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of a sequence of ids (any valid ids, in any order)."""
        vocab, special, n = self.vocab, self._special_of, len(self.vocab)
        ids = ids if isinstance(ids, list) else list(ids)
        try:
            return b"".join(vocab[i] if 0 <= i < n else special[i] for i in ids)
        except (KeyError, TypeError, IndexError):
            bad = next(i for i in ids if not (isinstance(i, int) and (0 <= i < n or i in special)))
            raise TokenizerError(f"token id {bad!r} is not in this vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of a sequence of ids; bytes that are not valid UTF-8 become U+FFFD (never raises)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    # -- smaller vocabularies, saving, loading ------------------------------------------------
    def truncated(self, vocab_size: int) -> Tokenizer:
        """The tokenizer with only the first merges, so that it has vocab_size ids with the specials.

        BPE learns merges in order, so this is exactly what training to vocab_size would give.
        """
        if self.merges is None:
            raise TokenizerError("truncated() needs a tokenizer with a merge list (trained or loaded)")
        n = _num_merges(vocab_size, len(self.special_tokens))
        if n > len(self.merges):
            raise TokenizerError(f"this tokenizer has only {len(self.merges)} merges; cannot grow to {vocab_size}")
        specials = sorted(self.special_tokens, key=self.special_tokens.get)
        return Tokenizer.from_merges(self.merges[:n], self.pattern, specials)

    def dumps(self) -> str:
        """The plain-text file: header, pattern name, special tokens, then one merge per line."""
        if self.merges is None:
            raise TokenizerError("only tokenizers with a merge list (trained or loaded) can be saved as text")
        lines = [FORMAT, f"pattern {self.pattern}", f"specials {len(self.special_tokens)}"]
        for s, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1]):
            lines.append(f"{i} {json.dumps(s, ensure_ascii=True)}")
        lines.append(f"merges {len(self.merges)}")
        lines += [f"{a} {b}" for a, b in self.merges]
        return "\n".join(lines) + "\n"

    @classmethod
    def loads(cls, text: str) -> Tokenizer:
        """Parse the text of dumps(); a corrupt or truncated file gives a TokenizerError."""
        lines = text.splitlines()
        pos = 0  # index of the line being read

        def take(what: str) -> list[str]:
            nonlocal pos
            if pos >= len(lines):
                raise TokenizerError(f"tokenizer file is truncated: expected {what} at line {pos + 1}")
            pos += 1
            return lines[pos - 1].split(" ", 1) if what == "a special token" else lines[pos - 1].split()

        def header(key: str) -> str:
            parts = take(f"'{key} ...'")
            if len(parts) != 2 or parts[0] != key:
                raise TokenizerError(f"tokenizer file: line {pos} should be '{key} ...', not {lines[pos - 1]!r}")
            return parts[1]

        if not lines or lines[0] != FORMAT:
            raise TokenizerError(f"not a nanolm BPE tokenizer file: the first line should be {FORMAT!r}")
        pos = 1
        pattern = header("pattern")
        pattern_regex(pattern)
        try:
            specials: dict[str, int] = {}
            for _ in range(int(header("specials"))):
                i, s = take("a special token")
                specials[json.loads(s)] = int(i)
            merges = []
            for _ in range(int(header("merges"))):
                a, b = take("a merge")
                merges.append((int(a), int(b)))
        except ValueError as e:  # int(), json.loads() or unpacking failed
            if isinstance(e, TokenizerError):
                raise
            raise TokenizerError(f"tokenizer file: cannot parse line {pos}: {lines[pos - 1]!r}") from e
        if any(line.strip() for line in lines[pos:]):
            raise TokenizerError(f"tokenizer file: unexpected text after the last merge (line {pos + 1})")
        tok = cls.from_merges(merges, pattern, list(specials))
        if tok.special_tokens != specials:
            raise TokenizerError("tokenizer file: special-token ids do not follow the merges")
        return tok

    def save(self, path: str | Path) -> None:
        """Write dumps() to a file (UTF-8), atomically."""
        write_bytes_atomic(path, self.dumps().encode("utf-8"))  # never a half-written tokenizer

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a file written by save()."""
        return cls.loads(Path(path).read_text(encoding="utf-8"))

    def to_tiktoken(self):
        """A tiktoken.Encoding with the same vocabulary, pattern and special tokens (fast encoding)."""
        if self._tiktoken is None:
            import tiktoken

            ranks = {b: i for i, b in enumerate(self.vocab)}
            contiguous = sorted([*range(len(self.vocab)), *self.special_tokens.values()]) == list(
                range(self.vocab_size))
            self._tiktoken = tiktoken.Encoding(
                self.name, pat_str=PATTERNS[self.pattern], mergeable_ranks=ranks,
                special_tokens=dict(self.special_tokens),
                **({"explicit_n_vocab": self.vocab_size} if contiguous else {}),
            )
        return self._tiktoken


# ----------------------------------------------------------------------------- references and the artifact

# GPT-2 and GPT-4 vocabularies from data/ (never downloaded here): name -> (dataset, pattern, specials).
_REFERENCES = {
    "gpt2": ("gpt2_bpe", "gpt2", {"<|endoftext|>": 50256}),
    "cl100k_base": ("cl100k", "gpt4", {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                                       "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                                       "<|endofprompt|>": 100276}),
}


def reference_ranks(name: str) -> dict[bytes, int]:
    """Mergeable ranks of 'gpt2' or 'cl100k_base', read offline from data/ with tiktoken.load."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe

    from . import data

    if name not in _REFERENCES:
        raise TokenizerError(f"unknown reference tokenizer {name!r}; known: {', '.join(_REFERENCES)}")
    dataset = _REFERENCES[name][0]
    files = data.registry()[dataset]["files"]
    if name == "gpt2":
        return data_gym_to_mergeable_bpe_ranks(
            str(data.path(dataset, "vocab.bpe")), str(data.path(dataset, "encoder.json")),
            vocab_bpe_hash=files["vocab.bpe"]["sha256"], encoder_json_hash=files["encoder.json"]["sha256"],
        )
    return load_tiktoken_bpe(str(data.path(dataset, "cl100k_base.tiktoken")),
                             expected_hash=files["cl100k_base.tiktoken"]["sha256"])


def reference_tiktoken(name: str):
    """tiktoken's own 'gpt2' or 'cl100k_base' Encoding, built offline from the files in data/."""
    import tiktoken

    _, pattern, specials = _REFERENCES.get(name, (None, None, None))
    ranks = reference_ranks(name)
    return tiktoken.Encoding(name, pat_str=PATTERNS[pattern], mergeable_ranks=ranks,
                             special_tokens=dict(specials))


def reference_tokenizer(name: str) -> Tokenizer:
    """Our Tokenizer holding the 'gpt2' or 'cl100k_base' vocabulary (bytes permuted as theirs are)."""
    ranks = reference_ranks(name)
    _, pattern, specials = _REFERENCES[name]
    return Tokenizer.from_ranks(ranks, pattern, specials, name=name)


def load_tokenizer(profile: str) -> Tokenizer:
    """The course tokenizer that notebook 04 saved for this profile (artifact `bpe-tokenizer`)."""
    from . import artifacts

    art = artifacts.load(ARTIFACT, profile=profile)
    tok = Tokenizer.loads(art.text(FILENAME))
    tok.name = f"{ARTIFACT}-{profile}"
    return tok
