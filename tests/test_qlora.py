"""nanolm.adapt.qlora: LoRA on a 4-bit (NF4) base, against LoRA on the dequantized weights.

The QLoRA model and a LoRA model whose target matrices hold dequantize(quantize_nf4(W)) run the same
float32 operations on the same values, so logits and adapter gradients are compared with torch.equal
(measured: bit-identical for LoRA, rsLoRA and DoRA).
"""

import copy

import pytest
import torch
from test_finetune import BLOCK, encode, mapping_examples, tiny_llama

from nanolm.adapt import finetune as ft
from nanolm.adapt import qlora
from nanolm.adapt.lora import LoRALinear, apply_lora, load_lora_state, lora_state
from nanolm.adapt.quant import NF4Linear, dequantize_nf4, quantize_nf4
from nanolm.model.llama import Llama

VARIANTS = {"lora": {}, "rslora": {"rslora": True}, "dora": {"use_dora": True}}


def matrices(block) -> list:
    return [block.attn.wqkv, block.attn.wo, block.ffn.gate_up, block.ffn.down]


def qlora_and_lora(variant: dict) -> tuple[Llama, Llama]:
    """(QLoRA model, LoRA model on the dequantized NF4 weights), same adapters with B made nonzero."""
    base = tiny_llama()
    q = qlora.apply_qlora(qlora.quantize_base(copy.deepcopy(base)), r=4, alpha=8, seed=0, **variant)
    with torch.no_grad():
        for block in base.blocks:
            for lin in matrices(block):
                lin.weight.copy_(dequantize_nf4(quantize_nf4(lin.weight, 64, double_quant=True)))
        for name, p in q.named_parameters():
            if name.endswith(".B"):
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    lo = apply_lora(base, r=4, alpha=8, seed=0, **variant)
    load_lora_state(lo, lora_state(q))
    return q, lo


def test_lora_linear_cannot_wrap_an_nf4_linear():
    layer = LoRALinear(NF4Linear.from_linear(torch.nn.Linear(64, 32)))
    with pytest.raises(TypeError):  # it slices base.weight, which NF4Linear has as a method
        layer.add_adapter("all", r=2, alpha=4)


def test_quantize_base_replaces_the_target_matrices_only():
    model = tiny_llama()
    emb = model.tok_emb.weight.clone()
    qlora.quantize_base(model)
    for block in model.blocks:
        assert all(isinstance(m, NF4Linear) and m.offset is not None for m in matrices(block))  # double quant
    assert isinstance(model.head, torch.nn.Linear) and torch.equal(model.tok_emb.weight, emb)
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="already a NF4Linear"):
        qlora.quantize_base(model)
    with pytest.raises(ValueError, match="quantize_base\\(model\\) first"):
        qlora.apply_qlora(tiny_llama())


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_forward_and_gradients_equal_lora_on_the_dequantized_weights(variant):
    q, lo = qlora_and_lora(variant)
    x = torch.randint(0, 128, (3, 20), generator=torch.Generator().manual_seed(1))
    logits_q, loss_q = q(x, x.roll(-1, 1))
    logits_l, loss_l = lo(x, x.roll(-1, 1))
    assert torch.equal(logits_q, logits_l)  # exact, not to rounding
    loss_q.backward()
    loss_l.backward()
    grads_q = {n: p.grad for n, p in q.named_parameters() if p.requires_grad}
    grads_l = {n: p.grad for n, p in lo.named_parameters() if p.requires_grad}
    assert grads_q.keys() == grads_l.keys()
    assert all(torch.equal(grads_q[n], grads_l[n]) for n in grads_q)
    merged = qlora.to_lora(copy.deepcopy(q))
    assert not qlora.qlora_layers(merged) and torch.equal(merged(x)[0], logits_q)


def test_qlora_trains_only_the_adapters():
    model = qlora.apply_qlora(qlora.quantize_base(tiny_llama()), r=8, alpha=16, seed=0)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".adapters." not in k}
    enc = ft.encode_examples(mapping_examples(), encode, BLOCK, eos_id=0)
    x, y = ft.collate(enc)
    ft.masked_loss(model, x, y).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in model.named_parameters() if ".adapters." in n}
    model.zero_grad()
    before = ft.evaluate(model, enc, 8)
    ft.train(model, enc, steps=30, batch_size=8, lr=1e-2, log_every=10, seed=0, print_fn=None)
    assert ft.evaluate(model, enc, 8) < before / 3  # measured: 6.90 -> 2.0 nats (a factor 3.4)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())  # 4-bit buffers, norms, embedding


def test_backward_keeps_no_dequantized_weight(monkeypatch):
    model = qlora.apply_qlora(qlora.quantize_base(tiny_llama()), r=4, alpha=8, seed=0)
    x, y = ft.collate(ft.encode_examples(mapping_examples(), encode, BLOCK))

    def activations() -> int:
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        return ft.step_memory(model, opt, x, y)["memory"]["activations"]

    ours = activations()
    monkeypatch.setattr(qlora._NF4Matmul, "apply", lambda x, base: base(x))  # plain autograd through F.linear
    kept = activations() - ours
    # every dequantized float32 matrix is kept but the first wqkv's (its input needs no gradient)
    skipped = model.blocks[0].attn.wqkv.base
    expected = sum(m.in_features * m.out_features * 4 for m in model.modules()
                   if isinstance(m, NF4Linear) and m is not skipped)
    assert kept == expected


def test_memory_bytes_counts_4_bit_storage():
    model = qlora.apply_qlora(qlora.quantize_base(tiny_llama()), r=4, alpha=8, seed=0)
    mem = qlora.memory_bytes(model)
    nf4 = [m for m in model.modules() if isinstance(m, NF4Linear)]
    assert len(nf4) == 4 * len(model.blocks)
    assert mem["nf4"] == sum(m.quantized().nbytes() for m in nf4)  # no biases in a Llama
    assert mem["nf4_as_fp32"] == sum(m.weight().numel() * 4 for m in nf4)
    assert 4.1 / 32 < mem["nf4"] / mem["nf4_as_fp32"] < 4.2 / 32  # ~4.127 bits a weight with double quant
    assert mem["adapters"] == sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert mem["other"] == sum(p.numel() * 4 for p in [model.tok_emb.weight, model.norm_f.weight]
                               + [n.weight for b in model.blocks for n in (b.norm_1, b.norm_2)]
                               + [b.attn.inv_freq for b in model.blocks])
