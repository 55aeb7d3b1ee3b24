"""A tokenizer built from a GGUF file's metadata: SmolLM2's byte-level BPE run by our Tokenizer, with the file's ids.

A GGUF file of tokenizer model "gpt2" holds a byte-level BPE as metadata:

    tokenizer.ggml.tokens       every token as a string in GPT-2's bytes-to-unicode alphabet ('Ġ' is a space)
    tokenizer.ggml.merges       "a b" pairs, best first: merge k joins tokens a and b
    tokenizer.ggml.token_type   1 normal, 3 control (the special tokens: <|im_start|>, <|im_end|>, ...)
    tokenizer.ggml.pre          the name of the split regex ("smollm": GPT-2's, see pretokenize.SMOLLM_PATTERN)
    tokenizer.ggml.bos/eos_token_id, tokenizer.chat_template

The reference is transformers' tokenizer built from the same file (AutoTokenizer with gguf_file=...). To give
its ids exactly, three things differ from a tiktoken-style vocabulary, and `_MergeBPE` handles them:
- Ids. The file puts its special tokens first (0..16), then single bytes, then one token per merge in merge
  order. Our Tokenizer wants ordinary tokens first, all 256 bytes, specials last; so it runs on its own ids
  (the file's ordinary tokens in file order, the bytes the vocabulary lacks, the specials) and
  GGUFTokenizer maps ids at its edge.
- Merges. Only the listed pair (a, b) makes the token a+b, lowest merge rank first (tiktoken's rule lets any
  split of a token merge into it). Merge ranks must follow the file's ids (checked on loading).
- Missing bytes. SmolLM2 has no token for 21 bytes, 8 of which valid UTF-8 holds (0x04, 0x06, 0x13, 0x14,
  0x16, 0x1D and the lead bytes 0xF1, 0xF2 of U+40000..U+BFFFF). The reference drops them before merging
  (BPE with no unknown token), and so do we: text holding them does not decode back to itself.
Special-token text that a user types ("<|im_start|>") is ordinary text unless encode() is told otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from ..core import data, gguf
from .bpe import Pair, Tokenizer
from .pretokenize import TokenizerError

SMOLLM2 = ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")  # the course's real model: (dataset, file)
PRE_PATTERNS = {"smollm": "smollm"}  # tokenizer.ggml.pre -> our split pattern (nanolm.text.pretokenize)
NORMAL, CONTROL = 1, 3  # tokenizer.ggml.token_type values this reader knows


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: printable bytes stand for themselves, the rest move to U+0100 and up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_bytes(token: str) -> bytes:
    """The bytes a byte-level token string spells ('Ġthe' -> b' the'); text outside the alphabet as UTF-8."""
    back = _unicode_to_bytes()
    if all(c in back for c in token):
        return bytes(back[c] for c in token)
    return token.encode("utf-8")  # as transformers reads such a token


class _MergeBPE(Tokenizer):
    """Our Tokenizer with the merge-list rule: only listed pairs merge, and bytes without a token are dropped."""

    def __init__(self, vocab: list[bytes], pattern: str, special_tokens: Mapping[str, int],
                 merges: list[tuple[Pair, int]], dropped: bytes, name: str):
        super().__init__(vocab, pattern, special_tokens, name=name)
        self._merge_table = {pair: token for pair, token in merges}  # (left id, right id) -> merged id
        self._dropped = dropped

    def _pairs(self) -> dict[Pair, int]:
        return self._merge_table  # merged ids rise with merge rank, so the lowest id is the best merge

    def _bpe(self, piece: bytes) -> list[int]:
        return super()._bpe(piece.translate(None, self._dropped) if self._dropped else piece)


class GGUFTokenizer:
    """A GGUF file's byte-level BPE tokenizer with the file's token ids: encode/decode as Tokenizer does."""

    def __init__(self, metadata: Mapping[str, object], name: str = "gguf"):
        """Build from a GGUF file's metadata (nanolm.core.gguf.read(path).metadata); TokenizerError if unsupported."""
        tokens, types, merges, pattern = _checked_fields(metadata)
        self.name, self.pattern = name, pattern
        self.bos_id: int | None = _optional_id(metadata, "tokenizer.ggml.bos_token_id", len(tokens))
        self.eos_id: int | None = _optional_id(metadata, "tokenizer.ggml.eos_token_id", len(tokens))
        self.chat_template: str | None = metadata.get("tokenizer.chat_template")  # type: ignore[assignment]
        self.special_tokens = {t: i for i, (t, k) in enumerate(zip(tokens, types, strict=True)) if k == CONTROL}
        ordinary = [i for i, k in enumerate(types) if k != CONTROL]
        vocab = [token_to_bytes(tokens[i]) for i in ordinary]
        known = set(vocab)
        missing = bytes(b for b in range(256) if bytes([b]) not in known)
        vocab += [bytes([b]) for b in missing]  # never produced: _MergeBPE drops these bytes
        inner_specials = {t: len(vocab) + k for k, t in enumerate(self.special_tokens)}
        self._to_file = ordinary + [-1] * len(missing) + list(self.special_tokens.values())
        self._to_inner = {f: i for i, f in enumerate(self._to_file) if f >= 0}
        self.missing_bytes = missing  # bytes with no token: dropped from text, as the reference does
        self._n = len(tokens)
        merge_ids = _merge_ids(tokens, merges, self._to_inner, set(self.special_tokens.values()))
        self._bpe = _MergeBPE(vocab, pattern, inner_specials, merge_ids, missing, name)

    @property
    def vocab_size(self) -> int:
        """Number of ids in the file (specials included)."""
        return self._n

    def special(self, token: str) -> int:
        """The id of a special token such as '<|im_start|>'."""
        if token not in self.special_tokens:
            raise TokenizerError(f"{token!r} is not a special token of {self.name}")
        return self.special_tokens[token]

    def token_bytes(self, i: int) -> bytes:
        """The bytes of one token id (a special token's text as UTF-8)."""
        return self.decode_bytes([i])

    def __repr__(self) -> str:
        return (f"GGUFTokenizer({self.name!r}, pattern={self.pattern!r}, vocab_size={self.vocab_size}, "
                f"specials={len(self.special_tokens)}, bos={self.bos_id}, eos={self.eos_id})")

    def encode_piece(self, piece: bytes) -> list[int]:
        """Token ids of one pre-token's bytes, merged by BPE as they stand (no split, no special tokens)."""
        to_file = self._to_file
        return [to_file[i] for i in self._bpe._bpe(piece)]

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with no special tokens at all: '<|im_start|>' becomes ordinary tokens."""
        to_file = self._to_file
        return [to_file[i] for i in self._bpe.encode_ordinary(text)]

    def encode(self, text: str, allowed_special: Literal["none", "all"] | Iterable[str] = "none",
               disallowed_special: Literal["text", "raise"] = "text") -> list[int]:
        """Encode text; special-token text becomes a special id only where `allowed_special` says so.

        The policy is Tokenizer.encode's: allowed_special "none" (default), "all" or a set of special
        tokens; disallowed_special "text" (encode it as ordinary text, default) or "raise".
        """
        to_file = self._to_file
        return [to_file[i] for i in self._bpe.encode(text, allowed_special, disallowed_special)]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of a sequence of ids (special tokens as their text)."""
        to_inner = self._to_inner
        ids = ids if isinstance(ids, list) else list(ids)
        try:
            return self._bpe.decode_bytes([to_inner[i] for i in ids])
        except (KeyError, TypeError):
            bad = next(i for i in ids if not (isinstance(i, int) and i in to_inner))
            raise TokenizerError(f"token id {bad!r} is not in this vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of a sequence of ids; bytes that are not valid UTF-8 become U+FFFD (never raises)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)


def _checked_fields(meta: Mapping[str, object]) -> tuple[list[str], list[int], list[str], str]:
    """tokens, token types, merges and our split pattern's name; TokenizerError names what is missing or unknown."""
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        if key not in meta:
            raise TokenizerError(f"GGUF metadata has no {key!r}: it holds no byte-level BPE tokenizer")
    if meta["tokenizer.ggml.model"] != "gpt2":
        raise TokenizerError(f"tokenizer model {meta['tokenizer.ggml.model']!r} is not supported; "
                             "only byte-level BPE ('gpt2') is")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_PATTERNS:
        raise TokenizerError(f"pre-tokenizer {pre!r} is not supported; known: {', '.join(PRE_PATTERNS)}")
    tokens, merges = list(meta["tokenizer.ggml.tokens"]), list(meta["tokenizer.ggml.merges"])
    types = list(meta.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens)))
    if len(types) != len(tokens):
        raise TokenizerError(f"{len(tokens)} tokens but {len(types)} token types")
    unknown = sorted(set(types) - {NORMAL, CONTROL})
    if unknown:
        raise TokenizerError(f"token types {unknown} are not supported (only 1 normal and 3 control)")
    return tokens, types, merges, PRE_PATTERNS[pre]


