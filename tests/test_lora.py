"""nanolm.adapt.lora: LoRA, rsLoRA and DoRA from scratch, against PEFT on a Hugging Face Llama.

Parity runs our Llama (fused wqkv and gate_up, one adapter per row block) and PEFT's LoRA on the same
LlamaForCausalLM weights with the same A, B (made nonzero) and DoRA magnitudes, and compares logits and
the gradients of every adapter tensor. Both models keep float32 islands in a float64 model (transformers'
RoPE angles; both RMSNorms' mean square), which alone puts them 2.7e-6 apart, so the float64 comparisons
replace those few lines by float64 ones in both (`_all_in_float64`, test only); the float32 comparisons run
both models untouched.
"""

import math
import types

import pytest
import tolerances
import torch
from torch import nn

from nanolm.adapt import lora
from nanolm.adapt.lora import LoRALinear, apply_lora, lora_state, merge_all, peft_name, unmerge_all
from nanolm.model.hf import llama_from_hf_state
from nanolm.model.layers import RMSNorm
from nanolm.model.llama import Llama, LlamaConfig

HF_SIZES = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, rms_norm_eps=1e-5)
VARIANTS = {"lora": {}, "rslora": {"rslora": True}, "dora": {"use_dora": True}}
TOL = {torch.float64: tolerances.FLOAT64, torch.float32: tolerances.FLOAT32_MODEL}


def _all_in_float64(hf, ours) -> None:
    """Take the float32 islands out of two float64 Llamas (test only): transformers computes RoPE angles in
    float32, and both its RMSNorm and ours compute the mean square in float32, whatever the model's dtype."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    def rope(self, x, position_ids):
        freqs = position_ids[..., None].to(x.dtype) * self.inv_freq.to(x.dtype)  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)

    def hf_norm(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def our_norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    hf.model.rotary_emb.forward = types.MethodType(rope, hf.model.rotary_emb)
    for model, kind, forward in ((hf, LlamaRMSNorm, hf_norm), (ours, RMSNorm, our_norm)):
        for module in model.modules():
            if isinstance(module, kind):
                module.forward = types.MethodType(forward, module)


def hf_pair(dtype=torch.float32, targets="all", r=4, alpha=8, seed=0, tie=False, **variant):
    """(a PEFT-wrapped random LlamaForCausalLM, our LoRA'd Llama with the same weights and adapters)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    hf = LlamaForCausalLM(HFConfig(**HF_SIZES, tie_word_embeddings=tie)).eval()
    with torch.no_grad():  # norm gains away from 1, so a mix-up of norms shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    # built in float32 (Llama.from_tensors makes a float32 model), then both cast: the same weights exactly
    ours = llama_from_hf_state(hf.config.to_dict(), hf.state_dict()).to(dtype)
    hf = hf.to(dtype)
    if dtype == torch.float64:
        _all_in_float64(hf, ours)
    names = lora.resolve_targets(targets)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=[lora.HF_MODULES[t].split(".")[1]
                        for t in names], use_rslora=variant.get("rslora", False),
                        use_dora=variant.get("use_dora", False))
    peft_model = get_peft_model(hf, config).eval()
    apply_lora(ours, r=r, alpha=alpha, targets=names, **variant).eval()
    theirs = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, p in theirs.items():
            if "lora_B" in name:  # B = 0 at init would hide every mistake in B's layout
                p.normal_(0.0, 0.2)
            if "lora_magnitude" in name:
                p.mul_(1.0 + 0.3 * torch.rand_like(p))
        for name, p in lora_state(ours).items():
            p.copy_(theirs[peft_name(name)])
    return peft_model, ours


def _loss(idx: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of logits (B, T, V) on the ids (B, T) themselves, in the logits' dtype."""
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())


