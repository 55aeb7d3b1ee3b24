"""Is generated text varied or stuck in a loop? Two counts that need no reference answer.

A small model sampled greedily often falls into a loop ("the king is the king is the king is ..."), and
one tuned too hard on a narrow task says the same sentence to every prompt. Two measures catch these
without a reference text to compare against:

    distinct_n(samples, n)    distinct n-grams / all n-grams, pooled over all samples (Li et al. 2016,
                              "A Diversity-Promoting Objective Function for Neural Conversation Models").
                              1.0: no n-gram twice anywhere; near 0: the same few n-grams over and over,
                              within a sample or across samples.
    repetition(sample, n=4)   the fraction of one sample's n-grams that already occurred earlier in the
                              same sample. 0.0: no repeated 4-gram; near 1.0: a loop.

For a sample "a b a b a" with n=2 the bigrams are ab, ba, ab, ba: two distinct of four (distinct-2 =
0.5) and the last two repeat an earlier one (rep-2 = 0.5).

A sample is a list of token ids (the units are tokens) or a string (the units are its whitespace-separated
words, as they are: no lowercasing, punctuation kept, so "king" and "king," differ). Token counts depend
on the tokenizer, so compare models by the same unit. N-grams never span two samples. Both measures
favour short samples (a 3-word answer can hardly repeat a 4-gram), so report them with the mean length,
as `summary` does.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

Sample = Sequence[Any] | str  # token ids (a list, numpy array or 1-D tensor) or text


def units(sample: Sample) -> list[Hashable]:
    """The units of a sample: its whitespace-separated words for a string, else its token ids."""
    if isinstance(sample, str):
        return sample.split()
    if hasattr(sample, "tolist"):  # a numpy array or a tensor: plain ints, hashable by value
        return list(sample.tolist())
    return list(sample)


def _ngrams(seq: list[Hashable], n: int) -> list[tuple]:
    """The n-grams of a unit list, in order."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(samples: Sequence[Sample], n: int) -> float:
    """Distinct n-grams / all n-grams over all samples (0.0 when no sample has n units)."""
    grams = [g for sample in samples for g in _ngrams(units(sample), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(sample: Sample, n: int = 4) -> float:
    """The fraction of a sample's n-grams that repeat an earlier n-gram of it (0.0 when it has none)."""
    grams = _ngrams(units(sample), n)
    seen: set[tuple] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams) if grams else 0.0


def mean_repetition(samples: Sequence[Sample], n: int = 4) -> float:
    """The mean of repetition(sample, n) over the samples, each sample weighing the same."""
    if len(samples) == 0:
        raise ValueError("mean_repetition needs at least one sample")
    return sum(repetition(s, n) for s in samples) / len(samples)


def summary(samples: Sequence[Sample]) -> dict:
    """distinct-1, distinct-2, rep-4 and the mean length in units of a list of samples."""
    if len(samples) == 0:
        raise ValueError("summary needs at least one sample")
    return {
        "samples": len(samples),
        "mean_length": sum(len(units(s)) for s in samples) / len(samples),
        "distinct-1": distinct_n(samples, 1),
        "distinct-2": distinct_n(samples, 2),
        "rep-4": mean_repetition(samples, 4),
    }
