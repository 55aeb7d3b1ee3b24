"""nanolm.model.mla: latent attention's cache, its absorbed form, and its relative positions."""

import pytest
import torch

from nanolm.model import mla
from nanolm.model.llama import Llama, LlamaConfig

CFG = LlamaConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32, attention="mla", kv_rank=12,
                  rope_dim=4)


def _attn(seed=0):
    torch.manual_seed(seed)
    return mla.LatentAttention(CFG).eval()


def test_cache_holds_latent_and_rope_key_only():
    """Measured cache bytes == (kv_rank + rope_dim) * 4 bytes per token and layer; MHA would need 2*C."""
    torch.manual_seed(0)
    model = Llama(CFG).eval()
    cache = model.new_cache(32)
    model(torch.randint(64, (3, 20)), cache=cache)
    per_token = mla.cache_floats_per_token(CFG)
    assert per_token == 2 * (12 + 4)
    assert cache.nbytes() == 3 * 20 * per_token * 4
    mha = LlamaConfig(**{**CFG.to_dict(), "attention": "gqa"})
    assert mla.cache_floats_per_token(mha) == 2 * 2 * 32


def test_absorbed_scores_equal_explicit_keys():
    """(W_uk^T q) . c + q_r . k_r == q . [W_uk c ; k_r]: attention can run on the cached latent (1e-5)."""
    attn = _attn()
    x = torch.randn(2, 6, 32)
    pos = torch.arange(6)
    latent = attn.kv_norm(attn.w_dkv(x))
    cos, sin = mla.rope_angles(pos, attn.inv_freq)
    k_rope = mla.apply_rope(attn.w_kr(x).unsqueeze(1), cos, sin)
    q = attn.wq(x).view(2, 6, 4, 12).transpose(1, 2)
    q = torch.cat((q[..., :8], mla.apply_rope(q[..., 8:], cos, sin)), dim=-1)
    k = torch.cat((attn.w_uk(latent).view(2, 6, 4, 8).transpose(1, 2), k_rope.expand(2, 4, 6, 4)), dim=-1)
    torch.testing.assert_close(attn.absorbed_scores(x, pos, latent, k_rope), q @ k.transpose(-2, -1),
                               atol=1e-5, rtol=0)


def test_scores_depend_only_on_relative_position():
    attn = _attn()
    x = torch.randn(1, 5, 32)

    def scores(start):
        pos = torch.arange(start, start + 5)
        latent = attn.kv_norm(attn.w_dkv(x))
        cos, sin = mla.rope_angles(pos, attn.inv_freq)
        return attn.absorbed_scores(x, pos, latent, mla.apply_rope(attn.w_kr(x).unsqueeze(1), cos, sin))

    torch.testing.assert_close(scores(100), scores(0), atol=1e-4, rtol=1e-5)
    y0 = attn(x, torch.arange(5))
    torch.testing.assert_close(attn(x, torch.arange(50, 55)), y0, atol=1e-5, rtol=0)


def test_without_rope_nothing_is_rotated_and_scores_ignore_position():
    """pos='none' or 'learned': no decoupled RoPE part; scores of one token repeated are equal at every offset."""
    for pos in ("none", "learned"):
        cfg = LlamaConfig(**{**CFG.to_dict(), "pos": pos, "rope_dim": 0})
        torch.manual_seed(0)
        attn = mla.LatentAttention(cfg).eval()
        assert attn.rope_dim == 0 and attn.w_kr is None and attn.wq.out_features == 4 * 8
        x = torch.randn(1, 1, 32).expand(1, 6, 32)  # the same token at positions 0 .. 5
        scores = attn.absorbed_scores(x, torch.arange(6), attn.kv_norm(attn.w_dkv(x)))  # (1, H, 6, 6)
        torch.testing.assert_close(scores, scores[..., :1, :1].expand_as(scores), atol=1e-5, rtol=0)
        assert mla.cache_floats_per_token(cfg) == 2 * 12  # the latent alone


def test_without_positions_the_last_output_ignores_the_order_of_the_prefix():
    """pos='none': attention sees the earlier tokens as a set, so shuffling them leaves the last output alone."""
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(1))
    shuffled = torch.cat([x[:, :9].flip(1), x[:, 9:]], dim=1)
    outputs = {}
    for pos, rope_dim in (("none", 0), ("rope", 4)):
        cfg = LlamaConfig(**{**CFG.to_dict(), "pos": pos, "rope_dim": rope_dim})
        torch.manual_seed(0)
        attn = mla.LatentAttention(cfg).eval()
        outputs[pos] = [attn(t, torch.arange(10))[:, -1] for t in (x, shuffled)]
    torch.testing.assert_close(*outputs["none"], atol=1e-6, rtol=0)
    assert (outputs["rope"][0] - outputs["rope"][1]).abs().max() > 1e-2  # with RoPE the order matters
    model = Llama(LlamaConfig(**{**CFG.to_dict(), "pos": "none", "rope_dim": 0})).eval()
    cache = model.new_cache()  # the cache holds one tensor per layer: the latent
    model(torch.randint(64, (1, 10)), cache=cache)
    assert len(cache.buffers[0]) == 1 and cache.nbytes() == 2 * 10 * 12 * 4


def test_rope_dim_must_match_pos():
    with pytest.raises(ValueError, match="rope_dim=0"):
        LlamaConfig(**{**CFG.to_dict(), "pos": "none"})  # rope_dim=4 would rotate nothing
    with pytest.raises(ValueError, match="even rope_dim"):
        LlamaConfig(**{**CFG.to_dict(), "rope_dim": 0})
