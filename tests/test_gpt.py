"""nanolm.model.gpt against Hugging Face GPT-2 and against itself (causality, attention paths, save/load)."""

import pytest
import tolerances
import torch
from helpers import train_briefly

from nanolm.core import artifacts
from nanolm.model import gpt
from nanolm.model.gpt import GPT, GPTConfig
from nanolm.model.hf import from_hf, to_hf

SMALL = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)


def _model(cfg=SMALL, seed=0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm gains, so the mapping of every tensor is tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.startswith(("ln", "blocks")) and "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _ids(cfg=SMALL, B=3, T=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(cfg.vocab_size, (B, T or cfg.block_size), generator=g)


def _trained(model, steps=30, lr=2e-2):
    """Weights trained a little on random tokens (see helpers.train_briefly)."""
    return train_briefly(model, _ids(model.config, B=8, seed=5), steps, lr)


def test_logits_equal_hf_gpt2_both_ways():
    """Our TRAINED weights in transformers' GPT2LMHeadModel give the same logits (float32: measured 1.9e-6 on
    logits up to 8; float64: 8e-15), and the weights come back exactly."""
    model = _trained(_model())
    idx = _ids()
    ours, _ = model(idx)
    assert ours.abs().max() > 3  # trained: logits far from the ~0.4 of a fresh model
    hf = to_hf(model)
    with torch.no_grad():
        theirs = hf(idx).logits
    torch.testing.assert_close(theirs, ours, **tolerances.FLOAT32_MODEL)
    back = from_hf(hf)
    for name, t in model.tensors().items():
        torch.testing.assert_close(back.tensors()[name], t, atol=0, rtol=0, msg=name)
    model64 = model.double()
    with torch.no_grad():
        torch.testing.assert_close(to_hf(model64).double()(idx).logits, model64(idx)[0], **tolerances.FLOAT64)


def test_manual_attention_equals_sdpa():
    """The written-out attention and F.scaled_dot_product_attention agree (float64, to rounding)."""
    model = _model().double()
    idx = _ids()
    fused, _ = model(idx)
    model.set_attention("manual", keep_weights=True)
    manual, _ = model(idx)
    torch.testing.assert_close(manual, fused, **tolerances.FLOAT64)
    w = model.blocks[0].attn.weights  # (B, H, T, T)
    assert w.shape == (3, 4, 16, 16)
    assert torch.all(w.triu(1) == 0)  # future positions get exactly zero weight
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 16, dtype=torch.float64))


def test_changing_a_future_token_never_changes_earlier_logits():
    model = _model()
    idx = _ids(B=1)
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % SMALL.vocab_size
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_loss_is_cross_entropy_and_ignores_minus_100():
    model = _model()
    idx, tgt = _ids(), _ids(seed=2)
    logits, loss = model(idx, tgt)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, SMALL.vocab_size), tgt.reshape(-1))
    torch.testing.assert_close(loss, ref)
    masked = tgt.clone()
    masked[:, :8] = -100
    _, loss_masked = model(idx, masked)
    ref_masked = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, SMALL.vocab_size), tgt[:, 8:].reshape(-1))
    torch.testing.assert_close(loss_masked, ref_masked)


def test_init_loss_is_near_uniform_and_residual_projections_are_scaled():
    cfg = GPTConfig(vocab_size=65, block_size=32, n_layer=4, n_head=4, n_embd=64)
    torch.manual_seed(0)
    model = GPT(cfg)
    _, loss = model(_ids(cfg, B=8), _ids(cfg, B=8, seed=3))
    assert abs(loss.item() - torch.log(torch.tensor(65.0)).item()) < 0.1  # ~ln(V): no confident guesses
    std = model.blocks[0].mlp.proj.weight.std().item()
    assert abs(std - 0.02 / (2 * cfg.n_layer) ** 0.5) < 0.002
    assert model.head.weight is model.tok_emb.weight


def test_param_count_matches_formula():
    c = SMALL
    per_block = 2 * 2 * c.n_embd + (c.n_embd * 3 * c.n_embd + 3 * c.n_embd) + (c.n_embd**2 + c.n_embd) \
        + (c.n_embd * 4 * c.n_embd + 4 * c.n_embd) + (4 * c.n_embd * c.n_embd + c.n_embd)
    expected = c.vocab_size * c.n_embd + c.block_size * c.n_embd + c.n_layer * per_block + 2 * c.n_embd
    assert _model().num_params() == expected
    assert _model().num_params(include_position=False) == expected - c.block_size * c.n_embd


