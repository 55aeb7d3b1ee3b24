"""Retrieval for retrieval-augmented generation (RAG): find the passages that answer a question.

A model knows only what was in its weights; retrieval hands it the text it needs, at question time. This
module builds the pieces notebook 14 uses and notebook 16 serves:

    Store      passages with ids, from three sources: the course's fact table (one passage per fact),
               WikiText-2 articles (cut into passages of about 100 words at sentence ends) and arXiv
               abstracts; `per_source` passages from each, always the same ones (no randomness)
    BM25       word matching, written from scratch (nanolm.use.bm25), equal to rank_bm25's scores
    Dense      meaning matching: MiniLM sentence vectors in a faiss index (nanolm.use.embed)
    Hybrid     both, fused by reciprocal rank fusion: score(d) = sum over retrievers of 1 / (c + rank(d))
    questions  questions whose answer passage is known, to measure recall@k: how often the right passage
               is among the first k returned (the generator can only use what retrieval hands it)
    save/load  the `rag-index` artifact: passages.json, the passage vectors (safetensors) and a config
               naming the encoder and the BM25 settings; the BM25 index is rebuilt on load (it takes
               milliseconds, and so cannot drift from the passages)

Only a passage's text is indexed, never its title: the test questions are built from titles, and a
retriever that found "Tell me about Robert Boulter." in a title would be copying, not retrieving.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..adapt.sft_data import COURSE_FACTS
from ..core import artifacts
from ..text import corpus
from .bm25 import BM25
from .embed import Dense, DenseIndex, Embedder, check_k, check_query

ARTIFACT = "rag-index"
NOTEBOOK = "14_tools_and_rag"
KIND = "rag-index"
SOURCES = ("facts", "wikitext", "arxiv")
PASSAGES = "passages.json"
RRF_C = 60  # reciprocal rank fusion's constant (Cormack et al. 2009): it damps the weight of the very top ranks
METHODS = ("bm25", "dense", "hybrid")


@dataclass(frozen=True)
class Passage:
    """One retrievable piece of text: a stable id ("wikitext/003-01"), where it came from, title and text."""

    id: str
    source: str
    title: str
    text: str


@dataclass(frozen=True)
class Question:
    """A question and the id of the passage that answers it."""

    text: str
    gold: str


class Store:
    """Passages in a fixed order: row i of every index is passages[i]."""

    def __init__(self, passages: Sequence[Passage]):
        self.passages = tuple(passages)
        if not self.passages:
            raise ValueError("a store needs at least one passage")
        self._row = {p.id: i for i, p in enumerate(self.passages)}
        if len(self._row) != len(self.passages):
            raise ValueError("passage ids must be unique")
        empty = [p.id for p in self.passages if not p.text.strip()]
        if empty:
            raise ValueError(f"passages {empty[:5]} have no text")

    def __len__(self) -> int:
        return len(self.passages)

    def __getitem__(self, row: int) -> Passage:
        return self.passages[row]

    def row(self, passage_id: str) -> int:
        if passage_id not in self._row:
            raise KeyError(f"no passage {passage_id!r} in the store")
        return self._row[passage_id]

    def texts(self) -> list[str]:
        return [p.text for p in self.passages]

    def counts(self) -> dict[str, int]:
        sources = dict.fromkeys([*SOURCES, *(p.source for p in self.passages)])  # the three first, then any added
        return {s: sum(p.source == s for p in self.passages) for s in sources}


# ----------------------------------------------------------------------------- the three sources


def fact_passages(facts: Sequence[tuple[str, str]] = COURSE_FACTS) -> list[Passage]:
    """One passage per (question, answer) of the fact table: the answer is the text, the question stays out."""
    return [Passage(f"facts/{i:03d}", "facts", "Course facts", answer) for i, (_, answer) in enumerate(facts)]


def clean_wikitext(text: str) -> str:
    """Undo WikiText's tokenization: "film , television" -> "film, television", "1 @,@ 000" -> "1,000", "Don 't" -> "Don't"."""
    text = re.sub(r" @(.)@ ", r"\1", text)
    text = re.sub(r" ([.,;:!?)\]]|'(?:s|t|re|ve|ll|d|m)\b|n't\b)", r"\1", text)
    return re.sub(r"([(\[]) ", r"\1", text)


def chunk_words(text: str, max_words: int = 100) -> list[str]:
    """Cut a text into pieces of at most max_words words, at sentence ends (a longer sentence is its own piece)."""
    pieces, cur, n = [], [], 0
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        words = len(sentence.split())
        if cur and n + words > max_words:
            pieces.append(" ".join(cur))
            cur, n = [], 0
        cur.append(sentence)
        n += words
    if cur:
        pieces.append(" ".join(cur))
    return [p for p in pieces if p.strip()]