def _merge_ids(tokens: list[str], merges: list[str], to_inner: Mapping[int, int],
               specials: set[int]) -> list[tuple[Pair, int]]:
    """Each merge as ((left, right), merged) in our ids; checks that merge ranks follow the ids."""
    file_id = {t: i for i, t in enumerate(tokens)}
    out: list[tuple[Pair, int]] = []
    for k, m in enumerate(merges):
        a, sep, b = m.partition(" ")
        ids = [file_id.get(a), file_id.get(b), file_id.get(a + b)]
        if not sep or None in ids:
            raise TokenizerError(f"merge {k} ({m!r}) is not two tokens whose join is a token")
        left, right, merged = (to_inner[i] for i in ids)  # type: ignore[index]
        if out and merged <= out[-1][1]:
            raise TokenizerError(f"merge {k} ({m!r}) makes token {ids[2]}, which comes before the last merge's "
                                 "token: merge ranks must follow token ids")
        out.append(((left, right), merged))
    made = {merged for _, merged in out}
    unreachable = [t for i, t in enumerate(tokens)
                   if i not in specials and len(token_to_bytes(t)) > 1 and to_inner[i] not in made]
    if unreachable:
        raise TokenizerError(f"{len(unreachable)} tokens (e.g. {unreachable[0]!r}) are made by no merge")
    return out


def _optional_id(meta: Mapping[str, object], key: str, n: int) -> int | None:
    i = meta.get(key)
    if i is not None and not (isinstance(i, int) and 0 <= i < n):
        raise TokenizerError(f"{key} is {i!r}, not a token id (vocabulary of {n})")
    return i  # type: ignore[return-value]


def load_tokenizer(path: str | Path | None = None) -> GGUFTokenizer:
    """The tokenizer of a GGUF file (default: the course's SmolLM2-135M-Instruct, dataset `smollm2`)."""
    path = Path(path) if path is not None else data.path(*SMOLLM2)
    return GGUFTokenizer(gguf.read(path).metadata, name=path.stem)
