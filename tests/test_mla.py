"""nanolm.model.mla: latent attention's cache, its absorbed form, and its relative positions."""

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
