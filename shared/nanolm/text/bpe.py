"""Byte-level BPE tokenizer: tiktoken-compatible encoding, special tokens, save/load, tiktoken export.

Every text is UTF-8 bytes, so the 256 byte values are the first tokens and no input is ever
unknown. `Tokenizer` encodes the way tiktoken does (within a pre-token, repeatedly merge the
adjacent pair whose merged bytes have the lowest id), so GPT-2's and GPT-4's (cl100k) vocabularies
load into it and give tiktoken's ids, and a tokenizer we train (nanolm.text.bpe_train) exports to a
`tiktoken.Encoding`. It saves as plain text: a header, the special tokens, then one merge per line
as two ids. Pre-tokenization lives in nanolm.text.pretokenize.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import regex

from ..core import artifacts
from ..core.files import write_bytes_atomic
from .pretokenize import PATTERNS, TokenizerError, compiled, pattern_regex, utf8

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


def num_merges(vocab_size: int, n_special: int) -> int:
    """Merges a vocabulary of vocab_size ids holds besides the 256 bytes and n_special special tokens."""
    n = vocab_size - 256 - n_special
    if n < 0:
        raise TokenizerError(f"vocab_size {vocab_size} is below 256 bytes + {n_special} special tokens")
    return n


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
        self._split = compiled(pattern)
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
                ids = tuple(self._bpe(utf8(piece)))
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
        n = num_merges(vocab_size, len(self.special_tokens))
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


# ----------------------------------------------------------------------------- the artifact


def save(name: str, tokenizer: Tokenizer, *, notebook: str, profile: str, config: dict | None = None,
         metrics: dict | None = None, root: Path | None = None) -> artifacts.Artifact:
    """Save a tokenizer as an artifact: its plain-text file (merges + specials) and config (notebook 04)."""
    if tokenizer.merges is None:
        raise TokenizerError("only a tokenizer with a merge list (trained or loaded) can be saved")
    cfg = {"vocab_size": tokenizer.vocab_size, "pattern": tokenizer.pattern,
           "special_tokens": tokenizer.special_tokens, **(config or {})}
    return artifacts.save(name, notebook=notebook, profile=profile, files={FILENAME: tokenizer.dumps()},
                          config=cfg, metrics=metrics, root=root)


def load(name: str = ARTIFACT, *, profile: str, root: Path | None = None) -> Tokenizer:
    """The tokenizer saved as artifact `name` (default `bpe-tokenizer`, made by notebook 04), sha256-verified."""
    art = artifacts.load(name, profile=profile, root=root)
    tok = Tokenizer.loads(art.text(FILENAME))
    tok.name = f"{name}-{profile}"
    return tok
