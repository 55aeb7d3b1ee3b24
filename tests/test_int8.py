"""Int8 weight-only decoding: the kernel equals dequantize-then-multiply, the model stays close, greedy
generation runs through the engine's runner, and LoRA'd models are refused."""

import pytest
import torch
from helpers import tiny_chat

from nanolm.adapt import lora
from nanolm.adapt.quant import dequantize_int8, quantize_int8
from nanolm.model.llama import Llama, LlamaConfig
from nanolm.use import int8
from nanolm.use.runner import SlotCache, forward_rows


def test_int8_linear_equals_its_dequantized_weight():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=False)
    x = torch.randn(5, 7, 64)
    fast, slow = int8.Int8Linear(lin, "int8pack"), int8.Int8Linear(lin, "dequantize")
    w = dequantize_int8(quantize_int8(lin.weight.detach()))  # the reference: adapt.quant's own round trip
    torch.testing.assert_close(fast.dequantized(), w, rtol=1e-6, atol=1e-7)  # scale = absmax / 127, rounded
    torch.testing.assert_close(slow(x), x @ w.T, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast(x), x @ w.T, rtol=1e-5, atol=1e-5)
    assert (lin(x) - fast(x)).abs().max() < 0.02 * lin(x).abs().max()  # int8: about 2 digits
    with pytest.raises(ValueError, match="kernel must be one of"):
        int8.Int8Linear(lin, "fp4")


def test_quantized_llama_is_close_and_a_quarter_of_the_bytes():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)).eval()
    q = int8.quantize(model)
    ids = torch.randint(300, (2, 16))
    ref, out = model(ids)[0], q(ids)[0]
    assert (ref - out).abs().max() < 0.05 * ref.abs().max()
    cache = SlotCache(q, 1, 32)  # the engine's runner drives it unchanged
    torch.testing.assert_close(forward_rows(q, ids[:1], cache, [0]), out[:1], rtol=1e-5, atol=1e-5)
    matrices = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks") and p.dim() == 2)
    saved = int8.weight_bytes(model) - int8.weight_bytes(q)
    head = model.head.weight.numel()
    assert saved == matrices * 3 - head * 1 - sum(b.numel() * 4 for m in q.modules()
                                                   if isinstance(m, int8.Int8Linear) for b in [m.scale])


def test_a_model_with_adapters_is_refused():
    model = Llama(tiny_chat()[1].config).float()
    lora.apply_lora(model, r=2, alpha=4, seed=0)
    with pytest.raises(ValueError, match="without LoRA adapters"):
        int8.quantize(model)


def test_step_bytes_counts_what_one_decode_step_reads():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)).eval()
    assert int8.step_bytes(model) == int8.weight_bytes(model)  # tied: the head reads the whole table
    q = int8.quantize(model)
    table = model.tok_emb.weight
    assert int8.step_bytes(q) == int8.weight_bytes(q) - table.numel() * 4 + 64 * 4  # one row of the table
