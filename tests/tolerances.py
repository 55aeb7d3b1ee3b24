"""Every parity tolerance of the suite, in one place, set from the dtype and the error actually measured.

Rule: a tolerance sits a little above the class of error the arithmetic gives (float64: ~1e-16 per operation,
so <= 1e-14 after a model's forward; float32: ~1e-7 per operation, so ~1e-6 after a forward pass), never
orders of magnitude above it. Where near-initial weights would give tiny activations that hide a difference
(HF parity), the comparison runs on trained weights. Measured on this course's CPU (max |ours - reference|):

float64 (tested at FLOAT64)
- optimizers vs torch.optim, 20 steps (test_optim):               2.2e-16 (was tested at 1e-6)
- Trainer vs hand loop of torch AdamW + lr_scheduler, 12 steps:   1.0e-13 abs, 2e-12 rel (test_train)
- grad accumulation k x B vs one batch of k*B, 3 steps:           1.4e-17 (test_train; was float32 at 1e-4)
- HF GPT-2 parity on trained weights:                             8.4e-15 (test_gpt)
- RoPE shift invariance / complex vs half-split form:             1.3e-15 / 0 (test_llama; was 1e-9)
- attention, RNN cells, Value autograd, transformer blocks:       <= 3.6e-15 (were 1e-10 / 1e-8)
float32
- optimizers vs torch.optim (FLOAT32):                            1.8e-7
- attention / RNN / RMSNorm / MHA against torch (FLOAT32):        <= 2.4e-7
- HF GPT-2 / Llama logits on trained weights, logits up to ~13
  (FLOAT32_MODEL):                                                1.9e-6 / 2.9e-6 (relative ~2e-7; was 1e-4
                                                                  on initial weights with logits ~0.5)
- tiled / SDPA fast path / KV cache vs full forward (FLOAT32_MODEL): <= 9.5e-7
- SmolLM2 folder in transformers vs our Llama from the GGUF file: 0 (bit for bit) for prompts of several
  tokens; for a one-token prompt 0 on an Intel Xeon, 1.3e-5 on an AMD EPYC (logits up to ~20), whose
  matrix-vector kernels round our fused gate/up product and HF's separate ones differently (FLOAT32_MODEL)
A float64 HF Llama comparison is not possible to rounding as the models stand: transformers computes RoPE angles
in float32 whatever the model's dtype, and both its RMSNorm and ours take the mean square in float32 (measured
2.4e-6 to 2.7e-6 in float64), so Llama parity is float32 only, except in test_lora, which replaces those few lines
by float64 ones in both models for its float64 LoRA/DoRA parity (then exact, gradients within 2.3e-15).
"""

# float64: the same arithmetic, differing only in operation order
FLOAT64 = dict(rtol=1e-12, atol=1e-12)
# float32, a single op or a few (a norm, a softmax, an optimizer step)
FLOAT32 = dict(rtol=1e-6, atol=1e-6)
# float32, a whole model's forward against another implementation (more ops, other kernels and op order)
FLOAT32_MODEL = dict(rtol=1e-5, atol=1e-5)
# float16 on CUDA (flash-attn against SDPA): half precision rounds at ~1e-3 (not measured here: no CUDA)
FLOAT16 = dict(rtol=0.0, atol=2e-3)
# learning rates: the same formula evaluated by torch's schedulers step by step (recursive products)
LR = dict(rtol=1e-12, atol=0.0)
