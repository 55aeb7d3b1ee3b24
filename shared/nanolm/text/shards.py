"""Token shards: the pretraining mix encoded once into uint16 files, and the loaders that cut batches from them.

    build()          every domain of nanolm.corpus -> {domain: {"train": ids, "val": ids}} (uint16 arrays);
                     documents are joined by <|endoftext|>, the last 5% of each domain is held out
                     (the very split of corpus.pretraining_splits, on which the tokenizer was trained)
    save() / load()  the artifact `token-shards` (09 loads it): raw little-endian uint16 files <domain>.<split>.bin
                     plus index.json (token counts, the tokenizer's identity); load() opens every file
                     as a read-only np.memmap, verified by hashing that memmap once (nanolm.artifacts)
    RandomWindows    training batches: random windows of T+1 tokens, domains drawn in proportion to
                     their tokens (or given weights), optionally BOS-aligned (a window starts right
                     after an <|endoftext|>); batch i depends only on (seed, i), so state_dict() is two
                     numbers and a resume is exact
    FixedWindows     validation batches: the same evenly spread, non-overlapping windows every time

Both loaders follow the training loop's data-source protocol: next_batch() -> (x, y) int64 tensors
of shape (B, T) with y = x shifted by one, state_dict() -> JSON-able dict, load_state_dict(dict).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core import artifacts
from ..core.files import sha256_bytes
from . import corpus

ARTIFACT = "token-shards"
INDEX = "index.json"
FORMAT = "nanolm-token-shards v1"
DTYPE = np.dtype("<u2")  # raw little-endian uint16: ids 0..65535
MAX_VOCAB = 1 << 16
EOT = "<|endoftext|>"
SPLITS = ("train", "val")
_MASK64 = (1 << 64) - 1


class ShardError(ValueError):
    """A tokenizer that does not fit uint16, a shard that does not match its index or tokenizer."""


# ----------------------------------------------------------------------------- encoding


def split_documents(docs: Sequence[str], val_fraction: float = 0.05) -> tuple[list[str], list[str]]:
    """(train_docs, val_docs): the cut of corpus.split on the joined text, at document level.

    Documents before the cut go to train, after it to val; the document the cut falls into is
    cut in two. So DOC_SEP.join(train_docs) is corpus.split(DOC_SEP.join(docs))[0] up to
    whitespace at the cut, and no held-out text was seen by the tokenizer.
    """
    text = corpus.DOC_SEP.join(docs)
    cut = len(corpus.split(text, val_fraction)[0])
    train, val, pos = [], [], 0
    for doc in docs:
        end = pos + len(doc)
        if end <= cut:
            train.append(doc)
        elif pos >= cut:
            val.append(doc)
        else:
            head, tail = doc[: cut - pos], doc[cut - pos :]
            if head.strip():
                train.append(head)
            if tail.strip():
                val.append(tail)
        pos = end + len(corpus.DOC_SEP)
    return train, val


def check_vocab(tokenizer) -> None:
    """Refuse a tokenizer whose ids do not all fit into uint16 (vocab_size > 65536)."""
    if tokenizer.vocab_size > MAX_VOCAB:
        raise ShardError(
            f"vocab_size {tokenizer.vocab_size} does not fit into uint16 shards (ids must be <= 65535, "
            f"i.e. vocab_size <= {MAX_VOCAB}); use a smaller vocabulary or store the shards as uint32"
        )


def to_uint16(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    """Ids as a little-endian uint16 array; any id outside 0..65535 is refused (never wrapped)."""
    arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= MAX_VOCAB):
        bad = int(arr.max()) if arr.max() >= MAX_VOCAB else int(arr.min())
        raise ShardError(f"token id {bad} does not fit into uint16 (0..65535)")
    return arr.astype(DTYPE)


def _encoder(tokenizer):
    """A function list[str] -> list[list[int]] (tiktoken's batch encoder when available)."""
    try:
        enc = tokenizer.to_tiktoken()
        return lambda docs: enc.encode_ordinary_batch(list(docs))
    except (ImportError, AttributeError):
        return lambda docs: [tokenizer.encode_ordinary(d) for d in docs]


def encode_documents(tokenizer, docs: Sequence[str]) -> np.ndarray:
    """Documents -> one uint16 array: doc_0 <|endoftext|> doc_1 <|endoftext|> ... doc_n (no trailing EOT).

    Each document is encoded as ordinary text, so a literal '<|endoftext|>' inside one can never
    become the separator id.
    """
    check_vocab(tokenizer)
    eot = tokenizer.special(EOT)
    out: list[int] = []
    for k, ids in enumerate(_encoder(tokenizer)(docs)):
        if k:
            out.append(eot)
        out.extend(ids)
    return to_uint16(out)


def build(tokenizer, *, cap_bytes: int | None = corpus.DEFAULT_CAP, val_fraction: float = 0.05,
          domains: Sequence[str] = corpus.DOMAINS) -> dict[str, dict[str, np.ndarray]]:
    """{domain: {"train": uint16 ids, "val": uint16 ids}} for the pretraining mix."""
    check_vocab(tokenizer)
    out = {}
    for d in domains:
        train_docs, val_docs = split_documents(corpus.documents(d, cap_bytes), val_fraction)
        out[d] = {"train": encode_documents(tokenizer, train_docs), "val": encode_documents(tokenizer, val_docs)}
    return out


def tokenizer_identity(tokenizer) -> dict:
    """What the shards must be read with: name, vocab size, EOT id and the sha256 of the tokenizer file."""
    return {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.special(EOT),
            "sha256": sha256_bytes(tokenizer.dumps().encode("utf-8"))}


def filename(domain: str, split: str) -> str:
    """'<domain>.<split>.bin', the file of one shard inside the artifact."""
    return f"{domain}.{split}.bin"


# ----------------------------------------------------------------------------- the artifact


def save(name: str, shards: Mapping[str, Mapping[str, np.ndarray]], tokenizer, *, notebook: str, profile: str,
         config: dict | None = None, metrics: dict | None = None, root: Path | None = None) -> artifacts.Artifact:
    """Save {domain: {split: ids}} as an artifact (`token-shards`): raw uint16 files + index.json."""
    check_vocab(tokenizer)
    files: dict[str, bytes | dict] = {}
    index = {"format": FORMAT, "dtype": "uint16-le", "separator": EOT,
             "tokenizer": tokenizer_identity(tokenizer), "order": list(shards), "domains": {}}
    for d, parts in shards.items():
        index["domains"][d] = {}
        for split in SPLITS:
            arr = to_uint16(parts[split])
            files[filename(d, split)] = arr.tobytes()
            index["domains"][d][split] = {"file": filename(d, split), "tokens": int(arr.size),
                                          "documents": int((arr == index["tokenizer"]["eot_id"]).sum()) + 1}
    files[INDEX] = index
    return artifacts.save(name, notebook=notebook, profile=profile, files=files,
                          config={**(config or {}), "tokenizer": index["tokenizer"]}, metrics=metrics, root=root)


@dataclass
class TokenShards:
    """Verified shards on disk, opened as read-only memmaps: shards.train['code'] is a uint16 array."""

    index: dict
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    artifact: artifacts.Artifact | None = None

    @property
    def domains(self) -> list[str]:
        return list(self.train)

    @property
    def eot_id(self) -> int:
        return int(self.index["tokenizer"]["eot_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.index["tokenizer"]["vocab_size"])

    def tokens(self, split: str = "train") -> dict[str, int]:
        """Token count per domain of one split."""
        return {d: int(a.size) for d, a in getattr(self, split).items()}

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse a tokenizer other than the one the shards were encoded with."""
        if tokenizer_identity(tokenizer)["sha256"] != self.index["tokenizer"]["sha256"]:
            raise ShardError(f"these shards were encoded with another tokenizer ({self.index['tokenizer']['name']}, "
                             f"vocab {self.vocab_size}); re-run notebook 08 after notebook 04")

    def train_source(self, batch_size: int, block_size: int, **kw) -> RandomWindows:
        """A RandomWindows over the train split (keyword arguments go to RandomWindows)."""
        return RandomWindows(self.train, batch_size, block_size, eot_id=self.eot_id, **kw)

    def val_sources(self, batch_size: int, block_size: int, max_batches: int | None = None,
                    device: str | torch.device = "cpu") -> dict[str, FixedWindows]:
        """{domain: FixedWindows over its held-out tokens}."""
        return {d: FixedWindows(a, batch_size, block_size, max_batches, device=device) for d, a in self.val.items()}


def load(name: str = ARTIFACT, *, profile: str, tokenizer=None, root: Path | None = None) -> TokenShards:
    """Load `token-shards` and memmap its files read-only, each verified by hashing its memmap once.

    index.json is read and checked by nanolm.artifacts; the shard files are never read into memory:
    Artifact.memmap() hashes the very pages it maps, so a changed shard is refused (sha256 differs).
    """
    art = artifacts.load(name, profile=profile, root=root, lazy=lambda fn: fn.endswith(".bin"))
    index = art.json(INDEX)
    if index.get("format") != FORMAT:
        raise ShardError(f"{name}: unknown format {index.get('format')!r}; re-run notebook 08")
    arrays: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
    for d in index["order"]:  # the JSON file sorts the keys of "domains"; "order" keeps the saved order
        for split in SPLITS:
            meta = index["domains"][d][split]
            size = art.manifest["files"].get(meta["file"], {}).get("bytes")
            if size != 2 * meta["tokens"]:
                raise ShardError(f"{name}: {meta['file']} holds {size} bytes, the index says {meta['tokens']} "
                                 "tokens; re-run notebook 08")
            arrays[split][d] = art.memmap(meta["file"], DTYPE)
    shards = TokenShards(index, arrays["train"], arrays["val"], art)
    if tokenizer is not None:
        shards.check_tokenizer(tokenizer)
    return shards


# ----------------------------------------------------------------------------- loaders


def _batch_seed(seed: int, i: int) -> int:
    """A well-mixed 63-bit seed for batch i (splitmix64 of seed and i)."""
    z = (seed * 0x9E3779B97F4A7C15 + (i + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def _windows(arr: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
    """rows[r] = arr[offsets[r] : offsets[r] + length] -> (len(offsets), length) int64."""
    return np.asarray(arr[offsets[:, None] + np.arange(length)], dtype=np.int64)


def bos_starts(arr: np.ndarray, eot_id: int, block_size: int) -> np.ndarray:
    """Offsets right after an <|endoftext|> (and 0) from which a window of block_size+1 tokens fits."""
    starts = np.concatenate([[0], np.flatnonzero(np.asarray(arr) == eot_id) + 1])
    return starts[starts + block_size + 1 <= arr.size].astype(np.int64)


class RandomWindows:
    """Random training windows over several domains; batch i is a function of (seed, i) alone."""

    def __init__(self, shards: Mapping[str, np.ndarray], batch_size: int, block_size: int, *, seed: int = 0,
                 weights: Mapping[str, float] | None = None, bos_aligned: bool = False,
                 eot_id: int | None = None, device: str | torch.device = "cpu"):
        if bos_aligned and eot_id is None:
            raise ValueError("bos_aligned windows need eot_id (the <|endoftext|> id)")
        self.domains = list(shards)
        self.arrays = [shards[d] for d in self.domains]
        self.batch_size, self.block_size, self.seed = batch_size, block_size, seed
        self.bos_aligned, self.device = bos_aligned, torch.device(device)
        if bos_aligned:
            self.starts = [bos_starts(a, eot_id, block_size) for a in self.arrays]
            counts = [len(s) for s in self.starts]
        else:
            counts = [max(a.size - block_size, 0) for a in self.arrays]  # offsets 0 .. n-T-1
        self.counts = np.array(counts, dtype=np.int64)
        if weights is None:
            w = np.array([a.size for a in self.arrays], dtype=np.float64)  # in proportion to tokens
        else:
            unknown = set(weights) - set(self.domains)
            if unknown:
                raise ValueError(f"weights for unknown domains {sorted(unknown)}; known: {self.domains}")
            w = np.array([float(weights.get(d, 0.0)) for d in self.domains])
            if (w < 0).any():
                raise ValueError("domain weights must be >= 0")
        w = np.where(self.counts > 0, w, 0.0)
        if w.sum() <= 0:
            raise ValueError(f"no domain has a window of {block_size + 1} tokens with positive weight")
        self.weights = w / w.sum()
        self._w = torch.tensor(self.weights)
        self.batches = 0  # how many batches have been drawn: the whole position in the stream
        self._gen = torch.Generator()

    def batch_at(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number i of this stream (the same on every call): x, y of shape (B, T)."""
        g = self._gen.manual_seed(_batch_seed(self.seed, i))
        B, T = self.batch_size, self.block_size
        dom = torch.multinomial(self._w, B, replacement=True, generator=g).numpy()  # (B,) domain per row
        u = torch.rand(B, generator=g, dtype=torch.float64).numpy()  # (B,) position within the domain
        rows = np.empty((B, T + 1), dtype=np.int64)
        for k in np.unique(dom):
            sel = dom == k
            pick = np.minimum((u[sel] * self.counts[k]).astype(np.int64), self.counts[k] - 1)
            offsets = self.starts[k][pick] if self.bos_aligned else pick
            rows[sel] = _windows(self.arrays[k], offsets, T + 1)
        t = torch.from_numpy(rows)
        return t[:, :-1].to(self.device), t[:, 1:].to(self.device)  # (B, T) each: y is x shifted by one

    def domains_at(self, i: int) -> list[str]:
        """The domain each row of batch i is drawn from."""
        g = self._gen.manual_seed(_batch_seed(self.seed, i))
        dom = torch.multinomial(self._w, self.batch_size, replacement=True, generator=g)
        return [self.domains[k] for k in dom.tolist()]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of the stream: x, y int64 of shape (B, T)."""
        batch = self.batch_at(self.batches)
        self.batches += 1
        return batch

    def state_dict(self) -> dict:
        """The position in the stream (and what must match to resume it), JSON-able."""
        return {"kind": "random_windows", "seed": self.seed, "batches": self.batches,
                "batch_size": self.batch_size, "block_size": self.block_size, "bos_aligned": self.bos_aligned,
                "domains": self.domains, "weights": [round(float(w), 12) for w in self.weights]}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue exactly where state_dict() was taken; a stream of another shape is refused."""
        mine = self.state_dict()
        for key in ("kind", "batch_size", "block_size", "bos_aligned", "domains", "weights"):
            if state.get(key) != mine[key]:
                raise ValueError(f"cannot resume: {key} is {state.get(key)!r} in the state, {mine[key]!r} here")
        self.seed, self.batches = int(state["seed"]), int(state["batches"])


class FixedWindows:
    """Validation batches: evenly spread, non-overlapping windows of one shard, in the same order every pass."""

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, max_batches: int | None = None,
                 device: str | torch.device = "cpu"):
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.device = torch.device(device)
        every = np.arange(0, max(tokens.size - block_size, 0), block_size, dtype=np.int64)  # stride T
        n = len(every) // batch_size
        if max_batches is not None:
            n = min(n, max_batches)
        if n < 1:
            raise ValueError(f"{tokens.size} tokens hold fewer than {batch_size} windows of {block_size + 1}")
        pick = np.round(np.linspace(0, len(every) - 1, n * batch_size)).astype(np.int64)
        self.offsets = every[pick].reshape(n, batch_size)  # (n_batches, B)
        self.position = 0

    def __len__(self) -> int:
        """Batches in one pass."""
        return len(self.offsets)

    @property
    def tokens_per_pass(self) -> int:
        return self.offsets.size * self.block_size

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of the pass (wrapping around): x, y int64 of shape (B, T)."""
        rows = torch.from_numpy(_windows(self.tokens, self.offsets[self.position % len(self)], self.block_size + 1))
        self.position = (self.position + 1) % len(self)
        return rows[:, :-1].to(self.device), rows[:, 1:].to(self.device)

    def reset(self) -> None:
        """Back to the first batch."""
        self.position = 0

    def state_dict(self) -> dict:
        return {"kind": "fixed_windows", "position": self.position}

    def load_state_dict(self, state: Mapping) -> None:
        self.position = int(state["position"]) % len(self)