def test_save_load_round_trip_and_refusals():
    model = _model()
    gpt.save("gpt-char", model, notebook="07_gpt", profile="smoke", metrics={"val_loss": 1.5})
    loaded, art = gpt.load("gpt-char", profile="smoke")
    assert art.metrics["val_loss"] == 1.5
    idx = _ids()
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], atol=0, rtol=0)
    assert loaded.head.weight is loaded.tok_emb.weight
    bad = model.tensors()
    bad.pop("ln_f.bias")
    with pytest.raises(ValueError, match="missing"):
        GPT.from_tensors(SMALL, bad)
    artifacts.save("gpt-base", notebook="08_pretraining", profile="smoke", config={"model": "llama"})
    with pytest.raises(ValueError, match="does not hold a GPT"):
        gpt.load("gpt-base", profile="smoke")


def test_bad_config_and_too_long_input():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    for bad in ({"n_head": 0}, {"n_embd": 0}, {"n_layer": -1}):  # sizes are checked before divisibility
        with pytest.raises(ValueError, match=f"positive.*{next(iter(bad))}"):
            GPTConfig(**bad)
    with pytest.raises(ValueError, match="unknown keys"):
        GPTConfig.from_dict({**SMALL.to_dict(), "n_kv_head": 2})
    with pytest.raises(ValueError, match="block_size"):
        _model()(_ids(T=17))


def test_generate_is_seeded_and_greedy_is_argmax():
    model = _model()
    start = _ids(B=2, T=4)
    a = model.generate(start, 20, generator=torch.Generator().manual_seed(0))
    b = model.generate(start, 20, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 24) and torch.equal(a, b) and torch.equal(a[:, :4], start)
    greedy = model.generate(start, 1, temperature=0)
    assert torch.equal(greedy[:, -1], model(start)[0][:, -1].argmax(-1))


def test_float64_model_computes_its_loss_in_float64_and_bf16_logits_are_upcast():
    """A float64 model's loss is exact to 1e-12 (no float32 round trip); bf16 logits give a float32 loss."""
    model = _model().double()
    idx, tgt = _ids(), _ids(seed=2)
    logits, loss = model(idx, tgt)
    assert loss.dtype == torch.float64
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, SMALL.vocab_size), tgt.reshape(-1))
    torch.testing.assert_close(loss, ref, **tolerances.FLOAT64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits16, loss16 = _model()(idx, tgt)
    assert logits16.dtype == torch.bfloat16 and loss16.dtype == torch.float32


def test_gradients_of_both_attention_paths_agree():
    """Training through SDPA or the written-out attention gives the same gradients (float64, to rounding)."""
    grads = {}
    for mode in ("sdpa", "manual"):
        model = _model().double()
        model.set_attention(mode)
        _, loss = model(_ids(), _ids(seed=2))
        loss.backward()
        grads[mode] = {n: p.grad for n, p in model.named_parameters()}
    for name, g in grads["sdpa"].items():
        torch.testing.assert_close(grads["manual"][name], g, **tolerances.FLOAT64, msg=name)


def test_kv_cache_gives_the_same_logits():
    """Prefill 6 tokens, one at a time, then a chunk: every logit equals the full forward (float64, to rounding)."""
    model = _model().double()
    idx = _ids()
    full, _ = model(idx)
    for mode in ("sdpa", "manual"):
        model.set_attention(mode)
        cache = model.new_cache()
        steps = [model(idx[:, :6], cache=cache)[0]]
        steps += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(6, 12)]
        steps.append(model(idx[:, 12:], cache=cache)[0])
        torch.testing.assert_close(torch.cat(steps, dim=1), full, **tolerances.FLOAT64)
        assert cache.length == SMALL.block_size
        with pytest.raises(ValueError, match="16 cached \\+ 1 new.*block_size 16"):
            model(idx[:, :1], cache=cache)  # learned positions end at block_size


def test_manual_attention_keeps_weights_over_the_cache():
    """With a cache, a manual step's weights span every cached key: (B, H, 1, L), summing to one."""
    model = _model().double()
    model.set_attention("manual", keep_weights=True)
    cache = model.new_cache()
    idx = _ids(T=9)
    model(idx[:, :8], cache=cache)
    model(idx[:, 8:], cache=cache)
    w = model.blocks[1].attn.weights
    assert w.shape == (3, 4, 1, 9)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 1, dtype=torch.float64))
