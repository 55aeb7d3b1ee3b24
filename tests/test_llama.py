"""nanolm.model.llama against torch and Hugging Face: RoPE, RMSNorm, GQA, the KV cache, LlamaForCausalLM parity."""

import math

import pytest
import tolerances
import torch
from helpers import train_briefly

from nanolm.core import artifacts
from nanolm.model import gpt, layers, llama
from nanolm.model.hf import from_hf, to_hf
from nanolm.model.llama import Llama, LlamaConfig

SMALL = LlamaConfig(vocab_size=64, block_size=24, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)


def _model(cfg=SMALL, seed=0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(cfg).eval()
    with torch.no_grad():  # gains away from 1, so a mix-up of norm weights shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def _ids(cfg=SMALL, B=2, T=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(cfg.vocab_size, (B, T or cfg.block_size), generator=g)


def test_rope_scores_depend_only_on_the_offset():
    """q.k after RoPE at positions (m, n) equals that at (m + s, n + s) for any shift s (float64: measured 1.8e-15,
    tested at tolerances.FLOAT64)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    inv_freq = layers.rope_frequencies(16).double()

    def score(m, n):
        cq, sq = layers.rope_angles(torch.tensor([m]), inv_freq)
        ck, sk = layers.rope_angles(torch.tensor([n]), inv_freq)
        return (layers.apply_rope(q[None], cq.double(), sq.double()) @ layers.apply_rope(k[None], ck.double(), sk.double()).T).item()

    for m, n in [(5, 2), (2, 5), (7, 7), (30, 1)]:
        ref = score(m, n)
        for s in (1, 13, 1000):
            assert math.isclose(score(m + s, n + s), ref, rel_tol=tolerances.FLOAT64["rtol"],
                                abs_tol=tolerances.FLOAT64["atol"])
    assert not math.isclose(score(5, 2), score(5, 3), abs_tol=1e-3)  # and it does depend on the offset


def test_rope_complex_interleaved_equals_real_half_split():
    """Meta's complex form on interleaved pairs == the real half-split form after permuting features."""
    x = torch.randn(2, 3, 10, 16, dtype=torch.float64)
    pos = torch.arange(5, 15)
    cos, sin = layers.rope_angles(pos, layers.rope_frequencies(16).double())
    half = layers.apply_rope(layers.interleaved_to_half(x), cos.double(), sin.double())
    cplx = layers.interleaved_to_half(layers.apply_rope_complex(x, pos))
    torch.testing.assert_close(half, cplx, **tolerances.FLOAT64)
    torch.testing.assert_close(half.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths


def test_rmsnorm_equals_torch():
    x = torch.randn(4, 7, 32) * 3 + 1
    ours = layers.RMSNorm(32, eps=1e-5)
    ref = torch.nn.RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), ref(x), **tolerances.FLOAT32)


def test_swiglu_is_parameter_matched_and_bias_free():
    for C in (64, 128, 256, 384):
        swi = LlamaConfig(n_embd=C, n_head=4).ffn_hidden * 3 * C
        gelu = 8 * C * C
        assert abs(swi - gelu) / gelu < 0.02, (C, swi, gelu)
    assert not [n for n, _ in _model().named_parameters() if n.endswith("bias")]


