"""nanolm.train.flops: the 6N + 12LCT FLOPs estimate, which weights count, and the peak FLOP/s."""

import pytest
import torch

from nanolm.model.gpt import GPT, GPTConfig
from nanolm.train import flops


def test_flops_per_token_formula():
    # 6N for the weights plus 12 * L * C * T for attention scores and mixing; forward alone is a third
    assert flops.flops_per_token(1000, 2, 16, 8) == 6 * 1000 + 12 * 2 * 16 * 8
    assert flops.flops_per_token(1000, 2, 16, 8, training=False) == pytest.approx((6000 + 3072) / 3)
    # GPT-2 small (124M, 12 x 768, T=1024): about 0.8 GFLOP per trained token
    assert flops.flops_per_token(124_000_000, 12, 768, 1024) == pytest.approx(8.57e8, rel=0.01)


def test_matmul_params_counts_tied_head_not_position_table():
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16))
    assert flops.matmul_params(model) == model.num_params(include_position=False)
    untied = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    assert flops.matmul_params(untied) == 40  # a lookup table does no matmul
    assert flops.model_flops_per_token(model, 16) == flops.flops_per_token(
        model.num_params(include_position=False), 2, 16, 16)
    assert flops.model_flops_per_token(untied, 16) is None  # no .config with n_layer / n_embd


def test_peak_flops_on_cpu_is_measured():
    achieved = flops.measure_peak_flops("cpu", torch.float32, size=128, seconds=0.02)
    assert 1e6 < achieved < 1e14  # a CPU does between a megaflop and a hundred teraflops per second
    assert flops.datasheet_peak_flops("cpu") is None
    flops._PEAK_CACHE[("cpu", torch.float32)] = 42.0  # peak_flops measures once per device and dtype
    assert flops.peak_flops("cpu", torch.float32) == (42.0, "measured")
    del flops._PEAK_CACHE[("cpu", torch.float32)]


def test_datasheet_table_order_picks_specific_names_first():
    names = [k for k, _ in flops.GPU_PEAK_BF16]
    for specific, general in [("H100 PCIe", "H100"), ("L40S", "L40"), ("L40", "L4"), ("A10G", "A10"),
                              ("GH200", "H200")]:
        if general in specific:
            assert names.index(specific) < names.index(general)
    lookup = flops.gpu_peak_from_name
    assert lookup("NVIDIA H100 80GB HBM3") == 989.5e12
    assert lookup("NVIDIA H100 PCIe") == 756.0e12
    assert lookup("NVIDIA A100-SXM4-80GB") == 312e12
    assert lookup("NVIDIA L4") == 121e12 and lookup("NVIDIA L40S") == 362.05e12
    assert lookup("NVIDIA H200") == 989.5e12 and lookup("Some Future GPU") is None


def test_moe_counts_only_the_active_experts():
    """An MoE Llama (4 experts, top 2 of half width) costs the FLOPs of its dense twin plus the routers."""
    from nanolm.model.llama import Llama, LlamaConfig

    base = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
    dense, sparse = Llama(LlamaConfig(**base)), Llama(LlamaConfig(**base, n_experts=4, top_k=2))
    router = 2 * 32 * 4  # n_layer * C * E
    assert flops.matmul_params(sparse) == flops.matmul_params(dense) + router
    assert sparse.num_params(active=True) == dense.num_params() + router
    assert flops.model_flops_per_token(sparse, 16) == flops.model_flops_per_token(dense, 16) + 6 * router