def wikitext_passages(n: int, max_words: int = 100, per_article: int = 3) -> list[Passage]:
    """The first per_article passages of each WikiText-2 test article, in order, until there are n."""
    out: list[Passage] = []
    for a, doc in enumerate(corpus.documents("wikitext", cap_bytes=None)):
        lines = doc.split("\n")
        title = clean_wikitext(lines[0].strip("= ").strip())
        # headings ("= = Career = =") are not prose: they would make passages of a few words
        body = " ".join(s for s in lines[1:] if not (s.startswith("=") and s.endswith("=")))
        for c, piece in enumerate(chunk_words(clean_wikitext(body), max_words)[:per_article]):
            if len(out) == n:
                return out
            out.append(Passage(f"wikitext/{a:03d}-{c:02d}", "wikitext", title, piece))
    return out


def arxiv_passages(n: int) -> list[Passage]:
    """The first n arXiv papers with a title not seen before: the title is the title, the abstract the text."""
    out, seen = [], set()
    for i, doc in enumerate(corpus.documents("arxiv", cap_bytes=None)):
        title, _, abstract = doc.partition("\n\n")
        if title in seen or not abstract.strip():  # the CSV lists a few papers twice
            continue
        seen.add(title)
        out.append(Passage(f"arxiv/{i:04d}", "arxiv", title, abstract))
        if len(out) == n:
            break
    return out


def build_store(per_source: int = 300, max_words: int = 100, per_article: int = 3) -> Store:
    """Facts, WikiText and arXiv passages, at most per_source of each (the fact table has 26)."""
    if isinstance(per_source, bool) or not isinstance(per_source, int) or per_source <= 0:
        raise ValueError(f"per_source must be a positive integer, got {per_source!r}")
    return Store(fact_passages()[:per_source] + wikitext_passages(per_source, max_words, per_article)
                 + arxiv_passages(per_source))


def questions(store: Store, facts: Sequence[tuple[str, str]] = COURSE_FACTS) -> list[Question]:
    """Questions with a known answer passage in the store, by source:

    facts     the fact table's own question ("What is LoRA?"); the passage holds only the answer
    wikitext  "Tell me about <article title>." -> the article's first passage, its lead
    arxiv     "Which paper is about <title>?" -> that paper's abstract (titles are not indexed)
    """
    out = []
    for p in store.passages:
        if p.source == "facts":
            out.append(Question(facts[int(p.id.split("/")[1])][0], p.id))
        elif p.source == "wikitext" and p.id.endswith("-00"):
            out.append(Question(f"Tell me about {p.title}.", p.id))
        elif p.source == "arxiv":
            out.append(Question(f"Which paper is about {p.title}?", p.id))
    return out


# ----------------------------------------------------------------------------- fusion and recall