def test_mha_equals_torch_multihead_attention():
    """n_kv_head = n_head, no positions: our attention == nn.MultiheadAttention with a causal mask (float32, to rounding)."""
    cfg = LlamaConfig(n_embd=32, n_head=4, pos="none")
    torch.manual_seed(0)
    attn = llama.Attention(cfg).eval()
    ref = torch.nn.MultiheadAttention(32, 4, bias=False, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(attn.wqkv.weight)  # the same [W_q; W_k; W_v] layout
        ref.out_proj.weight.copy_(attn.wo.weight)
    x = torch.randn(2, 9, 32)
    blocked = torch.ones(9, 9, dtype=torch.bool).triu(1)  # torch's convention: True = may not attend
    expected, _ = ref(x, x, x, attn_mask=blocked, need_weights=False)
    torch.testing.assert_close(attn(x, torch.arange(9)), expected, **tolerances.FLOAT32)


def test_gqa_equals_mha_with_repeated_key_value_heads():
    gqa = _model(LlamaConfig(**{**SMALL.to_dict(), "n_kv_head": 2}))
    mha = Llama(LlamaConfig(**{**SMALL.to_dict(), "n_kv_head": 4})).eval()
    state = gqa.state_dict()
    D = SMALL.head_dim
    for key in list(state):
        if key.endswith("attn.wqkv.weight"):  # keys and values (Hkv * D, C) -> (H * D, C), heads repeated
            q, k, v = state[key].split([4 * D, 2 * D, 2 * D])
            k, v = (w.view(2, D, -1).repeat_interleave(2, dim=0).reshape(4 * D, -1) for w in (k, v))
            state[key] = torch.cat([q, k, v])
    mha.load_state_dict(state)
    idx = _ids()
    torch.testing.assert_close(mha(idx)[0], gqa(idx)[0], **tolerances.FLOAT32)


VARIANTS = {
    "gqa": {}, "mqa": {"n_kv_head": 1}, "qk_norm": {"qk_norm": True},
    "gpt_like": {"pos": "learned", "norm": "layer", "mlp": "gelu", "bias": True},
    "mla": {"attention": "mla", "kv_rank": 16, "rope_dim": 4},
    "moe": {"n_experts": 4, "top_k": 2},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kv_cache_gives_the_same_logits(variant):
    """Prefill 10 tokens, then one at a time: every logit equals the full forward (float32, a model's forward)."""
    cfg = LlamaConfig(**{**SMALL.to_dict(), **VARIANTS[variant]})
    model = _model(cfg)
    idx = _ids(cfg)
    full, _ = model(idx)
    cache = model.new_cache()
    steps = [model(idx[:, :10], cache=cache)[0]]
    steps += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(10, 16)]
    steps.append(model(idx[:, 16:], cache=cache)[0])  # a chunk of several tokens after the prefill
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **tolerances.FLOAT32_MODEL)
    assert cache.length == cfg.block_size
    with pytest.raises(ValueError, match="full|exceed"):
        model(idx[:, :1], cache=cache)


def test_generate_with_and_without_cache_agree_and_cache_refills():
    model = _model()
    prompt = _ids(B=2, T=4)
    a = model.generate(prompt, 18, temperature=0, use_cache=True)
    b = model.generate(prompt, 18, temperature=0, use_cache=False)
    assert torch.equal(a, b)  # greedy, all within block_size: identical
    long = model.generate(prompt, 40, temperature=0, use_cache=True)  # past block_size: cache rebuilt
    assert long.shape == (2, 44) and torch.equal(long[:, :22], a)


def test_rope_runs_past_block_size_learned_positions_refuse():
    model = _model()
    logits, _ = model(_ids(T=2 * SMALL.block_size))
    assert logits.shape == (2, 48, SMALL.vocab_size) and torch.isfinite(logits).all()
    learned = _model(LlamaConfig(**{**SMALL.to_dict(), "pos": "learned"}))
    with pytest.raises(ValueError, match="block_size"):
        learned(_ids(T=SMALL.block_size + 1))


def _trained(model, steps=30, lr=2e-2):
    """Weights trained a little on random tokens (see helpers.train_briefly)."""
    return train_briefly(model, _ids(model.config, B=8, seed=5), steps, lr)


def test_logits_equal_hf_llama_both_ways():
    """Our TRAINED weights in transformers' LlamaForCausalLM: same logits (float32, measured 2.9e-6 on logits up
    to 13); and back, exactly. (No float64 check: transformers computes RoPE angles in float32 whatever the dtype,
    so a float64 comparison differs by ~2e-6 from that alone.)"""
    for tie in (True, False):
        cfg = LlamaConfig(**{**SMALL.to_dict(), "tie_embeddings": tie, "rope_theta": 500.0})
        model = _trained(_model(cfg))
        idx = _ids(cfg)
        hf = to_hf(model)
        with torch.no_grad():
            theirs = hf(idx).logits
            ours = model(idx)[0]
        assert ours.abs().max() > 3  # trained: logits far from those of a fresh model
        torch.testing.assert_close(theirs, ours, **tolerances.FLOAT32_MODEL)
        back = from_hf(hf)
        assert back.config == cfg
        for name, t in model.tensors().items():
            assert torch.equal(back.tensors()[name], t), name
    with pytest.raises(ValueError, match="plain Llama"):
        to_hf(_model(LlamaConfig(**{**SMALL.to_dict(), "qk_norm": True})))


def test_loss_ignores_minus_100_and_moe_aux_only_in_training():
    model = _model(LlamaConfig(**{**SMALL.to_dict(), "n_experts": 4}))
    idx, tgt = _ids(), _ids(seed=2)
    tgt[:, :5] = -100
    logits, loss = model(idx, tgt)
    ref = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 64), tgt[:, 5:].reshape(-1))
    torch.testing.assert_close(loss, ref)
    model.train()
    _, train_loss = model(idx, tgt)
    torch.testing.assert_close(train_loss, ref + SMALL.aux_loss_coef * model.aux_loss, **tolerances.FLOAT32)
    assert model.num_params(active=True) < model.num_params()


