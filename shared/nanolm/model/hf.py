"""Our models <-> Hugging Face transformers: GPT <-> GPT2LMHeadModel, Llama <-> LlamaForCausalLM.

`to_hf(model)` and `from_hf(hf_model)` pick the family; both build the transformers model locally from a
config (nothing is downloaded). The parity tests and notebooks 07 and 09 run the same weights through
both and compare logits.
"""

from __future__ import annotations

import torch

from .gpt import GPT, GPTConfig
from .llama import Llama, LlamaConfig


def to_hf(model: GPT | Llama):
    """A transformers model holding our weights: GPT2LMHeadModel for a GPT, LlamaForCausalLM for a Llama."""
    if isinstance(model, GPT):
        return gpt_to_hf(model)
    if isinstance(model, Llama):
        return llama_to_hf(model)
    raise TypeError(f"no Hugging Face mapping for a {type(model).__name__}")


def from_hf(hf) -> GPT | Llama:
    """Our model with the weights of a transformers GPT2LMHeadModel or LlamaForCausalLM."""
    kind = getattr(hf.config, "model_type", None)
    if kind == "gpt2":
        return gpt_from_hf(hf)
    if kind == "llama":
        return llama_from_hf(hf)
    raise TypeError(f"no mapping from a Hugging Face {kind!r} model (gpt2 and llama are supported)")


# ---------------------------------------------------------------------- GPT-2

# ours -> transformers' GPT2LMHeadModel. HF stores Linear weights as Conv1D (in, out): transpose.
_GPT2_BLOCK = {
    "ln_1.weight": "ln_1.weight", "ln_1.bias": "ln_1.bias",
    "attn.qkv.weight": "attn.c_attn.weight", "attn.qkv.bias": "attn.c_attn.bias",
    "attn.proj.weight": "attn.c_proj.weight", "attn.proj.bias": "attn.c_proj.bias",
    "ln_2.weight": "ln_2.weight", "ln_2.bias": "ln_2.bias",
    "mlp.fc.weight": "mlp.c_fc.weight", "mlp.fc.bias": "mlp.c_fc.bias",
    "mlp.proj.weight": "mlp.c_proj.weight", "mlp.proj.bias": "mlp.c_proj.bias",
}
_GPT2_TOP = {"tok_emb.weight": "transformer.wte.weight", "pos_emb.weight": "transformer.wpe.weight",
           "ln_f.weight": "transformer.ln_f.weight", "ln_f.bias": "transformer.ln_f.bias"}


def gpt2_name(ours: str) -> tuple[str, bool]:
    """Our parameter name -> (the GPT2LMHeadModel name, whether the weight must be transposed)."""
    if ours in _GPT2_TOP:
        return _GPT2_TOP[ours], False
    _, i, rest = ours.split(".", 2)  # blocks.{i}.{rest}
    return f"transformer.h.{i}.{_GPT2_BLOCK[rest]}", rest.endswith(".weight") and not rest.startswith("ln_")


def gpt_to_hf(model: GPT):
    """A transformers GPT2LMHeadModel with our weights (needs bias=True, GPT-2's layout)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.config
    if not cfg.bias:
        raise ValueError("GPT-2 has biases everywhere: only a GPT with bias=True maps onto GPT2LMHeadModel")
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True,
    ))
    state = {}
    for name, tensor in model.tensors().items():
        target, transpose = gpt2_name(name)
        state[target] = tensor.t() if transpose else tensor
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # the only keys we do not supply: the tied lm_head and (older versions) causal-mask buffers
    left = [k for k in missing if k != "lm_head.weight" and not k.endswith(("attn.bias", "attn.masked_bias"))]
    if left or unexpected:
        raise RuntimeError(f"weight mapping to GPT-2 is incomplete: missing {left}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def gpt_from_hf(hf) -> GPT:
    """Our GPT with the weights of a transformers GPT2LMHeadModel."""
    c = hf.config
    cfg = GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                    n_embd=c.n_embd, dropout=0.0, bias=True)
    hf_state = hf.state_dict()
    tensors = {}
    for name in GPT(cfg).tensors():
        source, transpose = gpt2_name(name)
        tensors[name] = hf_state[source].t() if transpose else hf_state[source]
    return GPT.from_tensors(cfg, {k: v.contiguous() for k, v in tensors.items()}).eval()


# ---------------------------------------------------------------------- Llama

_LLAMA_BLOCK = {
    "norm_1.weight": "input_layernorm.weight", "norm_2.weight": "post_attention_layernorm.weight",
    "attn.wo.weight": "self_attn.o_proj.weight", "ffn.down.weight": "mlp.down_proj.weight",
}
_LLAMA_SPLIT = {  # our fused matrices -> the row blocks HF keeps as separate Linear layers
    "attn.wqkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "ffn.gate_up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}
_LLAMA_TOP = {"tok_emb.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight",
           "head.weight": "lm_head.weight"}


def llama_names(ours: str) -> tuple[str, ...]:
    """Our parameter name -> transformers' LlamaForCausalLM name(s): fused matrices map to several, by rows."""
    if ours in _LLAMA_TOP:
        return (_LLAMA_TOP[ours],)
    _, i, rest = ours.split(".", 2)  # blocks.{i}.{rest}
    names = _LLAMA_SPLIT[rest] if rest in _LLAMA_SPLIT else (_LLAMA_BLOCK[rest],)
    return tuple(f"model.layers.{i}.{name}" for name in names)


