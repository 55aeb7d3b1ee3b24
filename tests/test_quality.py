"""nanolm.eval.quality: distinct-n and repetition on samples counted by hand."""

import numpy as np
import pytest
import torch

from nanolm.eval import quality as q


def test_units_are_words_for_text_and_ids_for_tokens():
    assert q.units("the  king,\tthe king") == ["the", "king,", "the", "king"]  # as they are: no normalization
    assert q.units([5, 6, 5]) == [5, 6, 5]
    assert q.units(np.array([5, 6, 5])) == [5, 6, 5]
    assert q.units(torch.tensor([5, 6, 5])) == [5, 6, 5]  # plain ints: hashed by value, not by object


def test_distinct_n_by_hand():
    # "a b a b a": unigrams a b a b a -> 2 distinct of 5; bigrams ab ba ab ba -> 2 of 4
    assert q.distinct_n(["a b a b a"], 1) == pytest.approx(2 / 5)
    assert q.distinct_n(["a b a b a"], 2) == pytest.approx(2 / 4)
    # pooled over samples: [1 2 3] and [1 2 4] -> bigrams 12 23 12 24: 3 distinct of 4
    assert q.distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)
    assert q.distinct_n([[1, 2, 3], [1, 2, 4]], 1) == pytest.approx(4 / 6)


def test_distinct_n_never_spans_two_samples():
    # [1 2] and [3 4]: bigrams 12 and 34 only (no 23 across the boundary)
    assert q.distinct_n([[1, 2], [3, 4]], 2) == 1.0
    assert q.distinct_n([[1, 2], [2, 1]], 2) == 1.0  # 12, 21: the joined "1 2 2 1" would have 22 as well
    assert q.distinct_n([[1], [2]], 2) == 0.0  # no bigram at all
    assert q.distinct_n(["same answer", "same answer", "same answer"], 2) == pytest.approx(1 / 3)


def test_repetition_by_hand():
    assert q.repetition("a b a b a", n=2) == pytest.approx(2 / 4)  # ab ba [ab] [ba]
    assert q.repetition("the the the the the", n=1) == pytest.approx(4 / 5)
    assert q.repetition([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4], n=4) == pytest.approx(5 / 9)  # loop of 4 tokens
    assert q.repetition([1, 2, 3, 4, 5, 6], n=4) == 0.0
    assert q.repetition([1, 2, 3], n=4) == 0.0  # too short to hold a 4-gram


def test_mean_repetition_weighs_samples_equally():
    samples = ["a b a b a", "c d e f", [7, 7, 7]]  # rep-2: 2/4, 0/3, 1/2
    assert q.mean_repetition(samples, n=2) == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    with pytest.raises(ValueError):
        q.mean_repetition([])


def test_summary_by_hand():
    samples = [[1, 2, 3, 4, 1, 2, 3, 4], [5, 6]]
    s = q.summary(samples)
    assert s["samples"] == 2 and s["mean_length"] == 5.0
    assert s["distinct-1"] == pytest.approx(6 / 10)
    assert s["distinct-2"] == pytest.approx((4 + 1) / (7 + 1))  # 12 23 34 41 [12 23 34] + 56
    assert s["rep-4"] == pytest.approx((1 / 5 + 0.0) / 2)  # 1234 2341 3412 4123 [1234]; [5 6] holds none
    with pytest.raises(ValueError):
        q.summary([])


def test_n_must_be_positive():
    with pytest.raises(ValueError):
        q.distinct_n(["a b"], 0)
