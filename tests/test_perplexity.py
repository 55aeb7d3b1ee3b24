"""Perplexity: sliding windows score every token once; token, word and byte reports from one sum; a sanity check."""

import math

import pytest
import torch
from helpers import train_briefly
from hypothesis import given
from hypothesis import strategies as st
from tolerances import FLOAT64

from nanolm.eval import perplexity as ppl
from nanolm.model.llama import Llama, LlamaConfig


@given(n=st.integers(2, 300), window=st.integers(2, 64), data=st.data())
def test_windows_score_every_token_but_the_first_exactly_once(n, window, data):
    stride = data.draw(st.integers(1, window - 1))
    spans = ppl.windows(n, window, stride)
    scored = [p for _, end, first in spans for p in range(first, end)]
    assert scored == list(range(1, n))
    for start, end, first in spans:
        assert 0 <= start < first <= end and end - start <= window
        assert first - start >= min(first, window - stride)  # at least window - stride tokens of context


@pytest.mark.parametrize("window, stride", [(1, 1), (8, 0), (8, 8), (8, 9)])
def test_bad_windows_are_refused(window, stride):
    with pytest.raises(ValueError, match="stride < window"):
        ppl.windows(20, window, stride)


def _model(block_size=32):
    torch.manual_seed(0)
    m = Llama(LlamaConfig(vocab_size=256, block_size=block_size, n_layer=2, n_head=2, n_embd=32)).double()
    return train_briefly(m, torch.tensor([list(b"a rose is a rose is a rose. ") * 2])[:, :block_size])


def _nll_by_hand(model, ids, window, stride):
    """Each scored token predicted by its own forward pass over its window's context."""
    total = 0.0
    for start, end, first in ppl.windows(len(ids), window, stride):
        for t in range(first, end):
            logits, _ = model(torch.tensor([ids[start:t]]))
            total -= torch.log_softmax(logits[0, -1], -1)[ids[t]].item()
    return total


@pytest.mark.parametrize("window, stride", [(32, 16), (12, 5), (8, 7)])
def test_sliding_window_nll_equals_token_by_token(window, stride):
    model, ids = _model(), list(b"a rose is a rose, said the rose to a nose; a nose is not a rose.")
    got = ppl.nll_of_ids(model, ids, window, stride)
    assert got == pytest.approx(_nll_by_hand(model, ids, window, stride), rel=FLOAT64["rtol"], abs=FLOAT64["atol"])


def test_a_window_holding_the_text_is_one_plain_forward():
    model, ids = _model(), list(b"a rose is a rose")
    logits, _ = model(torch.tensor([ids[:-1]]))
    want = torch.nn.functional.cross_entropy(logits[0], torch.tensor(ids[1:]), reduction="sum").item()
    assert ppl.nll_of_ids(model, ids, 32, 16) == pytest.approx(want, rel=FLOAT64["rtol"], abs=FLOAT64["atol"])


def test_reports_follow_from_one_sum():
    text = "a rose is a rose é"
    model = _model()
    got = ppl.perplexity(model, lambda s: list(s.encode()), bytes, text, window=8, stride=4)
    n_bytes = len(text.encode())
    assert (got.tokens, got.words, got.bytes) == (n_bytes - 1, 6, n_bytes - 1)  # the first byte is not predicted
    assert got.token_ppl == pytest.approx(math.exp(got.nll / got.tokens))
    assert got.word_ppl == pytest.approx(math.exp(got.nll / 6))
    assert got.bits_per_byte == pytest.approx(got.nll / math.log(2) / (n_bytes - 1))
    assert got.to_dict()["loss"] == pytest.approx(got.nll / got.tokens)


def test_an_untrained_model_is_about_as_perplexed_as_its_vocabulary_is_large():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    ids = torch.randint(0, 512, (400,)).tolist()
    got = ppl.perplexity(model, lambda s: ids, lambda i: b"x", "x", window=64)
    assert 0.9 * 512 < got.token_ppl < 1.1 * 512


def test_a_one_token_text_is_refused():
    with pytest.raises(ValueError, match="at least two tokens"):
        ppl.perplexity(_model(), lambda s: [1], bytes, "a", window=8)