def _row_sizes(cfg: LlamaConfig, name: str) -> list[int]:
    D = cfg.head_dim
    if name.endswith("wqkv.weight"):
        return [cfg.n_head * D, cfg.n_kv_head * D, cfg.n_kv_head * D]
    return [cfg.ffn_hidden, cfg.ffn_hidden]


def llama_to_hf_state(model: Llama) -> dict[str, torch.Tensor]:
    """Our tensors under transformers' names (no transposes: both sides are nn.Linear (out, in))."""
    state = {}
    for name, t in model.tensors().items():
        targets = llama_names(name)
        parts = t.split(_row_sizes(model.config, name)) if len(targets) > 1 else (t,)
        state.update(zip(targets, parts, strict=True))
    return state


def llama_to_hf(model: Llama):
    """A transformers LlamaForCausalLM (built locally from a LlamaConfig) holding our weights."""
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM

    c = model.config
    plain = dict(pos="rope", norm="rms", mlp="swiglu", bias=False, attention="gqa", n_experts=0, qk_norm=False)
    off = {k: getattr(c, k) for k, v in plain.items() if getattr(c, k) != v}
    if off:
        raise ValueError(f"only a plain Llama maps onto LlamaForCausalLM; this one has {off}")
    hf = LlamaForCausalLM(HFLlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.ffn_hidden, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head, max_position_embeddings=c.block_size,
        rms_norm_eps=c.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=c.tie_embeddings, attention_bias=False, mlp_bias=False, attention_dropout=0.0,
    ))
    missing, unexpected = hf.load_state_dict(llama_to_hf_state(model), strict=False)
    left = [k for k in missing if not (c.tie_embeddings and k == "lm_head.weight")]
    if left or unexpected:
        raise RuntimeError(f"weight mapping to LlamaForCausalLM is incomplete: missing {left}, unexpected {unexpected}")
    if c.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def llama_config_from_hf(config: dict) -> LlamaConfig:
    """A LlamaConfig from a transformers Llama config (config.json as a dict); what ours cannot run is refused."""
    if config.get("model_type") != "llama":
        raise ValueError(f"not a Llama config: model_type is {config.get('model_type')!r}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"only default RoPE is supported, got {rope}")
    n_embd, n_head = config["hidden_size"], config["num_attention_heads"]
    unsupported = {k: config[k] for k, plain in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False))
                   if config.get(k, plain) != plain}
    if config.get("head_dim") not in (None, n_embd // n_head):
        unsupported["head_dim"] = config["head_dim"]
    if unsupported:
        raise ValueError(f"only a plain Llama maps onto ours; this config has {unsupported}")
    return LlamaConfig(
        vocab_size=config["vocab_size"], block_size=config["max_position_embeddings"],
        n_layer=config["num_hidden_layers"], n_head=n_head,
        n_kv_head=config.get("num_key_value_heads") or n_head, n_embd=n_embd,
        ffn_hidden=config["intermediate_size"], rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 1e4))),
        norm_eps=config.get("rms_norm_eps", 1e-6), tie_embeddings=config.get("tie_word_embeddings", True))


def llama_from_hf_state(config: dict, state: dict[str, torch.Tensor]) -> Llama:
    """Our Llama from a transformers config dict and state dict (HF names): fused matrices joined by rows."""
    cfg = llama_config_from_hf(config)
    names = [*_LLAMA_TOP, *(f"blocks.{i}.{rest}" for i in range(cfg.n_layer) for rest in (*_LLAMA_BLOCK, *_LLAMA_SPLIT))]
    if cfg.tie_embeddings:
        names.remove("head.weight")  # the token embedding; Llama.from_tensors checks the full set again
    wanted = {hf_name for name in names for hf_name in llama_names(name)}
    missing = sorted(wanted - set(state))
    extra = sorted(set(state) - wanted - ({"lm_head.weight"} if cfg.tie_embeddings else set()))
    if missing or extra:
        raise ValueError(f"these tensors do not fit a Llama with this config: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    tensors = {name: _join([state[n] for n in llama_names(name)]) for name in names}
    return Llama.from_tensors(cfg, tensors).eval()


def _join(parts: list[torch.Tensor]) -> torch.Tensor:
    """Row blocks as one matrix (a single block as it is: no copy)."""
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)


def llama_from_hf(hf) -> Llama:
    """Our Llama with the weights of a transformers LlamaForCausalLM (default RoPE only)."""
    return llama_from_hf_state(hf.config.to_dict(), hf.state_dict())
