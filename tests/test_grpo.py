"""GRPO from scratch against TRL's own GRPOTrainer._compute_loss (TRL 1.16, called unbound on a stand-in trainer).

The stand-in `self` carries the attributes _compute_loss reads; its `_get_per_token_logps_and_entropies` (the
model's forward) returns the per-token log-probs we chose, so TRL's loss, gradient and logged metrics can be
compared with ours. Tolerances: tolerances.FLOAT64 (1e-12) in float64, FLOAT32 (1e-6) in float32.
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from tolerances import FLOAT32, FLOAT64
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

from nanolm.adapt.grpo import (
    completion_mask,
    group_advantages,
    grpo_loss,
    k3_kl,
    repeat_prompts,
    zero_variance_groups,
)

TOL = {torch.float64: FLOAT64, torch.float32: FLOAT32}


def trl_grpo(logp, old_logp, ref_logp, advantages, mask, *, loss_type, beta, epsilon_low, epsilon_high,
             max_completion_length):
    """TRL's loss for these per-token log-probs (eval mode: no gradient-accumulation scaling) and its metrics."""
    metrics = defaultdict(lambda: defaultdict(list))
    identity = lambda t, **kw: t
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **kw: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=beta, loss_type=loss_type, epsilon_low=epsilon_low, epsilon_high=epsilon_high, use_vllm=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None), model=SimpleNamespace(training=False),
        max_completion_length=max_completion_length, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        accelerator=SimpleNamespace(reduce=identity, gather=identity, gather_for_metrics=identity),
        _metrics=metrics)
    B, T = logp.shape
    inputs = {"prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old_logp, "ref_per_token_logps": ref_logp}
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    return loss, {k: v[-1] for k, v in metrics["eval"].items()}


def _case(B, T, seed, dtype):
    """Random per-token log-probs (policy near old, ref further), advantages and a right-padded mask."""
    g = torch.Generator().manual_seed(seed)
    old = -3 * torch.rand(B, T, generator=g, dtype=dtype)
    logp = old + 0.3 * torch.randn(B, T, generator=g, dtype=dtype)  # ratios spread across the clip range
    ref = old + 0.5 * torch.randn(B, T, generator=g, dtype=dtype)
    adv = torch.randn(B, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T) < lengths[:, None]).long()
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("seed,beta,eps", [(0, 0.04, (0.2, 0.2)), (1, 0.0, (0.2, 0.28)), (2, 0.1, (0.1, 0.3))])
def test_grpo_loss_equals_trl(loss_type, dtype, seed, beta, eps):
    """Random batches: TRL's loss, its gradient in logp, and its kl / clip metrics are ours."""
    B, T, max_len = 6, 7, 10
    logp, old, ref, adv, mask = _case(B, T, seed, dtype)
    kw = dict(loss_type=loss_type, beta=beta, epsilon_low=eps[0], epsilon_high=eps[1])
    x = logp.clone().requires_grad_(True)
    loss, stats = grpo_loss(x, old, ref, adv, mask, max_completion_length=max_len, **kw)
    loss.backward()
    y = logp.clone().requires_grad_(True)
    trl_loss, m = trl_grpo(y, old, ref, adv, mask, max_completion_length=max_len, **kw)
    trl_loss.backward()
    torch.testing.assert_close(loss, trl_loss, **TOL[dtype])
    torch.testing.assert_close(x.grad, y.grad, **TOL[dtype])
    assert set(stats) == set(m) - {"entropy", "clip_ratio/low_min", "clip_ratio/high_max"}
    for key, value in stats.items():
        assert value == pytest.approx(m[key], rel=TOL[dtype]["rtol"], abs=TOL[dtype]["atol"]), key
    assert 0 < stats["clip_ratio/region_mean"] < 1  # the case does exercise clipping


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_grpo_loss_fixed_vectors(loss_type):
    """Hand-written vectors: TRL's loss, and the DeepSeekMath formula (eq. 3 with eq. 4's k3) written out."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -9.0]], dtype=torch.float64)
    old = torch.tensor([[-1.1, -1.5, -0.5], [-0.6, -1.0, -9.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.0, -1.8, -0.7], [-0.5, -1.1, -9.0]], dtype=torch.float64)
    adv = torch.tensor([0.8, -1.5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    kw = dict(loss_type=loss_type, beta=0.04, epsilon_low=0.2, epsilon_high=0.2)
    loss, _ = grpo_loss(logp, old, ref, adv, mask, max_completion_length=4, **kw)
    trl_loss, _ = trl_grpo(logp, old, ref, adv, mask, max_completion_length=4, **kw)
    torch.testing.assert_close(loss, trl_loss, **FLOAT64)
    terms = []  # per sequence, per token: -min(r A, clip(r) A) + beta * k3
    for i in range(2):
        row, a = [], adv[i].item()
        for t in range(int(mask[i].sum())):
            r = math.exp(logp[i, t].item() - old[i, t].item())
            d = ref[i, t].item() - logp[i, t].item()
            row.append(-min(r * a, min(max(r, 0.8), 1.2) * a) + 0.04 * (math.exp(d) - d - 1))
        terms.append(row)
    expected = {"grpo": sum(sum(r) / len(r) for r in terms) / 2, "bnpo": sum(map(sum, terms)) / 5,
                "dr_grpo": sum(map(sum, terms)) / (2 * 4)}[loss_type]
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_one_step_ratio_is_one():
    """old_logp=None: ratio 1, so the loss is -mean(A) (+ KL) and the gradient is -A per token, as in TRL."""
    logp, _, ref, adv, mask = _case(4, 5, 3, torch.float64)
    x = logp.clone().requires_grad_(True)
    loss, stats = grpo_loss(x, None, None, adv, mask, beta=0.0, loss_type="bnpo")
    loss.backward()
    torch.testing.assert_close(loss, -(adv[:, None] * mask).sum() / mask.sum(), **FLOAT64)
    torch.testing.assert_close(x.grad, -adv[:, None] * mask / mask.sum(), **FLOAT64)
    assert stats["clip_ratio/region_mean"] == 0.0 and "kl" not in stats
    y = logp.clone().requires_grad_(True)
    trl_loss, _ = trl_grpo(y, None, None, adv, mask, loss_type="bnpo", beta=0.0, epsilon_low=0.2, epsilon_high=0.2,
                           max_completion_length=5)
    trl_loss.backward()
    torch.testing.assert_close(x.grad, y.grad, **FLOAT64)


def test_clipped_tokens_get_no_gradient():
    """A > 0 and ratio > 1 + eps (or A < 0 and ratio < 1 - eps): the surrogate is flat there, gradient zero."""
    old = torch.full((2, 3), -2.0, dtype=torch.float64)
    logp = old + torch.tensor([[0.5, 0.1, -0.5], [-0.5, 0.1, 0.5]], dtype=torch.float64)  # ratios e^0.5, e^0.1, ...
    x = logp.clone().requires_grad_(True)
    loss, stats = grpo_loss(x, old, None, torch.tensor([1.0, -1.0], dtype=torch.float64), torch.ones(2, 3),
                            beta=0.0, epsilon_low=0.2, epsilon_high=0.2)
    loss.backward()
    assert x.grad[0, 0] == 0 and x.grad[1, 0] == 0  # clipped: e^0.5 > 1.2 with A > 0, e^-0.5 < 0.8 with A < 0
    assert x.grad[0, 1] != 0 and x.grad[0, 2] != 0  # inside the range, or moving against A: not clipped
    assert x.grad[1, 1] != 0 and x.grad[1, 2] != 0
    assert stats["clip_ratio/high_mean"] == pytest.approx(1 / 6) and stats["clip_ratio/low_mean"] == pytest.approx(1 / 6)


def test_group_advantages_by_hand():
    """Two groups of 4: (r - group mean) / (unbiased std + 1e-4), and TRL's own steps on the same rewards."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    s1 = math.sqrt(4 * 0.25 / 3)  # group 1: mean 0.5, squared deviations 0.25 each
    s2 = math.sqrt((1 + 1 + 0 + 0) / 3)  # group 2: mean 1
    hand = [0.5 / (s1 + 1e-4), -0.5 / (s1 + 1e-4), -0.5 / (s1 + 1e-4), 0.5 / (s1 + 1e-4),
            1 / (s2 + 1e-4), -1 / (s2 + 1e-4), 0.0, 0.0]
    torch.testing.assert_close(group_advantages(rewards, 4), torch.tensor(hand, dtype=torch.float64), **FLOAT64)
    torch.testing.assert_close(group_advantages(rewards, 4, scale=False),
                               torch.tensor([0.5, -0.5, -0.5, 0.5, 1.0, -1.0, 0.0, 0.0], dtype=torch.float64), **FLOAT64)
    # TRL's steps (trl/trainer/grpo_trainer.py 2765-2787, utils.nanstd): its Bessel factor count / (count - 1) is
    # a division of integer tensors, so float32 (4/3 rounded to 1.5e-8) even on float64 rewards: FLOAT32 here
    for scale, std in [("group", nanstd(rewards.view(-1, 4), dim=1).repeat_interleave(4)), ("batch", nanstd(rewards))]:
        mean = torch.nanmean(rewards.view(-1, 4), dim=1).repeat_interleave(4)
        torch.testing.assert_close(group_advantages(rewards, 4, scale=scale), (rewards - mean) / (std + 1e-4), **FLOAT32)


