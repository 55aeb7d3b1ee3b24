"""The real model read by nanolm (gguf_llama.load_llama) against transformers' LlamaForCausalLM read from the same file.

transformers dequantizes the GGUF file itself (its own loader, built on the `gguf` package), so the two
models share nothing but the file. Both run in float32 on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from real_model import smollm2_path

from nanolm.core import gguf
from nanolm.model import gguf_llama
from nanolm.model.layers import apply_rope, apply_rope_complex, rope_angles, rope_frequencies
from nanolm.model.llama import Llama, LlamaConfig

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n" in the file's tokenizer
CHAT = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]






@pytest.fixture(scope="module")
def models():
    """(our Llama, its config dict, transformers' LlamaForCausalLM), both from the GGUF file, loaded once."""
    from transformers import AutoModelForCausalLM

    path = smollm2_path()
    ours, cfg = gguf_llama.load_llama(path)
    theirs = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return ours, cfg, theirs


def _prompts() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    rand = [torch.randint(0, 49152, (1, T), generator=g) for T in (1, 5, 64)]
    return [torch.tensor([CHAT]), *rand, torch.randint(0, 49152, (2, 17), generator=g)]


def _max_diff(ours, theirs, idx: torch.Tensor) -> float:
    with torch.no_grad():
        return (ours(idx)[0] - theirs(idx).logits).abs().max().item()


def test_config_from_metadata(models):
    ours, cfg, theirs = models
    assert cfg == LlamaConfig.from_dict(cfg).to_dict()
    want = dict(vocab_size=49152, block_size=8192, n_layer=30, n_head=9, n_kv_head=3, n_embd=576, ffn_hidden=1536,
                rope_theta=100000.0, tie_embeddings=True)
    assert {k: cfg[k] for k in want} == want
    assert cfg["norm_eps"] == pytest.approx(1e-5)
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters()) == 134_515_008
    assert ours.head.weight is ours.tok_emb.weight


def test_logits_equal_transformers(models):
    """Max |logit difference| measured on these prompts: 0.0 (the same float32 operations in the same order).

    The tolerance is that measured value: any change in the weights' mapping shows up here.
    """
    ours, _, theirs = models
    for idx in _prompts():
        assert _max_diff(ours, theirs, idx) <= 0.0, idx.shape


def test_greedy_generation_equals_transformers(models):
    """64 greedy tokens from a chat prompt: our generate (temperature 0, KV cache) == transformers' generate."""
    from transformers import GenerationConfig

    ours, _, theirs = models
    idx = torch.tensor([CHAT])
    mine = ours.generate(idx, 64, temperature=0.0)
    config = GenerationConfig(do_sample=False, max_new_tokens=64, eos_token_id=[], pad_token_id=2)  # [] : never stop early
    with torch.no_grad():
        ref = theirs.generate(idx, generation_config=config, attention_mask=torch.ones_like(idx))
    assert ref.shape == (1, len(CHAT) + 64)
    assert torch.equal(mine, ref)


def test_rope_unpermutation_is_needed(models):
    """With W_q and W_k rows left in llama.cpp's interleaved order, the logits are far off."""
    ours, _, theirs = models
    f = gguf.read(smollm2_path())
    cfg = ours.config
    H, Hkv, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    for i in range(cfg.n_layer):
        w = state[f"blocks.{i}.attn.wqkv.weight"]
        w[:H * D] = torch.from_numpy(f.tensor(f"blk.{i}.attn_q.weight"))  # as stored: not un-permuted
        w[H * D:(H + Hkv) * D] = torch.from_numpy(f.tensor(f"blk.{i}.attn_k.weight"))
    wrong = Llama(cfg).eval()
    wrong.load_state_dict(state)
    idx = _prompts()[3]  # 64 tokens
    assert _max_diff(wrong, theirs, idx) > 1.0
    assert _max_diff(ours, theirs, idx) == 0.0


def test_unpermute_inverts_llama_cpp_permute():
    """convert_hf_to_gguf.py's `permute` (written out here) followed by unpermute_rope is the identity."""
    H, D, C = 3, 8, 5
    w = np.random.default_rng(0).standard_normal((H * D, C)).astype(np.float32)
    permuted = w.reshape(H, 2, D // 2, C).swapaxes(1, 2).reshape(H * D, C)  # half-split -> interleaved pairs
    assert np.array_equal(gguf_llama.unpermute_rope(permuted, H), w)
    assert not np.array_equal(permuted, w)


def test_unpermuted_rows_turn_the_same_under_half_split_rope():
    """Interleaved RoPE on the GGUF rows == half-split RoPE on the un-permuted rows (one head, up to reordering)."""
    D, C, T = 8, 6, 5
    rng = np.random.default_rng(1)
    w_gguf = rng.standard_normal((D, C)).astype(np.float32)
    x = torch.from_numpy(rng.standard_normal((T, C)).astype(np.float32))
    positions = torch.arange(T)
    q_inter = apply_rope_complex(x @ torch.from_numpy(w_gguf).T, positions)  # (T, D) pairs (2i, 2i+1)
    cos, sin = rope_angles(positions, rope_frequencies(D))
    q_half = apply_rope(x @ torch.from_numpy(gguf_llama.unpermute_rope(w_gguf, 1)).T, cos, sin)  # (T, D)
    torch.testing.assert_close(torch.cat([q_inter[:, 0::2], q_inter[:, 1::2]], dim=-1), q_half)


def test_bad_metadata_is_refused(tmp_path):
    import gguf as ref

    path = tmp_path / "notllama.gguf"
    w = ref.GGUFWriter(path, arch="gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="not a llama GGUF file"):
        gguf_llama.load_llama(path)
