"""GRPO's loop on a tiny model: groups, masks, log-probs, a step that follows the advantage, the stall."""

import copy

import pytest
import torch

from nanolm.adapt import grpo, rollout
from nanolm.adapt.dpo import token_logprobs
from nanolm.model.llama import Llama, LlamaConfig

STOP = 0


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=8, block_size=32, n_layer=1, n_head=2, n_embd=16))


def decode(ids):
    return "".join("abcdefgh"[i] for i in ids)


def test_sample_group_pads_with_stop_and_masks_after_it(model):
    s = rollout.Settings(group_size=6, max_new=5)
    g = rollout.sample_group(model, [1, 2], s, STOP, decode, "t", torch.Generator().manual_seed(0))
    assert g.completions.shape == (6, 5) and g.mask.shape == (6, 5) and g.target == "t"
    assert torch.equal(g.mask, grpo.completion_mask(g.completions, STOP))
    for row, m, text in zip(g.completions.tolist(), g.mask.tolist(), g.texts, strict=True):
        n = sum(m)
        assert text == decode([t for t in row[:n] if t != STOP])
        assert all(t == STOP for t in row[n:])  # after the first stop: padding


def test_completion_logprobs_are_the_models_next_token_logprobs(model):
    s = rollout.Settings(group_size=3, max_new=4)
    g = rollout.sample_group(model, [3, 4, 5], s, STOP, decode, None, torch.Generator().manual_seed(1))
    lp = rollout.completion_logprobs(model, g)
    for b in range(3):  # one row at a time, token by token, from the prompt plus what came before
        for t in range(4):
            ctx = torch.tensor([[3, 4, 5] + g.completions[b, :t].tolist()])
            want = token_logprobs(model(ctx)[0][:, -1:], g.completions[b : b + 1, t : t + 1])
            assert torch.allclose(lp[b, t], want[0, 0], atol=1e-5)


def test_a_step_raises_the_logprob_of_rewarded_completions(model):
    s = rollout.Settings(group_size=8, max_new=3, lr=5e-2, beta=0.0)
    g = rollout.sample_group(model, [1], s, STOP, decode, None, torch.Generator().manual_seed(2))
    reward = lambda group: [float(t.startswith("c")) for t in group.texts]  # noqa: E731
    rewards = torch.tensor(reward(g))
    assert 0 < rewards.sum() < 8, "the seed must give a mixed group"
    before = rollout.completion_logprobs(model, g).detach()
    opt = torch.optim.SGD(model.parameters(), lr=s.lr)
    stats = rollout.step(model, None, opt, [g], reward, s)
    after = rollout.completion_logprobs(model, g).detach()
    first = (after - before)[:, 0]
    assert first[rewards == 1].min() > first[rewards == 0].max()
    assert stats["reward"] == rewards.mean().item() and stats["zero_variance"] == 0.0


def test_zero_variance_groups_leave_the_model_unchanged_without_kl(model):
    s = rollout.Settings(group_size=4, prompts_per_step=2, max_new=3, beta=0.0)
    start = copy.deepcopy(model.state_dict())
    hist = rollout.train(model, None, [([1], None), ([2], None)], lambda g: [0.0] * 4, steps=3, s=s,
                         stop_id=STOP, decode=decode)
    assert hist["zero_variance"] == [1.0, 1.0, 1.0] and hist["reward"] == [0.0, 0.0, 0.0]
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_kl_is_zero_against_itself_and_errors_are_clear(model):
    s = rollout.Settings(group_size=4, prompts_per_step=1, max_new=3, beta=0.1)
    hist = rollout.train(model, copy.deepcopy(model), [([1], None)], lambda g: [0.0] * 4, steps=1, s=s,
                         stop_id=STOP, decode=decode)
    assert hist["kl"] == [0.0]
    with pytest.raises(ValueError, match="reference"):
        rollout.train(model, None, [([1], None)], lambda g: [0.0] * 4, steps=1, s=s, stop_id=STOP, decode=decode)
    with pytest.raises(ValueError, match="4 rewards per group"):
        rollout.train(model, None, [([1], None)], lambda g: [0.0], steps=1, s=rollout.Settings(group_size=4, beta=0),
                      stop_id=STOP, decode=decode)


def test_scale_false_gives_unscaled_advantages_as_dr_grpo_asks(model, monkeypatch):
    seen = []
    real = grpo.group_advantages
    monkeypatch.setattr(grpo, "group_advantages", lambda r, g, scale: seen.append(real(r, g, scale=scale)) or seen[-1])
    s = rollout.Settings(group_size=4, max_new=2, beta=0.0, scale=False, loss_type="dr_grpo")
    g = rollout.sample_group(model, [1], s, STOP, decode, None, torch.Generator().manual_seed(0))
    rollout.step(model, None, torch.optim.SGD(model.parameters(), lr=0.1), [g], lambda _: [1.0, 0.0, 0.0, 0.0], s)
    assert torch.allclose(seen[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))  # r - mean, no division
