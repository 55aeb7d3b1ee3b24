"""nanolm.adapt.reward: the Bradley-Terry loss, a scalar head on the last real token, HH-RLHF pairs.

The learning test: pairs share a random prefix and differ in their last token, and the chosen one always
ends in token 5. A one-layer Llama with a reward head must learn that from 256 pairs and rank held-out
pairs right.
"""

import math

import pytest
import torch

from nanolm.adapt import reward as rw
from nanolm.model.llama import Llama, LlamaConfig

torch.set_num_threads(1)
CFG = dict(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=32)


def tiny_rm(seed: int = 0) -> rw.RewardModel:
    torch.manual_seed(seed)
    rm = rw.RewardModel(Llama(LlamaConfig(**CFG)))
    torch.nn.init.normal_(rm.score.weight, std=0.5)  # a non-zero head, so rewards depend on the input
    return rm


def test_bradley_terry_loss_by_hand():
    r_c, r_r = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 1.0, 0.5])
    by_hand = sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in [(2, 1), (-1, 1), (0.5, 0.5)]) / 3
    assert rw.bradley_terry_loss(r_c, r_r).item() == pytest.approx(by_hand, rel=1e-6)
    assert rw.bradley_terry_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(math.log(2), rel=1e-6)
    assert rw.preference_accuracy(r_c, r_r) == pytest.approx(1 / 3)  # the tie counts as wrong
    with pytest.raises(ValueError):
        rw.bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_gradient_pushes_chosen_up_and_rejected_down():
    r_c, r_r = torch.tensor([0.3, -2.0], requires_grad=True), torch.tensor([0.1, 1.0], requires_grad=True)
    rw.bradley_terry_loss(r_c, r_r).backward()
    assert (r_c.grad < 0).all() and (r_r.grad > 0).all()  # descent raises r_c, lowers r_r
    assert torch.allclose(r_c.grad, -r_r.grad)
    assert torch.allclose(r_c.grad, -torch.sigmoid(r_r - r_c).detach() / 2)


def test_reward_reads_the_last_real_token():
    rm = tiny_rm().eval()
    ids = torch.tensor([[3, 7, 9, 4, 0, 0], [5, 6, 7, 8, 9, 10]])
    lengths = torch.tensor([4, 6])
    base = rm(ids, lengths)
    assert base.shape == (2,) and base.dtype == torch.float32
    padded = ids.clone()
    padded[0, 4:] = torch.tensor([17, 23])  # change the pads: nothing changes
    assert torch.equal(rm(padded, lengths), base)
    last = ids.clone()
    last[0, 3] = 11  # change row 0's last real token: its reward changes, row 1's does not
    out = rm(last, lengths)
    assert out[0] != base[0] and out[1] == base[1]
    alone = rm(ids[:1, :4], torch.tensor([4]))  # the same as the row without its padding
    assert torch.allclose(alone, base[:1], atol=1e-6)
    with pytest.raises(ValueError):
        rm(ids, torch.tensor([0, 6]))


def test_zero_head_starts_at_log_2():
    torch.manual_seed(0)
    rm = rw.RewardModel(Llama(LlamaConfig(**CFG)))
    pairs = [([1, 2, 3], [1, 2, 4])] * 4
    assert rw.evaluate_reward_model(rm, pairs)["loss"] == pytest.approx(math.log(2), rel=1e-6)


def toy_pairs(n: int, seed: int) -> list[rw.EncodedPair]:
    """Random prefixes (tokens 1..31, 2..10 long), chosen ending in 5, rejected in another token."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prefix = torch.randint(1, 32, (int(torch.randint(2, 11, (1,), generator=g)),), generator=g).tolist()
        other = int(torch.randint(6, 32, (1,), generator=g))  # never 5
        out.append((prefix + [5], prefix + [other]))
    return out


def test_tiny_reward_model_learns_a_separable_preference():
    rm = tiny_rm(1)
    history = rw.train_reward_model(rm, toy_pairs(256, seed=0), steps=150, lr=3e-3, batch_size=16, seed=0)
    assert len(history["loss"]) == 150 and history["loss"][-1] < history["loss"][0]
    held_out = rw.evaluate_reward_model(rm, toy_pairs(200, seed=1))
    assert held_out["accuracy"] > 0.9 and held_out["margin"] > 0


def test_encode_pairs_keeps_the_end():
    enc = rw.encode_pairs([("abcdef", "xy", "z")], lambda s: [ord(c) for c in s], block_size=5, eos_id=0)
    assert enc == [([ord(c) for c in "efxy"] + [0], [ord(c) for c in "defz"] + [0])]


def test_split_pair_by_hand():
    prompt = "\n\nHuman: How do I bake bread?\n\nAssistant: With flour.\n\nHuman: And then?\n\nAssistant:"
    chosen, rejected = prompt + " Knead it and let it rise.", prompt + " Knead it, then give up."
    assert rw.split_pair(chosen, rejected) == (prompt.lstrip("\n"), " Knead it and let it rise.",
                                               " Knead it, then give up.")
    assert rw.split_pair(chosen, chosen) is None  # identical replies
    assert rw.split_pair(prompt + " ", rejected) is None  # an empty reply
    early = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bye\n\nAssistant: Bye."
    assert rw.split_pair(early, early.replace("Hello.", "Go away.")) is None  # differs before the last reply
    assert rw.split_pair("\n\nHuman: a", "\n\nHuman: b") is None  # no shared assistant turn


def test_hh_rlhf_pairs_real_file():
    pairs = rw.hh_rlhf_pairs()
    assert 2300 <= len(pairs) <= 2312
    for prompt, chosen, rejected in pairs:
        assert prompt.startswith("Human:") and prompt.endswith("\n\nAssistant:") and chosen != rejected
    short = rw.hh_rlhf_pairs(n=50, max_chars=600)
    assert len(short) == 50 and all(len(p) + max(len(c), len(r)) <= 600 for p, c, r in short)


def test_offensive_is_a_crude_word_filter():
    assert rw.offensive("What the FUCK is this?") and not rw.offensive("How do I bake bread?")
    assert not rw.offensive("Scunthorpe is a town")  # whole words only
