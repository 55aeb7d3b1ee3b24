"""Character-level vocabulary: encode/decode text, and the `shakespeare-char` artifact.

Notebook 03 builds the vocabulary of Tiny Shakespeare and saves it with a 90/10
train/val split of the whole corpus as the artifact `shakespeare-char`; notebooks 05
and 07 read it back with `load_shakespeare_char(profile)`.

Artifact layout (checkpoints/<profile>/shakespeare-char/):
  tensors.safetensors   "train", "val": int32 token ids, 1-D
  vocab.json            the characters, in id order (a JSON list of one-character strings)
  manifest.json         config: dataset, file, vocab_size, split, n_train, n_val
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ..core import artifacts

ARTIFACT = "shakespeare-char"
VOCAB_FILE = "vocab.json"


class CharTokenizer:
    """A fixed list of characters; id i is chars[i]."""

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"a character vocabulary holds single characters; got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            dupes = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"duplicate characters in vocabulary: {dupes!r}")
        if not chars:
            raise ValueError("a character vocabulary cannot be empty")
        self.chars: list[str] = chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of every distinct character in `text`, sorted by code point."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of `text`; a character outside the vocabulary raises ValueError."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            pos = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(
                f"unknown character(s) {''.join(unknown)!r} (first at position {pos}); "
                f"the vocabulary has {self.vocab_size} characters: {''.join(self.chars)!r}"
            ) from None

    def decode_bytes(self, ids: Iterable[int] | torch.Tensor) -> bytes:
        """decode() as UTF-8 bytes (the same method the BPE and GGUF tokenizers have)."""
        return self.decode(ids).encode("utf-8")

    def encode_tensor(self, text: str) -> torch.Tensor:
        """encode() as a 1-D int64 tensor."""
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of a sequence of ids; an id outside [0, vocab_size) raises ValueError."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
            out.append(self.chars[i])
        return "".join(out)

    def to_json(self) -> list[str]:
        """The vocabulary as a JSON-able list of characters (what vocab.json holds)."""
        return list(self.chars)

    @classmethod
    def from_json(cls, data: str | bytes | list[str]) -> CharTokenizer:
        """Rebuild a tokenizer from to_json()'s list (or its JSON text)."""
        if isinstance(data, str | bytes):
            data = json.loads(data)
        return cls(data)


def split_ids(ids: torch.Tensor, train_frac: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `train_frac` of a 1-D id tensor for training, the rest for validation (no shuffling)."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac}")
    n = int(train_frac * len(ids))
    return ids[:n], ids[n:]


def save(
    name: str,
    tokenizer: CharTokenizer,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    *,
    notebook: str,
    profile: str,
    config: dict | None = None,
    root: Path | None = None,
) -> artifacts.Artifact:
    """Save a character vocabulary and its train/val ids as an artifact (notebook 03: `shakespeare-char`)."""
    cfg = {"vocab_size": tokenizer.vocab_size, "n_train": len(train_ids), "n_val": len(val_ids)}
    return artifacts.save(
        name,
        notebook=notebook,
        profile=profile,
        tensors={"train": train_ids.to(torch.int32), "val": val_ids.to(torch.int32)},
        files={VOCAB_FILE: tokenizer.to_json()},
        config={**cfg, **(config or {})},
        root=root,
    )


def load(
    name: str = ARTIFACT, *, profile: str, root: Path | None = None
) -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    """(tokenizer, train_ids, val_ids) from a character artifact (default `shakespeare-char`); ids as int64."""
    art = artifacts.load(name, profile=profile, root=root)
    tok = CharTokenizer.from_json(art.json(VOCAB_FILE))
    tensors = art.tensors()
    train, val = tensors["train"].long(), tensors["val"].long()
    for part, t in (("train", train), ("val", val)):
        if t.ndim != 1 or (len(t) and (int(t.min()) < 0 or int(t.max()) >= tok.vocab_size)):
            raise artifacts.ArtifactError(
                f"artifact {name!r}: {part} ids do not fit its vocabulary of {tok.vocab_size}; "
                f"re-run {artifacts.producer(name)}"
            )
    return tok, train, val
