"""A llama.cpp GGUF file's weights in nanolm's Llama: config from the metadata, tensors renamed and fused.

GGUF names (llama.cpp)              nanolm.model.llama.Llama
    token_embd.weight               tok_emb.weight (and the head, when output.weight is absent: tied)
    blk.N.attn_norm.weight          blocks.N.norm_1.weight
    blk.N.attn_q / attn_k / attn_v  blocks.N.attn.wqkv.weight  = rows [q; k; v]
    blk.N.attn_output.weight        blocks.N.attn.wo.weight
    blk.N.ffn_norm.weight           blocks.N.norm_2.weight
    blk.N.ffn_gate / ffn_up         blocks.N.ffn.gate_up.weight = rows [gate; up]
    blk.N.ffn_down.weight           blocks.N.ffn.down.weight
    output_norm.weight              norm_f.weight
    output.weight                   head.weight (untied models only)

llama.cpp rotates feature pairs (2i, 2i+1) of each head (Meta's interleaved RoPE), while nanolm (like
Hugging Face) rotates feature i with feature i + D/2. So when a Hugging Face checkpoint becomes a GGUF
file, the rows of W_q and W_k inside each head are permuted: half-split row i goes to row 2i and row
D/2 + i to row 2i + 1. `unpermute_rope` puts them back; without it the logits are far off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core import gguf
from .llama import Llama, LlamaConfig

_BLOCK = {"attn_norm.weight": "norm_1.weight", "attn_output.weight": "attn.wo.weight",
          "ffn_norm.weight": "norm_2.weight", "ffn_down.weight": "ffn.down.weight"}


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """W_q or W_k (n_heads * D, C) from llama.cpp's interleaved row order back to the half-split order.

    Inside each head, rows (0, 1), (2, 3), ... are the pairs llama.cpp rotates together; the half-split
    form wants the first of every pair in the first half and the second in the second half.
    """
    rows, cols = w.shape
    D = rows // n_heads
    per_head = w.reshape(n_heads, D // 2, 2, cols)  # (head, pair, which of the two, C)
    return per_head.swapaxes(1, 2).reshape(rows, cols)  # (head, which of the two, pair, C): the halves


def llama_config(f: gguf.GGUFFile) -> LlamaConfig:
    """A LlamaConfig from the llama.* metadata keys (vocabulary size from the token list)."""
    m = f.metadata
    if m.get("general.architecture") != "llama":
        raise ValueError(f"not a llama GGUF file: general.architecture is {m.get('general.architecture')!r}")

    def key(name: str, default=None):
        value = m.get(f"llama.{name}", default)
        if value is None:
            raise ValueError(f"{f.path.name} has no metadata key 'llama.{name}'")
        return value

    if m.get("llama.rope.scaling.type", "none") != "none" or key("expert_count", 0):
        raise ValueError("RoPE scaling and mixture-of-experts llama files are not supported")
    tokens = m.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens else key("vocab_size")
    n_embd, n_head = key("embedding_length"), key("attention.head_count")
    cfg = LlamaConfig(
        vocab_size=vocab, block_size=key("context_length"), n_layer=key("block_count"), n_head=n_head,
        n_kv_head=key("attention.head_count_kv", n_head), n_embd=n_embd, ffn_hidden=key("feed_forward_length"),
        rope_theta=float(key("rope.freq_base", 10000.0)), norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in f.tensors,
    )
    if key("rope.dimension_count", cfg.head_dim) != cfg.head_dim:
        raise ValueError(f"partial RoPE (rope.dimension_count {m['llama.rope.dimension_count']} of head size "
                         f"{cfg.head_dim}) is not supported")
    rows = f.tensors["token_embd.weight"].shape[0]
    if rows != vocab:
        raise ValueError(f"token_embd.weight has {rows} rows but the vocabulary has {vocab} tokens")
    return cfg


def llama_tensors(f: gguf.GGUFFile, cfg: LlamaConfig, undo_rope_permutation: bool = True) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32, renamed and fused for Llama.from_tensors."""

    used = set()

    def get(name: str) -> np.ndarray:
        used.add(name)
        return f.tensor(name)

    out = {"tok_emb.weight": get("token_embd.weight"), "norm_f.weight": get("output_norm.weight")}
    if not cfg.tie_embeddings:
        out["head.weight"] = get("output.weight")
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        q, k = get(b + "attn_q.weight"), get(b + "attn_k.weight")  # (H*D, C), (Hkv*D, C)
        if undo_rope_permutation:
            q, k = unpermute_rope(q, cfg.n_head), unpermute_rope(k, cfg.n_kv_head)
        out[f"blocks.{i}.attn.wqkv.weight"] = np.concatenate([q, k, get(b + "attn_v.weight")])  # ((H+2Hkv)*D, C)
        out[f"blocks.{i}.ffn.gate_up.weight"] = np.concatenate([get(b + "ffn_gate.weight"), get(b + "ffn_up.weight")])
        for src, dst in _BLOCK.items():
            out[f"blocks.{i}.{dst}"] = get(b + src)
    if set(f.tensors) - used:
        raise ValueError(f"tensors a plain Llama has no place for: {sorted(set(f.tensors) - used)[:5]}")
    return {name: torch.from_numpy(np.ascontiguousarray(t)) for name, t in out.items()}


def load_llama(path: str | Path, dtype: torch.dtype = torch.float32,
               undo_rope_permutation: bool = True) -> tuple[Llama, dict]:
    """Read a llama GGUF file into our Llama -> (model in eval mode, its config as a dict).

    undo_rope_permutation=False keeps llama.cpp's row order (wrong for our RoPE: for the lesson only).
    """
    f = gguf.read(path)
    cfg = llama_config(f)
    model = Llama.from_tensors(cfg, llama_tensors(f, cfg, undo_rope_permutation))
    return model.to(dtype).eval(), cfg.to_dict()
