"""LoRA on the real model: our Llama holding SmolLM2's weights and transformers' LlamaForCausalLM holding the same,
with the same adapters, give the same logits and the same adapter gradients as PEFT: float64 (with the float32
islands of both models taken out, as in test_lora) to 1e-10 relative, float32 to 2e-4 relative.

The small-model tests (test_lora.py) prove the float64 case to 1e-12; this one proves the mapping holds on the
model the course fine-tunes (30 layers, GQA, tied embeddings), where a slip in one layer's row blocks would show.
"""

import pytest
import torch
from real_model import smollm2_path
from test_lora import _all_in_float64
from torch import nn

from nanolm.adapt import lora
from nanolm.model import gguf_llama, hf

# float32 through 30 layers: logits within 1e-5 of their largest value; adapter gradients measured between 1e-5 and
# 4.4e-5 of their tensor's largest entry over runs (threaded float32 reductions are not run-to-run deterministic, and
# our fused wqkv and gate_up sum their inputs' gradients in another order than three separate projections)
GRAD_RTOL = 2e-4


@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=["float32", "float64"])
def pair(request):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)  # PEFT draws its A matrices from the global generator
    ours, _ = gguf_llama.load_llama(smollm2_path())
    theirs = hf.to_hf(ours).eval()
    if request.param == torch.float64:  # both cast from the same float32 weights; float32 islands taken out
        ours, theirs = ours.double(), theirs.double()
        _all_in_float64(theirs, ours)
    names = lora.resolve_targets("all")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                        target_modules=[lora.HF_MODULES[t].split(".")[1] for t in names])
    peft_model = get_peft_model(theirs, config).eval()
    lora.apply_lora(ours, r=4, alpha=8, targets=names).eval()
    params = dict(peft_model.named_parameters())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in params.items():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        for name, p in lora.lora_state(ours).items():
            p.copy_(params[lora.peft_name(name)])
    return peft_model, ours


def test_smollm2_lora_logits_and_gradients_equal_peft(pair):
    peft_model, ours = pair
    f64 = next(ours.parameters()).dtype == torch.float64
    logit_tol, grad_tol = (1e-12, 1e-10) if f64 else (1e-5, GRAD_RTOL)
    idx = torch.randint(49152, (1, 24), generator=torch.Generator().manual_seed(1))
    theirs_logits, ours_logits = peft_model(idx).logits, ours(idx)[0]
    logit_diff = (ours_logits - theirs_logits).abs().max().item()
    print(f"\nlogits: max |diff| {logit_diff:.1e} (largest logit {theirs_logits.abs().max().item():.1f})")
    assert logit_diff <= logit_tol * theirs_logits.abs().max().item()
    loss = lambda logits: nn.functional.cross_entropy(logits[0, :-1], idx[0, 1:])  # noqa: E731
    loss(theirs_logits).backward()
    loss(ours_logits).backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    ours_grads = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert len(ours_grads) == len(grads) == 30 * 7 * 2  # A and B of seven projections in each of 30 layers
    worst = 0.0
    for name, grad in ours_grads.items():
        ref = grads[lora.peft_name(name)]
        worst = max(worst, ((grad - ref).abs().max() / ref.abs().max()).item())
    print(f"worst adapter gradient difference, relative to its tensor's largest entry: {worst:.1e}")
    assert worst <= grad_tol
