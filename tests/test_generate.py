"""nanolm.model.generate: one stream/generate API for GPT and Llama (cache, window rebuild, stop tokens, greedy)."""

import pytest
import torch

from nanolm.model.gpt import GPT, GPTConfig
from nanolm.model.llama import Llama, LlamaConfig

BLOCK = 16
FAMILIES = {
    "gpt": lambda: GPT(GPTConfig(vocab_size=50, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32)),
    "llama": lambda: Llama(LlamaConfig(vocab_size=50, block_size=BLOCK, n_layer=2, n_head=4, n_kv_head=2,
                                       n_embd=32)),
    "llama_learned_mla": lambda: Llama(LlamaConfig(vocab_size=50, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32,
                                                   pos="learned", attention="mla", kv_rank=8)),
}


@pytest.fixture(params=list(FAMILIES))
def model(request):
    torch.manual_seed(0)
    return FAMILIES[request.param]().double().eval()  # float64: greedy ties are out of reach


def _ids(B=2, T=4, seed=1):
    return torch.randint(50, (B, T), generator=torch.Generator().manual_seed(seed))


def _reference_greedy(model, idx, n):
    """Greedy tokens without a cache over the window the cached loop keeps (see nanolm.model.generate)."""
    bs = model.config.block_size
    start = max(0, idx.size(1) - bs)  # the prefill sees the prompt's last block_size tokens
    for _ in range(n):
        if idx.size(1) - start > bs:  # the cache is full: rebuilt from the last block_size // 2 tokens
            start = idx.size(1) - bs // 2
        logits, _ = model(idx[:, start:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_both_families_take_the_same_calls(model):
    """forward(idx, targets, cache), new_cache, stream, generate and num_params, by the same keywords."""
    idx = _ids()
    logits, loss = model(idx, targets=idx, cache=None)
    assert logits.shape == (2, 4, 50) and loss.ndim == 0
    cache = model.new_cache()
    assert cache.max_len == BLOCK and model.new_cache(max_len=8).max_len == 8
    torch.testing.assert_close(model(idx, cache=cache)[0], logits, atol=1e-12, rtol=0)
    kw = dict(temperature=0.8, top_k=10, top_p=0.9, stop={3}, use_cache=True)
    out = model.generate(idx, 6, generator=torch.Generator().manual_seed(0), **kw)
    steps = list(model.stream(idx, 6, generator=torch.Generator().manual_seed(0), **kw))
    assert torch.equal(out, torch.cat([idx, *steps], dim=1))
    assert all(t.shape == (2, 1) for t in steps)
    n = model.num_params()
    assert model.num_params(active=True) <= n and model.num_params(include_position=False) <= n
    assert model.generate(idx, 0).shape == idx.shape


def test_greedy_is_argmax_and_the_same_with_and_without_cache(model):
    """While every prediction sees at most block_size tokens, both paths give the same greedy tokens."""
    idx = _ids()
    first = model.generate(idx, 1, temperature=0)
    assert torch.equal(first[:, -1], model(idx)[0][:, -1].argmax(-1))
    n = BLOCK + 1 - idx.size(1)  # the last prediction is made from exactly block_size tokens
    cached = model.generate(idx, n, temperature=0, use_cache=True)
    assert torch.equal(cached, model.generate(idx, n, temperature=0, use_cache=False))
    assert torch.equal(cached, _reference_greedy(model, idx, n))


def test_cache_rebuild_past_block_size_is_the_documented_window(model):
    """Past block_size the cached path restarts from the last block_size // 2 tokens at position 0."""
    for T in (4, BLOCK + 3):  # a short prompt, and one longer than the window
        idx = _ids(T=T)
        out = model.generate(idx, 2 * BLOCK + 5, temperature=0)
        assert out.shape == (2, T + 2 * BLOCK + 5)
        assert torch.equal(out, _reference_greedy(model, idx, 2 * BLOCK + 5))
    uncached = model.generate(idx, 20, temperature=0, use_cache=False)  # always the last block_size tokens
    assert uncached.shape == (2, T + 20)


def test_stop_tokens(model):
    """B = 1: ends right after yielding a stop token. B > 1: ends once every row has produced one."""
    idx = _ids()
    full = model.generate(idx, 12, temperature=0)
    new = full[:, 4:]
    one = model.generate(idx[:1], 12, temperature=0, stop={int(new[0, 2])})
    first = (new[0] == new[0, 2]).nonzero()[0, 0].item()  # the first time that token comes
    assert torch.equal(one, full[:1, :4 + first + 1])
    stop = {int(new[0, 1]), int(new[1, 5])}
    hit = torch.isin(new, torch.tensor(sorted(stop)))  # (B, 12)
    ends = [row.nonzero()[0, 0].item() + 1 for row in hit]  # each row's first stop token, inclusive
    for cap in (1, max(ends) - 1, 12):  # finished rows keep going until the last finishes, or the cap
        got = model.generate(idx, cap, temperature=0, stop=stop)
        assert torch.equal(got, full[:, :4 + min(cap, max(ends))]), cap
    assert torch.equal(model.generate(idx, 12, temperature=0, stop=set()), full)  # no stop ids: the cap


def test_seeded_sampling_restores_mode_and_refuses_bad_arguments(model):
    model.train()
    idx = _ids()
    a = model.generate(idx, 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = model.generate(idx, 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and model.training  # eval while generating, training mode restored
    assert not model.generate(idx, 2).requires_grad
    with pytest.raises(TypeError, match="collection of token ids"):
        model.generate(idx, 2, stop=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(idx, -1)
    with pytest.raises(TypeError):
        model.generate(idx, 2, 0.5)  # sampling settings are keywords
