"""Retrieval (nanolm.use.rag, bm25, embed): BM25 equal to rank_bm25 and to a hand computation, faiss equal to
exact search, recall@k where the answer is known, the rag-index artifact, and the errors a learner meets."""

import hashlib
import math

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from nanolm.core import artifacts
from nanolm.use import rag
from nanolm.use.bm25 import BM25, tokenize
from nanolm.use.embed import DenseIndex, MiniLM

# BM25 scores are sums of a few float64 terms; ours and rank_bm25's differ only in the order of additions
# (the mean idf) and in np.log vs math.log, i.e. by a few ulps: 1e-12 relative is a thousand times that.
BM25_RTOL = BM25_ATOL = 1e-12
# faiss and numpy both sum 384 (or 32) float32 products, in different orders: float32 round-off
F32_ATOL = 1e-5

TINY = ["the cat sat", "the dog", "cat cat dog bird"]  # lengths 3, 2, 4: avgdl = 3


@pytest.fixture(autouse=True)
def one_faiss_thread():
    import faiss

    faiss.omp_set_num_threads(1)


class HashEmbedder:
    """A stand-in encoder: each word adds 1 to one of `dim` slots (by a hash of the word), then normalize."""

    name, dim, fingerprint = "hash-bag-of-words", 64, "0" * 64

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in tokenize(t):
                out[i, int(hashlib.sha256(w.encode()).hexdigest(), 16) % self.dim] += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


SYNTHETIC = [
    rag.Passage("s/0", "facts", "t", "Volcanoes erupt molten lava and ash."),
    rag.Passage("s/1", "facts", "t", "Penguins swim in cold southern oceans."),
    rag.Passage("s/2", "facts", "t", "Violins have four strings played with a bow."),
    rag.Passage("s/3", "facts", "t", "Glaciers carve valleys over thousands of years."),
    rag.Passage("s/4", "facts", "t", "Espresso is coffee brewed under high pressure."),
]
SYNTHETIC_QUESTIONS = [("Where do penguins swim?", "s/1"), ("How many strings has a violin? violins", "s/2"),
                       ("What is espresso coffee?", "s/4"), ("What do volcanoes erupt?", "s/0")]


class LuceneReference(BM25Okapi):
    """rank_bm25's scoring loop with the Lucene idf, to check our default variant against the same reference."""

    def _calc_idf(self, nd):
        for word, freq in nd.items():
            self.idf[word] = math.log(1 + (self.corpus_size - freq + 0.5) / (freq + 0.5))


def test_tiny_case_by_hand():
    # "cat": N = 3, n = 2. d0: tf 1, |d| = 3 -> 1 * 2.5 / (1 + 1.5 * (0.25 + 0.75)) = 1.
    # d2: tf 2, |d| = 4 -> 2 * 2.5 / (2 + 1.5 * (0.25 + 0.75 * 4 / 3)) = 5 / 3.875 = 40 / 31.
    lucene = math.log(1 + 1.5 / 2.5)
    assert BM25(TINY).scores("cat") == pytest.approx([lucene, 0, lucene * 40 / 31], rel=1e-15)
    # okapi idf: "sat" (n = 1) is log(2.5 / 1.5); "cat" (n = 2) is log(1.5 / 2.5) < 0, floored to
    # 0.25 * mean idf over the 5 words = 0.25 * (3 log 0.6 + 2 log(5/3)) / 5 = -log(5/3) / 20 (negative!)
    okapi = BM25(TINY, idf="okapi")
    assert okapi.scores("sat") == pytest.approx([math.log(5 / 3), 0, 0], rel=1e-15)
    assert okapi.scores("cat") == pytest.approx([-math.log(5 / 3) / 20, 0, -math.log(5 / 3) / 20 * 40 / 31],
                                                rel=1e-12)
    assert BM25(TINY).scores("cat cat")[0] == pytest.approx(2 * lucene)  # a repeated query word counts twice
    assert BM25(TINY).scores("CAT, zebra!")[0] == pytest.approx(lucene)  # lowercased; unknown words add 0


@pytest.mark.parametrize("idf", ["okapi", "lucene"])
def test_bm25_equals_rank_bm25_on_real_passages(idf):
    texts = rag.build_store(40).texts()
    ours = BM25(texts, idf=idf)
    ref = (BM25Okapi if idf == "okapi" else LuceneReference)([tokenize(t) for t in texts])
    queries = ["What is a transformer?", "the of and a", "neural network image segmentation",
               "Tell me about Robert Boulter.", "reinforcement learning learning learning", "zzzz unknownword"]
    for q in queries:
        np.testing.assert_allclose(ours.scores(q), ref.get_scores(tokenize(q)), rtol=BM25_RTOL, atol=BM25_ATOL)
    some = ours.scores("the")
    assert (some > 0).any() and ours.idf.shape == (len(ours.vocab),)


def test_top_k_order_and_ties():
    bm = BM25(TINY)
    rows, scores = bm.top_k("cat", 5)  # k is capped at the number of passages
    assert rows.tolist() == [2, 0, 1] and np.all(np.diff(scores) <= 0)
    assert bm.top_k("bird dog", 1)[0].tolist() == [2]
    assert bm.top_k("zebra", 2)[0].tolist() == [0, 1]  # all scores 0: equal scores keep the lower row first


