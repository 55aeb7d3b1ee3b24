"""nanolm.eval.contamination: 13-gram overlap flags copies, not paraphrases, and counts its blind spot."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest

from nanolm.eval import contamination as c

CORPUS = [
    "The committee met on Tuesday to discuss the budget for the new library, and after a long debate "
    "it voted to spend most of the money on books rather than on a larger reading room.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make "
    "glucose and oxygen; it takes place mainly in the leaves.",
]
COPIED = ("after a long debate it voted to spend most of the money on books rather than on a larger "
          "reading room")
PARAPHRASE = ("following lengthy discussion the group chose to use the majority of the funds for books "
              "instead of a bigger reading room")


@pytest.fixture(scope="module")
def index():
    return c.NgramIndex(CORPUS)


def test_words_lowercases_deletes_punctuation_and_splits_on_whitespace():
    assert c.words("Hello, World!  It's  a well-known\tfact_x: 3.14 $5") == [
        "hello", "world", "its", "a", "wellknown", "factx", "314", "5"]
    assert c.words("Ça va? Très bien.") == ["ça", "va", "très", "bien"]  # letters of any script stay


def test_ngrams_in_order_and_none_when_too_short():
    assert c.ngrams(["a", "b", "c", "d"], 2) == [("a", "b"), ("b", "c"), ("c", "d")]
    assert c.ngrams(["a", "b"], 3) == []
    assert len(c.ngrams(c.words(CORPUS[0]), 13)) == len(c.words(CORPUS[0])) - 12


def test_ngram_hashes_match_the_ngrams_one_to_one():
    ws = c.words(CORPUS[0] + " " + CORPUS[0])  # the text twice: each n-gram's hash repeats with it
    h = c.ngram_hashes(ws, 13)
    grams = c.ngrams(ws, 13)
    assert h.dtype == np.uint64 and len(h) == len(grams)
    by_gram = {}
    for g, x in zip(grams, h, strict=True):
        assert by_gram.setdefault(g, x) == x  # the same n-gram, the same hash
    assert len(set(h.tolist())) == len(by_gram)  # different n-grams, different hashes


def test_hashes_are_stable_across_processes():
    code = ("from nanolm.eval import contamination as c; "
            "print(c.word_hash('library'), c.ngram_hashes(c.words('a b c d e'), 3).tolist())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")}
    assert len(outs) == 1  # Python's own str hash would differ between these two processes
    assert outs.pop().split()[0] == str(c.word_hash("library"))


def test_a_copied_item_is_flagged_a_paraphrase_is_not(index):
    assert index.contains_any(COPIED)
    assert index.hits(COPIED) == len(c.words(COPIED)) - 12  # every one of its 13-grams
    assert not index.contains_any(PARAPHRASE)


def test_a_shuffled_copy_is_not_flagged(index):
    ws = c.words(COPIED)
    random.Random(0).shuffle(ws)
    assert not index.contains_any(" ".join(ws))


def test_case_and_punctuation_changes_are_still_flagged(index):
    changed = ("AFTER a LONG debate; it voted -- to spend most of the money on books (rather than on) "
               "a larger reading-room?")
    assert index.contains_any(changed)
    assert index.contains_any(COPIED.upper())


def test_a_copy_inside_a_longer_item_is_flagged(index):
    item = "Question: " + CORPUS[1].split(";")[0] + ". Which gas is released? Answer: oxygen"
    assert index.contains_any(item)


def test_an_item_shorter_than_n_is_blind_never_flagged_even_if_copied(index):
    short = " ".join(c.words(CORPUS[0])[:12])  # copied word for word, but only 12 words
    assert not index.contains_any(short)
    report = c.overlap(index, [COPIED, PARAPHRASE, short])
    assert report["blind_indices"] == [2] and report["contaminated_indices"] == [0]
    assert (report["checked"], report["contaminated"], report["blind"], report["clean"]) == (3, 1, 1, 1)
    assert report["contaminated_fraction"] == pytest.approx(1 / 3)
    assert report["blind_fraction"] == pytest.approx(1 / 3)
    assert report["n"] == 13


def test_no_ngram_is_invented_across_a_document_boundary(index):
    tail = c.words(CORPUS[0])[-7:]  # the end of one document
    head = c.words(CORPUS[1])[:7]  # the start of the next
    assert not index.contains_any(" ".join(tail + head))  # 14 words, in the concatenation, not in any document
    joined = c.NgramIndex([" ".join(CORPUS)])  # one document: now the run exists
    assert joined.contains_any(" ".join(tail + head))


def test_the_index_is_deterministic_and_small():
    a, b = c.NgramIndex(CORPUS), c.NgramIndex(reversed(CORPUS))
    assert np.array_equal(a.hashes, b.hashes)  # the set, whatever the document order
    total = sum(len(c.words(t)) - 12 for t in CORPUS)
    assert (a.documents, a.total, len(a)) == (2, total, total)
    assert a.hashes.dtype == np.uint64 and a.hashes.nbytes == 8 * total  # 8 bytes per distinct n-gram
    assert np.all(a.hashes[1:] > a.hashes[:-1])  # sorted, for the binary search
    assert c.overlap(a, [COPIED, PARAPHRASE]) == c.overlap(b, [COPIED, PARAPHRASE])


def test_other_n_empty_index_and_mismatched_n():
    index8 = c.NgramIndex(CORPUS, n=8)
    report = c.overlap(index8, ["green plants use sunlight water and carbon dioxide", "too short to tell"])
    assert report["contaminated_indices"] == [0] and report["blind_indices"] == [1]
    with pytest.raises(ValueError):
        c.overlap(index8, [COPIED], n=13)
    empty = c.NgramIndex([])
    assert len(empty) == 0 and not empty.contains_any(COPIED)
    assert c.overlap(empty, [])["contaminated_fraction"] == 0.0