def _ids(B=2, T=12, seed=1):
    return torch.randint(HF_SIZES["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("targets", ["attention", "all"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_and_gradients_equal_peft(dtype, targets, variant):
    """Same logits and adapter gradients as PEFT on LlamaForCausalLM. Measured: logits 0 in both dtypes (the same
    ops); gradients float64 <= 2.3e-15, float32 <= 1.2e-6 (|grad| up to 2.6: the fused wqkv sums in another order)."""
    peft_model, ours = hf_pair(dtype, targets, **VARIANTS[variant])
    idx = _ids()
    theirs, ours_logits = peft_model(idx).logits, ours(idx)[0]
    torch.testing.assert_close(ours_logits, theirs, **TOL[dtype])
    _loss(idx, theirs).backward()  # our loss on both (transformers' own computes in float32)
    _loss(idx, ours_logits).backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    ours_grads = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert len(ours_grads) == len(grads) > 0
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, grads[peft_name(name)], **TOL[dtype], msg=name)
    assert all(p.grad is None for n, p in ours.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_merged_models_equal_peft_and_unmerged(dtype, variant):
    """Merged: ours == PEFT's merged model (measured 0); float64: == our unmerged model (measured 5e-14); unmerge
    restores the weights (float64 1.1e-16, float32 6e-8). Float32 merged vs unmerged sits at the float32 rounding
    of this random model itself (1e-5 with logits ~7, as float32 vs float64 does): tested on a smaller model below."""
    peft_model, ours = hf_pair(dtype, "all", **VARIANTS[variant])
    idx = _ids()
    before = {k: v.clone() for k, v in lora.base_tensors(ours).items()}
    unmerged = ours(idx)[0]
    with torch.no_grad():
        peft_model.merge_adapter()
        merged = merge_all(ours)(idx)[0]
        torch.testing.assert_close(merged, peft_model(idx).logits, **TOL[dtype])
    if dtype == torch.float64:
        torch.testing.assert_close(merged, unmerged, **tolerances.FLOAT64)
    unmerge_all(ours)
    tol = tolerances.FLOAT64 if dtype == torch.float64 else tolerances.FLOAT32
    for name, w in lora.base_tensors(ours).items():
        torch.testing.assert_close(w, before[name], **tol, msg=name)
    torch.testing.assert_close(ours(idx)[0], unmerged, **TOL[dtype])


def _peft_linear(dropout=0.0, **variant):
    """(one nn.Linear wrapped by PEFT, our LoRALinear on a copy) with the same nonzero A, B, magnitude."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(24, 40, bias=True)).double()
    ours = LoRALinear(nn.Linear(24, 40, bias=True).double())
    ours.base.load_state_dict(net[0].state_dict())
    ours.add_adapter("all", r=3, alpha=5, dropout=dropout, **variant)
    peft_model = get_peft_model(net, LoraConfig(r=3, lora_alpha=5, lora_dropout=dropout, target_modules=["0"],
                                                use_rslora=variant.get("rslora", False),
                                                use_dora=variant.get("use_dora", False)))
    layer = peft_model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        adapter = ours.adapters["all"]
        adapter.A.copy_(layer.lora_A["default"].weight)
        adapter.B.copy_(layer.lora_B["default"].weight)
        if adapter.magnitude is not None:
            layer.lora_magnitude_vector["default"].weight.mul_(1.5)
            adapter.magnitude.copy_(layer.lora_magnitude_vector["default"].weight)
    return peft_model, ours


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_one_projection_equals_peft_in_float64(variant, dropout):
    """One LoRALinear (with a bias, training mode) vs PEFT on one nn.Linear, float64 (measured 0)."""
    peft_model, ours = _peft_linear(dropout=dropout, **VARIANTS[variant])
    peft_model.train()
    ours.train()
    x = torch.randn(5, 24, dtype=torch.float64)
    torch.manual_seed(7)
    theirs = peft_model(x)
    torch.manual_seed(7)  # the same dropout mask: both draw it once, after the base product
    y = ours(x)
    torch.testing.assert_close(y, theirs, **tolerances.FLOAT64)
    (theirs ** 2).sum().backward()
    (y ** 2).sum().backward()
    layer, adapter = peft_model.base_model.model[0], ours.adapters["all"]
    torch.testing.assert_close(adapter.A.grad, layer.lora_A["default"].weight.grad, **tolerances.FLOAT64)
    torch.testing.assert_close(adapter.B.grad, layer.lora_B["default"].weight.grad, **tolerances.FLOAT64)
    if adapter.magnitude is not None:
        torch.testing.assert_close(adapter.magnitude.grad, layer.lora_magnitude_vector["default"].weight.grad,
                                   **tolerances.FLOAT64)


SMALL = LlamaConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)


def _small(dtype=torch.float64, **kwargs) -> Llama:
    torch.manual_seed(0)
    return apply_lora(Llama(SMALL).to(dtype).eval(), **kwargs)


def test_shapes_and_row_blocks():
    model = _small(r=4, targets="all", use_dora=True)
    wqkv, D = model.blocks[0].attn.wqkv, SMALL.head_dim
    assert isinstance(wqkv, LoRALinear) and list(wqkv.adapters) == ["q", "k", "v"]
    assert wqkv.adapters["q"].A.shape == (4, 32) and wqkv.adapters["q"].B.shape == (4 * D, 4)
    assert wqkv.adapters["k"].B.shape == (2 * D, 4) and wqkv.rows("v") == slice(6 * D, 8 * D)
    assert wqkv.adapters["v"].magnitude.shape == (2 * D,)
    gate_up = model.blocks[1].ffn.gate_up
    assert list(gate_up.adapters) == ["gate", "up"] and gate_up.adapters["up"].B.shape == (SMALL.ffn_hidden, 4)
    assert model.blocks[0].ffn.down.adapters["down"].A.shape == (4, SMALL.ffn_hidden)
    assert not isinstance(_small(targets="attention").blocks[0].ffn.down, LoRALinear)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_zero_B_leaves_the_model_unchanged(variant):
    """At init B = 0 (and DoRA's m = ||W||): the output is the base model's, exactly."""
    torch.manual_seed(0)
    base = Llama(SMALL).double().eval()
    idx = torch.randint(SMALL.vocab_size, (2, 10))
    before = base(idx)[0]
    model = apply_lora(base, r=4, seed=0, **VARIANTS[variant])
    assert torch.equal(model(idx)[0], before)


def test_A_is_kaiming_uniform_and_seeded():
    """A ~ U(-1/sqrt(in), 1/sqrt(in)) (Kaiming-uniform with a = sqrt(5), as PEFT); the same seed, the same A."""
    a, b, c = (lora_state(_small(r=8, seed=s)) for s in (3, 3, 4))
    A = a["blocks.0.attn.wqkv.adapters.q.A"]
    assert A.abs().max() <= 1 / math.sqrt(SMALL.n_embd) and A.std() > 0.5 / math.sqrt(3 * SMALL.n_embd)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(A, c["blocks.0.attn.wqkv.adapters.q.A"])


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_merge_unmerge_round_trip(variant, dtype):
    """merged forward == unmerged forward; unmerge restores W to float rounding (float64 1e-12, float32 1e-6)."""
    model = _small(dtype, r=4, seed=0, **VARIANTS[variant])
    with torch.no_grad():
        for p in lora_state(model).values():
            p.add_(0.1 * torch.randn_like(p))
    tol = tolerances.FLOAT64 if dtype == torch.float64 else tolerances.FLOAT32
    idx = torch.randint(SMALL.vocab_size, (2, 10))
    before, y = {k: v.clone() for k, v in lora.base_tensors(model).items()}, model(idx)[0]
    merge_all(model)
    assert any(not torch.equal(v, before[k]) for k, v in lora.base_tensors(model).items())
    torch.testing.assert_close(model(idx)[0], y, **(tol if dtype == torch.float64 else tolerances.FLOAT32_MODEL))
    with pytest.raises(RuntimeError, match="already merged"):
        merge_all(model)
    unmerge_all(model)
    for k, v in lora.base_tensors(model).items():
        torch.testing.assert_close(v, before[k], **tol, msg=k)


def test_merge_and_unload_gives_back_a_plain_llama():
    model = _small(r=4, seed=0)
    with torch.no_grad():
        for p in lora_state(model).values():
            p.add_(0.1 * torch.randn_like(p))
    idx = torch.randint(SMALL.vocab_size, (2, 10))
    y = model(idx)[0]
    plain = lora.merge_and_unload(model)
    assert not lora.lora_layers(plain) and set(plain.tensors()) == set(Llama(SMALL).tensors())
    torch.testing.assert_close(plain(idx)[0], y, **tolerances.FLOAT64)


@pytest.mark.parametrize("targets", ["attention", "mlp", "all", ("q", "v")])
@pytest.mark.parametrize("use_dora", [False, True])
def test_trainable_count_is_the_formula(targets, use_dora):
    """r * (in + out) per adapted matrix (+ out for DoRA's magnitude), all in float32; nothing else trains."""
    r, C, D, F = 8, SMALL.n_embd, SMALL.head_dim, SMALL.ffn_hidden
    shapes = {"q": (C, SMALL.n_head * D), "k": (C, SMALL.n_kv_head * D), "v": (C, SMALL.n_kv_head * D),
              "o": (C, C), "gate": (C, F), "up": (C, F), "down": (F, C)}  # (in, out)
    names = lora.resolve_targets(targets)
    per_layer = sum(r * (i + o) + (o if use_dora else 0) for i, o in (shapes[t] for t in names))
    model = _small(torch.float32, r=r, targets=targets, use_dora=use_dora)
    assert lora.trainable_parameters(model) == (SMALL.n_layer * per_layer, 4 * SMALL.n_layer * per_layer)
    assert sum(p.numel() for p in lora_state(model).values()) == SMALL.n_layer * per_layer


def test_names_map_to_peft_and_back():
    model = _small(targets="all", use_dora=True)
    for name in lora_state(model):
        assert lora.ours_name(peft_name(name)) == name == lora.ours_name(peft_name(name, adapter=None))
    assert peft_name("blocks.1.ffn.gate_up.adapters.up.B") == "base_model.model.model.layers.1.mlp.up_proj.lora_B.default.weight"
    assert peft_name("blocks.0.attn.wo.adapters.o.magnitude", adapter=None) == \
        "base_model.model.model.layers.0.self_attn.o_proj.lora_magnitude_vector"
    with pytest.raises(ValueError, match="PEFT's naming"):
        lora.ours_name("base_model.model.model.embed_tokens.weight")


def test_refusals():
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        _small(targets=("q", "query"))
    with pytest.raises(ValueError, match="experts"):
        apply_lora(Llama(LlamaConfig(**{**SMALL.to_dict(), "n_experts": 4})))
    model = _small(r=4)
    with pytest.raises(ValueError, match="already has an adapter"):
        apply_lora(model, r=4, targets="q")
    bad = {k: torch.zeros(8, v.shape[-1]) if k.endswith(".A") else v for k, v in lora_state(model).items()}
    with pytest.raises(ValueError, match="another rank"):
        lora.load_lora_state(model, bad)