def test_faiss_equals_exact_search():
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((500, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = DenseIndex(vecs)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    (rows, scores), (erows, escores) = index.search(queries, 10), index.exact(queries, 10)
    assert np.array_equal(rows, erows)
    np.testing.assert_allclose(scores, escores, atol=F32_ATOL)
    assert index.search(queries[0], 1000)[0].shape == (1, 500)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # sentence-transformers' imports
def test_minilm_offline_equals_sentence_transformers_and_retrieves():
    from sentence_transformers import SentenceTransformer

    emb = MiniLM()
    facts = rag.fact_passages()[:8]  # SFT, token, tokenizer, BPE, next token, transformer, attention, context
    vecs = emb.encode([p.text for p in facts])
    assert vecs.shape == (8, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    st = SentenceTransformer(str(emb.folder), device="cpu").encode([p.text for p in facts[:3]])
    np.testing.assert_allclose(vecs[:3], st, atol=F32_ATOL)  # our mean pooling is theirs
    index = DenseIndex(vecs)
    q = emb.encode(["How does attention work?", "What does byte-pair encoding do?"])
    (rows, scores), (erows, escores) = index.search(q, 3), index.exact(q, 3)
    assert np.array_equal(rows, erows) and np.allclose(scores, escores, atol=F32_ATOL)
    assert rows[:, 0].tolist() == [6, 3]


def test_recall_at_k_on_a_synthetic_store():
    store = rag.Store(SYNTHETIC)
    index = rag.build(store, HashEmbedder())
    qs, gold = [q for q, _ in SYNTHETIC_QUESTIONS], [store.row(g) for _, g in SYNTHETIC_QUESTIONS]
    for method in rag.METHODS:
        assert rag.recall_at_k(index.retriever(method).top_k, qs, gold) == {1: 1.0, 3: 1.0, 5: 1.0}, method
    fixed = lambda q, k: (np.array([0, 1, 2])[:k], None)  # noqa: E731  always the same three rows
    assert rag.recall_at_k(fixed, ["a", "b", "c", "d"], [0, 2, 4, 1], ks=(1, 3)) == {1: 0.25, 3: 0.75}


def test_rrf_fuses_ranks():
    rows, scores = rag.rrf([[3, 1, 2], [1, 3, 0]], k=4, c=60)
    assert rows.tolist() == [3, 1, 2, 0]  # 3 and 1 tie (1/61 + 1/62 each): the first seen comes first
    assert scores[0] == pytest.approx(1 / 61 + 1 / 62) and scores[2] == pytest.approx(1 / 63)


def test_store_is_deterministic_and_bounded():
    a, b = rag.build_store(10), rag.build_store(10)
    assert a.passages == b.passages and a.counts() == {"facts": 10, "wikitext": 10, "arxiv": 10}
    wiki = [p for p in a.passages if p.source == "wikitext"]
    assert all(len(p.text.split()) <= 100 or "." not in p.text[:-1] for p in wiki)
    assert " @-@ " not in " ".join(p.text for p in wiki)
    qs = rag.questions(a)
    assert qs[0] == rag.Question("What does SFT stand for?", "facts/000")
    assert all(q.text not in a[a.row(q.gold)].text for q in qs)  # no question is a copy of its passage
    assert len(rag.chunk_words("One two. Three four five. Six.", max_words=3)) == 3


def test_save_load_round_trip_and_tamper(isolated_checkpoints):
    emb = HashEmbedder()
    index = rag.build(rag.Store(SYNTHETIC), emb, k1=1.2, b=0.5, idf="okapi")
    art = rag.save("rag-index", index, profile="smoke", metrics={"recall@1": 1.0})
    assert art.config["bm25"]["idf"] == "okapi" and art.config["embedder"]["name"] == emb.name
    back = rag.load(profile="smoke", embedder=emb)
    assert back.store.passages == index.store.passages
    assert np.array_equal(back.vectors.vectors, index.vectors.vectors)
    assert (back.bm25.k1, back.bm25.b, back.bm25.idf_kind) == (1.2, 0.5, "okapi")
    np.testing.assert_array_equal(back.bm25.scores("penguins swim"), index.bm25.scores("penguins swim"))
    assert back.search("penguins", 1)[0][0].id == "s/1"
    with pytest.raises(ValueError, match="pass the encoder"):
        rag.load(profile="smoke").search("penguins", 1, method="dense")
    other = HashEmbedder()
    other.fingerprint = "1" * 64
    with pytest.raises(ValueError, match="embedded with"):
        rag.load(profile="smoke", embedder=other)
    path = art.path / rag.PASSAGES
    path.write_text(path.read_text().replace("Penguins", "Puffins"))
    with pytest.raises(artifacts.ArtifactError, match="does not match its manifest"):
        rag.load(profile="smoke")


def test_bad_inputs():
    bm = BM25(TINY)
    for query in ["", "   ", None]:
        with pytest.raises(ValueError, match="non-empty string"):
            bm.scores(query)
    with pytest.raises(ValueError, match="no words"):
        bm.scores("?!")
    for k in [0, -1, True, 1.5]:
        with pytest.raises(ValueError, match="positive integer"):
            bm.top_k("cat", k)
    with pytest.raises(ValueError, match="idf must be"):
        BM25(TINY, idf="bm25+")
    with pytest.raises(ValueError, match="non-empty list"):
        BM25([])
    with pytest.raises(ValueError, match="per_source"):
        rag.build_store(0)
    with pytest.raises(ValueError, match="unique"):
        rag.Store([SYNTHETIC[0], SYNTHETIC[0]])
    with pytest.raises(ValueError, match="length 1"):
        DenseIndex(np.ones((3, 4), dtype=np.float32))
    index = rag.build(rag.Store(SYNTHETIC), HashEmbedder())
    with pytest.raises(ValueError, match="method"):
        index.search("penguins", 1, method="magic")
    with pytest.raises(ValueError, match="one gold row per question"):
        rag.recall_at_k(index.bm25.top_k, ["a"], [])
