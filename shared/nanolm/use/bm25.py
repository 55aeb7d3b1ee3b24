"""BM25 from scratch: the word-matching retriever that search engines used for decades, and still do.

A passage scores high for a query when it holds the query's words, rare words count more than common
ones, and a word said many times counts more, but with diminishing returns. For a query q = (w_1, ..., w_m)
and a passage d of |d| words, with tf(w, d) the number of times w occurs in d:

    score(q, d) = sum over the query's words w of  idf(w) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl))

    k1 = 1.5   how fast repeats saturate: tf = 1 gives 1, tf -> infinity gives k1 + 1 = 2.5 (times the idf)
    b  = 0.75  how much a long passage is penalized: b = 0 ignores length, b = 1 divides by |d| / avgdl
    avgdl      the mean passage length, in words

A query word said twice is counted twice (as rank_bm25 does). The idf (inverse document frequency) of a
word found in n of the N passages comes in two flavours here, and libraries disagree on which:

    "lucene"  idf = log(1 + (N - n + 0.5) / (n + 0.5))   always > 0; Lucene, Elasticsearch, bm25s, pyserini
    "okapi"   idf = log((N - n + 0.5) / (n + 0.5))       the original Robertson-Sparck Jones weight

The okapi idf is negative for a word in more than half the passages: such a word would *lower* a score.
rank_bm25's BM25Okapi floors it: every negative idf becomes epsilon * (the mean idf over the vocabulary,
negatives included), epsilon = 0.25. `BM25(idf="okapi")` does the same, so its scores equal rank_bm25's.
Beware a quirk it copies: in a tiny corpus where most words are common, that mean is itself negative, and
so is the "floor".
The two flavours rank nearly alike for rare words (log(x) and log(1 + x) differ little when x is large) and
part ways for common ones. "lucene" is the default: no special case, no score that drops on a match.
(Lucene itself also drops the constant factor k1 + 1, which changes every score but no ranking.)

Words are lowercase runs of letters, digits and underscores (the regex \\w+ on text.lower()), so
"BPE's merges" -> ["bpe", "s", "merges"]. No stemming and no stop words: that keeps it easy to check.
The index is a posting list per word (the passages holding it and how often), so a query touches only the
passages that share a word with it, like a real search engine, and never an N x vocabulary matrix.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .embed import check_k, check_query

IDFS = ("lucene", "okapi")
_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """BM25's words: lowercase \\w+ runs ("Don't panic!" -> ["don", "t", "panic"])."""
    return _WORD.findall(text.lower())


def idf_weights(df: np.ndarray, n_docs: int, kind: str = "lucene", epsilon: float = 0.25) -> np.ndarray:
    """The idf of each word from its document frequency df (how many of the n_docs passages hold it)."""
    df = np.asarray(df, dtype=np.float64)
    if kind == "lucene":
        return np.log1p((n_docs - df + 0.5) / (df + 0.5))
    if kind != "okapi":
        raise ValueError(f"idf must be one of {IDFS}, got {kind!r}")
    # log(a) - log(b), not log(a / b): the very expression rank_bm25 evaluates, so round-off matches too
    idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
    floor = epsilon * idf.mean()  # the mean of the raw idfs, negative ones included, as rank_bm25 takes it
    return np.where(idf < 0, floor, idf)


class BM25:
    """Okapi BM25 over a list of passages: `scores(query)` for all of them, `top_k(query, k)` for the best."""

    def __init__(self, passages: Sequence[str], *, k1: float = 1.5, b: float = 0.75, idf: str = "lucene",
                 epsilon: float = 0.25):
        if isinstance(passages, str) or not len(passages):
            raise ValueError("BM25 needs a non-empty list of passages (one string each)")
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        if idf not in IDFS:
            raise ValueError(f"idf must be one of {IDFS}, got {idf!r}")
        self.k1, self.b, self.idf_kind, self.epsilon = float(k1), float(b), idf, float(epsilon)
        self.vocab: dict[str, int] = {}  # word -> column, in order of first appearance
        self._index([tokenize(p) for p in passages])

    def _index(self, docs: list[list[str]]) -> None:
        """Posting lists: for word j, the passages rows[start[j]:start[j+1]] hold it tf[...] times."""
        words, rows, tfs = [], [], []
        for row, doc in enumerate(docs):
            for word, tf in Counter(doc).items():
                words.append(self.vocab.setdefault(word, len(self.vocab)))
                rows.append(row)
                tfs.append(tf)
        words_a = np.asarray(words, dtype=np.int64)
        order = np.argsort(words_a, kind="stable")  # group by word; rows stay ascending within a word
        self._rows = np.asarray(rows, dtype=np.int64)[order]
        self._tf = np.asarray(tfs, dtype=np.float64)[order]
        df = np.bincount(words_a, minlength=len(self.vocab))  # each (word, passage) pair was counted once
        self._start = np.concatenate([[0], np.cumsum(df)])
        self.n_docs = len(docs)
        self.doc_len = np.array([len(d) for d in docs], dtype=np.float64)
        self.avgdl = self.doc_len.sum() / self.n_docs
        if self.avgdl == 0:
            raise ValueError("no passage has a single word in it: there is nothing to match")
        self.df = df
        self.idf = idf_weights(df, self.n_docs, self.idf_kind, self.epsilon)
        # the length part of the denominator depends on the passage only: compute it once
        self._norm = self.k1 * (1 - self.b + self.b * self.doc_len / self.avgdl)

    def __len__(self) -> int:
        return self.n_docs

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every passage for the query: float64 [n_passages]; 0 where no word matches."""
        words = tokenize(check_query(query))
        if not words:
            raise ValueError(f"the query {query!r} has no words (BM25 words are \\w+ runs)")
        out = np.zeros(self.n_docs)
        for word in words:  # repeated query words add up, as in rank_bm25
            j = self.vocab.get(word)
            if j is None:
                continue  # a word no passage holds adds 0 to every score
            lo, hi = self._start[j], self._start[j + 1]
            rows, tf = self._rows[lo:hi], self._tf[lo:hi]
            out[rows] += self.idf[j] * (tf * (self.k1 + 1) / (tf + self._norm[rows]))
        return out

    def top_k(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the k best passages, best first; equal scores keep the lower row first."""
        k = min(check_k(k), self.n_docs)
        s = self.scores(query)
        rows = np.argsort(-s, kind="stable")[:k]
        return rows, s[rows]

    def settings(self) -> dict:
        """What it takes to rebuild this index from the same passages (saved in the rag-index config)."""
        return {"k1": self.k1, "b": self.b, "idf": self.idf_kind, "epsilon": self.epsilon,
                "tokenize": "lowercase \\w+"}