def test_save_load_round_trip_and_refusals():
    model = _model()
    llama.save("base", model, notebook="09_modern_architecture", profile="smoke", metrics={"val_loss": 3.0})
    loaded, art = llama.load("base", profile="smoke")
    assert art.config["model"] == "llama" and art.metrics["val_loss"] == 3.0
    idx = _ids()
    assert torch.equal(loaded(idx)[0], model(idx)[0])
    assert loaded.head.weight is loaded.tok_emb.weight
    bad = model.tensors()
    bad.pop("norm_f.weight")
    with pytest.raises(ValueError, match="missing"):
        Llama.from_tensors(SMALL, bad)
    with pytest.raises(ValueError, match="unknown keys"):
        LlamaConfig.from_dict({**SMALL.to_dict(), "n_positions": 9})
    gpt.save("gpt-base", gpt.GPT(gpt.GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)),
             notebook="08_pretraining", profile="smoke")
    with pytest.raises(ValueError, match="does not hold a Llama"):
        llama.load("gpt-base", profile="smoke")
    with pytest.raises(artifacts.ArtifactError, match="missing"):
        llama.load("base", profile="cpu")


def test_bad_configs():
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        LlamaConfig(n_head=4, n_kv_head=3)
    for bad in ({"n_head": 0}, {"n_embd": 0}, {"block_size": -1}):  # sizes are checked before divisibility
        with pytest.raises(ValueError, match=f"positive.*{next(iter(bad))}"):
            LlamaConfig(**bad)
    with pytest.raises(ValueError, match="pos must be"):
        LlamaConfig(pos="alibi")
    with pytest.raises(ValueError, match="mla"):
        LlamaConfig(attention="mla")
    with pytest.raises(ValueError, match="attention mode"):
        _model().set_attention("fast")


# ----------------------------------------------------------------------------- layer defaults (mutation tests)


def test_layer_defaults_and_bias_switches():
    assert layers.RMSNorm(8).eps == 1e-5
    swiglu, swiglu_b = layers.SwiGLU(8, 16), layers.SwiGLU(8, 16, bias=True)
    assert swiglu.gate_up.bias is None and swiglu.down.bias is None  # Llama's MLP has no biases
    assert swiglu_b.gate_up.bias is not None and swiglu_b.down.bias is not None
    mlp, mlp_nb = layers.GELUMLP(8, 16), layers.GELUMLP(8, 16, bias=False)
    assert mlp.fc.bias is not None and mlp.proj.bias is not None  # GPT-2's MLP has them
    assert mlp_nb.fc.bias is None and mlp_nb.proj.bias is None


def test_gelu_mlp_is_gpt2s_tanh_gelu_without_default_dropout():
    torch.manual_seed(0)
    mlp = layers.GELUMLP(8, 16).train()  # training mode: a default dropout would show
    x = torch.randn(3, 8)
    h = mlp.fc(x)
    tanh_gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))  # GPT-2's formula
    torch.testing.assert_close(mlp(x), mlp.proj(tanh_gelu), **tolerances.FLOAT32)


def test_complex_rope_by_hand_with_another_theta():
    """Pair (2i, 2i+1) rotated by pos * theta^(-2i/D), written out in float64; the output keeps x's dtype."""
    torch.manual_seed(1)
    x, pos, theta = torch.randn(5, 8), torch.arange(3, 8), 500000.0
    out = layers.apply_rope_complex(x, pos, theta)
    assert out.dtype == torch.float32
    ref = torch.empty(5, 8, dtype=torch.float64)
    for t in range(5):
        for i in range(4):
            a = float(pos[t]) * theta ** (-2 * i / 8)
            x0, x1 = float(x[t, 2 * i]), float(x[t, 2 * i + 1])
            ref[t, 2 * i], ref[t, 2 * i + 1] = x0 * math.cos(a) - x1 * math.sin(a), x0 * math.sin(a) + x1 * math.cos(a)
    torch.testing.assert_close(out.double(), ref, **tolerances.FLOAT32)


def test_rope_keeps_a_half_precision_input_in_half_precision():
    """cos/sin tables are float32: apply_rope must cast them to x's dtype, or bf16 activations would come back
    as float32 (type promotion), doubling memory downstream."""
    cos, sin = layers.rope_angles(torch.arange(6), layers.rope_frequencies(8))
    x = torch.randn(2, 6, 8).to(torch.bfloat16)
    out = layers.apply_rope(x, cos, sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layers.apply_rope(x.float(), cos, sin), atol=2e-2, rtol=2e-2)