def test_zero_variance_group_has_zero_advantage():
    """All equal in a group (all right, all wrong): advantage 0, and the group is reported."""
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    adv = group_advantages(rewards, 3)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0] and adv[6:].tolist() == [0.0, 0.0, 0.0]
    assert (adv[3:6] != 0).all()
    assert zero_variance_groups(rewards, 3) == [0, 2]
    assert group_advantages(torch.tensor([3.0, 5.0]), 1).tolist() == [0.0, 0.0]  # one sample: its own baseline


def test_k3_is_nonnegative_zero_at_equality_and_unbiased():
    """k3 >= 0, = 0 where logp = ref; E_{x~p}[k3] -> KL(p || ref) (Monte Carlo, 200k samples: within 0.01)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g, dtype=torch.float64)
    assert (k3_kl(a, b) >= 0).all() and (k3_kl(a, a) == 0).all()
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    ref = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    exact = (p * (p / ref).log()).sum().item()  # KL(p || ref) = 0.2109 nats
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    estimate = k3_kl(p.log()[x], ref.log()[x]).mean().item()
    assert estimate == pytest.approx(exact, abs=0.01)  # the estimator's std here is ~0.55 / sqrt(2e5) ~ 0.0012


def test_sampling_pieces():
    """Prompts repeated in groups, and the completion mask up to the first eos (all tokens without one)."""
    assert repeat_prompts(["a", "b"], 3) == ["a", "a", "a", "b", "b", "b"]
    ids = torch.tensor([[5, 2, 9, 2], [1, 1, 1, 1], [2, 3, 3, 3]])
    assert completion_mask(ids, eos_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_errors_say_what_is_wrong():
    """Bad inputs raise ValueErrors that name the problem."""
    logp, old, ref, adv, mask = _case(2, 3, 0, torch.float64)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logp, old, ref, adv, mask, loss_type="dapo")
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(logp, old, None, adv, mask)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, old, ref, adv[:1], mask)
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="median")
