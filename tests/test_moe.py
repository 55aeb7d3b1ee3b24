"""nanolm.model.moe: routing invariants, the load-balancing loss and capacity on hand cases, the mixed output."""

import math

import pytest
import torch

from nanolm.model import moe


def test_every_token_goes_to_exactly_k_distinct_experts_with_gates_summing_to_one():
    logits = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    probs, gates, experts = moe.route(logits, k=3)
    assert experts.shape == gates.shape == (500, 3)
    assert all(len(set(row.tolist())) == 3 for row in experts)
    torch.testing.assert_close(gates.sum(-1), torch.ones(500))
    assert (gates > 0).all()
    # the chosen experts are the k most probable ones
    assert torch.equal(probs.gather(1, experts).min(1).values >= probs.topk(3).values[:, -1], torch.ones(500, dtype=torch.bool))


def test_balance_loss_on_hand_cases():
    # uniform router probabilities and a perfectly even split: E * sum_e (1/E)(1/E) = 1
    probs = torch.full((4, 2), 0.5)
    assert moe.balance_loss(probs, torch.tensor([[0], [1], [0], [1]])).item() == pytest.approx(1.0)
    # 4 tokens, 2 experts, k = 1; three go to expert 0: f = (3/4, 1/4)
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    experts = probs.argmax(1, keepdim=True)
    P = (0.65, 0.35)  # mean probabilities
    assert moe.balance_loss(probs, experts).item() == pytest.approx(2 * (0.75 * P[0] + 0.25 * P[1]))  # 1.15
    # collapse: every token sure of expert 0 -> E
    assert moe.balance_loss(torch.tensor([[1.0, 0, 0, 0]] * 6), torch.zeros(6, 1, dtype=torch.long)).item() == 4


def test_capacity_drops_overflow_in_token_order():
    assert moe.capacity(4, 2, 1, 1.0) == 2 and moe.capacity(10, 4, 2, 1.25) == math.ceil(6.25)
    torch.manual_seed(0)
    layer = moe.MoE(dim=8, hidden=16, n_experts=2, top_k=1, capacity_factor=1.0)
    with torch.no_grad():
        layer.router.weight.copy_(torch.tensor([[1.0] + [0] * 7, [-1.0] + [0] * 7]))
    x = torch.randn(4, 8)
    x[:, 0] = 5.0  # all four tokens prefer expert 0, which has room for 2
    y = layer(x)
    assert layer.dropped == 2 and layer.tokens_per_expert.tolist() == [4, 0]
    assert y[:2].abs().sum() > 0 and torch.equal(y[2:], torch.zeros(2, 8))


def test_output_is_the_gated_sum_of_the_chosen_experts():
    torch.manual_seed(1)
    layer = moe.MoE(dim=8, hidden=12, n_experts=4, top_k=2)
    x = torch.randn(2, 5, 8)
    y = layer(x)
    _, gates, experts = moe.route(layer.router(x.reshape(-1, 8)), 2)
    expected = torch.stack([
        sum(g * layer.experts[e](t) for g, e in zip(gates[i], experts[i].tolist(), strict=True))
        for i, t in enumerate(x.reshape(-1, 8))
    ]).view(2, 5, 8)
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-5)
    assert int(layer.tokens_per_expert.sum()) == 10 * 2
    y.sum().backward()  # the router learns through the gates
    assert layer.router.weight.grad.abs().sum() > 0


def test_forward_never_copies_to_the_host(monkeypatch):
    """Routing counts stay on the device: .cpu(), .item(), .tolist() and friends all raise during forward."""
    from nanolm.model.llama import Llama, LlamaConfig

    torch.manual_seed(0)
    layer = moe.MoE(dim=8, hidden=12, n_experts=4, top_k=2, capacity_factor=1.0)
    model = Llama(LlamaConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16, n_experts=4))
    x, idx = torch.randn(3, 5, 8), torch.randint(32, (2, 8))

    def host_sync(*args, **kwargs):
        raise AssertionError("forward copied a tensor to the host")

    with monkeypatch.context() as m:
        for name in ("cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__"):
            m.setattr(torch.Tensor, name, host_sync)
        layer(x)
        model.train()
        model(idx, idx)
    assert layer.expert_counts.device == x.device and int(layer.tokens_per_expert.sum()) == 15 * 2
    assert layer.tokens_per_expert.device.type == "cpu"  # copied when asked
    assert "expert_counts" not in layer.state_dict()  # bookkeeping, not a weight
