"""nanolm.model.sampling: the filters keep exactly the tokens they promise."""

import pytest
import torch

from nanolm.model.sampling import sample_next, top_k_filter, top_p_filter


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False]]
    assert torch.isfinite(top_k_filter(logits, 99)).all()  # k beyond the vocabulary keeps everything


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.8)).tolist() == [[True, False, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, False, True, True]]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()


def test_filtered_tokens_are_never_sampled():
    torch.manual_seed(0)
    logits = torch.randn(4, 100)
    g = torch.Generator().manual_seed(0)
    allowed = torch.isfinite(top_k_filter(logits, 5))
    for _ in range(50):
        tok = sample_next(logits, temperature=2.0, top_k=5, generator=g)
        assert allowed.gather(1, tok).all()


def test_temperature_zero_is_argmax_and_bad_arguments_fail():
    logits = torch.randn(3, 10)
    assert torch.equal(sample_next(logits, temperature=0).squeeze(1), logits.argmax(-1))
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 0.0)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


def test_sampling_frequencies_follow_the_filtered_softmax():
    """20,000 draws land on each token with probability softmax(filtered logits / T) (within 0.015)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    g = torch.Generator().manual_seed(0)
    for kw, ref in [
        ({"temperature": 0.7}, torch.softmax(logits / 0.7, -1)),
        ({"temperature": 1.5, "top_k": 3}, torch.softmax(top_k_filter(logits / 1.5, 3), -1)),
        ({"temperature": 1.0, "top_p": 0.8}, torch.softmax(top_p_filter(logits, 0.8), -1)),
    ]:
        draws = sample_next(logits.expand(20_000, -1), generator=g, **kw).squeeze(1)
        freq = torch.bincount(draws, minlength=logits.size(-1)).float() / len(draws)
        torch.testing.assert_close(freq, ref[0], atol=0.015, rtol=0, msg=str(kw))