def rrf(rankings: Sequence[Sequence[int]], k: int, c: int = RRF_C) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion: (rows, fused scores) of the k best, best first.

    Each ranking lists rows best first; a row at rank r (1-based) earns 1 / (c + r) from it. Ranks, not
    scores, are added because BM25 scores (0..30) and cosines (-1..1) are on scales that do not compare.
    Equal fused scores keep the row that came first in the rankings' order.
    """
    k = check_k(k)
    fused: dict[int, float] = {}
    for ranking in rankings:
        for r, row in enumerate(ranking, start=1):
            fused[int(row)] = fused.get(int(row), 0.0) + 1.0 / (c + r)
    order = sorted(fused, key=lambda row: -fused[row])[:k]  # sorted() is stable: ties keep first-seen order
    return np.array(order, dtype=np.int64), np.array([fused[row] for row in order])


class Hybrid:
    """BM25 and dense retrieval fused by RRF; each contributes its top `depth` passages."""

    def __init__(self, bm25: BM25, dense: Dense, depth: int = 50, c: int = RRF_C):
        if len(bm25) != len(dense.index):
            raise ValueError(f"BM25 holds {len(bm25)} passages but the dense index {len(dense.index)}")
        self.bm25, self.dense, self.depth, self.c = bm25, dense, check_k(depth), c

    def top_k(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        depth = max(self.depth, check_k(k))
        return rrf([self.bm25.top_k(query, depth)[0], self.dense.top_k(query, depth)[0]], k, self.c)


def recall_at_k(top_k: Callable[[str, int], tuple], questions: Sequence[str], gold_rows: Sequence[int],
                ks: Sequence[int] = (1, 3, 5)) -> dict[int, float]:
    """{k: the fraction of questions whose gold row is among the first k rows top_k(question, k) returns}.

    One search per question, at the largest k; recall@k only looks at its first k rows.
    """
    if len(questions) != len(gold_rows) or not questions:
        raise ValueError(f"need one gold row per question and at least one question "
                         f"(got {len(questions)} questions, {len(gold_rows)} gold rows)")
    ks = sorted({check_k(k) for k in ks})
    hits = dict.fromkeys(ks, 0)
    for q, gold in zip(questions, gold_rows, strict=True):
        rows = list(top_k(q, ks[-1])[0])
        for k in ks:
            hits[k] += int(gold) in rows[:k]
    return {k: hits[k] / len(questions) for k in ks}


# ----------------------------------------------------------------------------- the rag-index artifact


@dataclass
class RagIndex:
    """A store with its BM25 index and passage vectors; `search` answers with passages."""

    store: Store
    bm25: BM25
    vectors: DenseIndex
    embedder: Embedder | None = None  # needed for dense and hybrid search (it embeds the question)

    def retriever(self, method: str = "hybrid"):
        """An object with top_k(query, k) -> (rows, scores) for method "bm25", "dense" or "hybrid"."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method == "bm25":
            return self.bm25
        if self.embedder is None:
            raise ValueError(f"{method} search embeds the question: pass the encoder (embedder=MiniLM())")
        dense = Dense(self.embedder, self.vectors)
        return dense if method == "dense" else Hybrid(self.bm25, dense)

    def search(self, query: str, k: int = 3, method: str = "hybrid") -> list[tuple[Passage, float]]:
        """The k best passages for the query, best first, with their scores."""
        rows, scores = self.retriever(method).top_k(check_query(query), k)
        return [(self.store[int(r)], float(s)) for r, s in zip(rows, scores, strict=True)]


def build(store: Store, embedder: Embedder, **bm25_options) -> RagIndex:
    """Index a store: BM25 over the passages' text, and one vector per passage from the embedder."""
    vectors = np.asarray(embedder.encode(store.texts()), dtype=np.float32)
    return RagIndex(store, BM25(store.texts(), **bm25_options), DenseIndex(vectors), embedder)


def save(name: str, index: RagIndex, *, profile: str, notebook: str = NOTEBOOK,
         metrics: dict | None = None, root=None) -> artifacts.Artifact:
    """Save the passages (JSON), their vectors (safetensors) and a config naming the encoder and BM25."""
    import torch

    if index.embedder is None:
        raise ValueError("save needs the index's embedder: the config records which encoder made the vectors")
    config = {"kind": KIND, "passages": len(index.store), "sources": index.store.counts(),
              "bm25": index.bm25.settings(),
              "embedder": {"name": index.embedder.name, "dim": index.embedder.dim,
                           "sha256": index.embedder.fingerprint}}
    return artifacts.save(name, notebook=notebook, profile=profile, config=config, metrics=metrics, root=root,
                          tensors={"embeddings": torch.from_numpy(index.vectors.vectors)},
                          files={PASSAGES: [asdict(p) for p in index.store.passages]})


def load(*, profile: str, embedder: Embedder | None = None, name: str = ARTIFACT, root=None) -> RagIndex:
    """Load a saved index (every file sha256-verified); an embedder other than the one that made it is refused."""
    art = artifacts.load(name, profile=profile, root=root)
    cfg = art.config
    if cfg.get("kind") != KIND:
        raise artifacts.ArtifactError(f"artifact {name!r} is no rag index (kind {cfg.get('kind')!r})")
    if embedder is not None:
        want, got = cfg["embedder"], {"name": embedder.name, "dim": embedder.dim, "sha256": embedder.fingerprint}
        if want != got:  # questions embedded by other weights land in another space: the search would be noise
            raise ValueError(f"the index was embedded with {want['name']} (sha256 {want['sha256'][:12]}...), "
                             f"not with the encoder passed ({got['name']}, sha256 {got['sha256'][:12]}...)")
    store = Store([Passage(**p) for p in json.loads(art.bytes(PASSAGES))])
    vectors = art.tensors()["embeddings"].numpy()
    if len(vectors) != len(store):
        raise artifacts.ArtifactError(f"artifact {name!r} holds {len(vectors)} vectors for {len(store)} passages")
    opts = {k: v for k, v in cfg["bm25"].items() if k != "tokenize"}
    return RagIndex(store, BM25(store.texts(), **opts), DenseIndex(vectors), embedder)
