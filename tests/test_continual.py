"""nanolm.adapt.continual, ewc and router: the accuracy-matrix metrics, replay, EWC's Fisher and penalty, routing.

The metrics are checked on a 3x3 matrix worked out by hand; the Fisher against a hand loop of
torch.autograd.grad and, for a single softmax layer, against its closed form; the router's features
against an unpadded forward pass, prompt by prompt.
"""

import math

import numpy as np
import pytest
import tolerances
import torch
import torch.nn.functional as F
from torch import nn

from nanolm.adapt import continual as cl
from nanolm.adapt.ewc import EWC, fisher_diagonal
from nanolm.adapt.router import Router, confusion, prompt_features
from nanolm.model.llama import Llama, LlamaConfig

# ----------------------------------------------------------------------------- metrics

# R[i][j] = accuracy on task j after training tasks 0..i. Task 0 keeps improving at stage 1 (0.5 -> 0.8)
# before it falls (0.4); task 1 scores 0.9 at stage 0, before it was ever trained (transfer, not learning).
R = [[0.5, 0.9, 0.1],
     [0.8, 0.6, 0.3],
     [0.4, 0.5, 0.7]]
BASELINE = [0.1, 0.2, 0.25]


def test_metrics_of_a_hand_computed_matrix():
    # ACC = (0.4 + 0.5 + 0.7) / 3 = 1.6 / 3
    assert cl.average_accuracy(R) == pytest.approx(1.6 / 3, abs=1e-12)
    # BWT = ((R20 - R00) + (R21 - R11)) / 2 = ((0.4 - 0.5) + (0.5 - 0.6)) / 2 = -0.1
    assert cl.backward_transfer(R) == pytest.approx(-0.1, abs=1e-12)
    # FWT = ((R01 - b1) + (R12 - b2)) / 2 = ((0.9 - 0.2) + (0.3 - 0.25)) / 2 = 0.375
    assert cl.forward_transfer(R, BASELINE) == pytest.approx(0.375, abs=1e-12)
    # forgetting: task 0 max(R00, R10) - R20 = 0.8 - 0.4 = 0.4 (its best, not its diagonal);
    # task 1 max(R11) - R21 = 0.6 - 0.5 = 0.1 (R01 = 0.9 came before task 1 was learned: it does not count)
    assert cl.forgetting_per_task(R) == pytest.approx([0.4, 0.1], abs=1e-12)
    assert cl.forgetting(R) == pytest.approx(0.25, abs=1e-12)
    assert cl.forgetting_curve(R, 0) == pytest.approx([0.5, 0.8, 0.4], abs=1e-12)
    assert cl.forgetting_curve(R, 1) == pytest.approx([0.6, 0.5], abs=1e-12)
    assert cl.forgetting_curve(R, 2) == pytest.approx([0.7], abs=1e-12)
    s = cl.summary(R, BASELINE)
    assert s == pytest.approx({"acc": 1.6 / 3, "bwt": -0.1, "fwt": 0.375, "forgetting": 0.25}, abs=1e-12)
    assert "fwt" not in cl.summary(np.array(R))


def test_a_learner_that_never_forgets():
    perfect = np.tril(np.ones((4, 4)))  # a task is at 0 until learned, then at 1 for good
    assert cl.backward_transfer(perfect) == 0.0 and cl.forgetting(perfect) == 0.0
    assert cl.average_accuracy(perfect) == 1.0 and cl.average_accuracy([[0.3]]) == 0.3


def test_metric_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="must be square"):
        cl.average_accuracy([[0.1, 0.2]])
    with pytest.raises(ValueError, match="at least 2 tasks"):
        cl.backward_transfer([[0.5]])
    with pytest.raises(ValueError, match="NaN or infinite"):
        cl.forgetting([[0.5, 0.1], [math.nan, 0.2]])
    with pytest.raises(ValueError, match="one accuracy per task"):
        cl.forward_transfer(R, [0.1, 0.2])
    with pytest.raises(ValueError, match="task index j"):
        cl.forgetting_curve(R, 3)


# ----------------------------------------------------------------------------- replay


def test_replay_buffer_keeps_a_seeded_sample_per_task():
    a = [f"a{i}" for i in range(20)]
    buf = cl.ReplayBuffer()
    buf.add("a", a, k=5, seed=0)
    buf.add("b", ["b0", "b1"], k=5, seed=0)  # fewer than k: all of them
    kept = buf.examples(exclude="b")
    assert len(kept) == 5 and set(kept) <= set(a) and kept == sorted(kept, key=a.index)  # original order
    again = cl.ReplayBuffer()
    again.add("a", a, k=5, seed=0)
    assert again.examples() == kept  # the same seed keeps the same examples
    other = cl.ReplayBuffer()
    other.add("a", a, k=5, seed=1)
    assert other.examples() != kept
    assert buf.tasks() == ["a", "b"] and len(buf) == 7
    assert buf.examples() == kept + ["b0", "b1"] and buf.examples(exclude="a") == ["b0", "b1"]
    buf.add("a", a, k=2, seed=0)  # adding a task again replaces its sample
    assert len(buf) == 4 and buf.tasks() == ["a", "b"]


def test_replay_memory_counts_int32_tokens_and_utf8_bytes():
    enc = cl.ReplayBuffer()
    enc.add("t", [([1, 2, 3], [-100, 2, 3]), ([4], [5])], k=2, seed=0)
    assert enc.memory_bytes() == 4 * (6 + 2)  # 8 ints, 4 bytes each
    text = cl.ReplayBuffer()
    text.add("t", [("ab", "cé")], k=1, seed=0)
    assert text.memory_bytes() == 2 + 3  # "é" is two bytes in UTF-8
    bad = cl.ReplayBuffer()
    bad.add("t", [1.5], k=1, seed=0)
    with pytest.raises(ValueError, match="counts ints, strs"):
        bad.memory_bytes()
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        bad.add("t", [1], k=0, seed=0)


def test_replay_batches_replay_the_ratio_task_balanced():
    new = [([1, 1], [1, 1])] * 5  # every new example is ids [1, 1]; old task A holds 1 kind, B 40 kinds of 2, 3
    old = [[([2, 2], [2, 2])], [([3, k], [3, k]) for k in range(40)]]
    stream = cl.replay_batches(new, old, 0.25, batch_size=8, seed=0)
    firsts = torch.cat([next(stream)[0][:, 0] for _ in range(2000)])  # 16000 examples
    share = {v: float((firsts == v).float().mean()) for v in (1, 2, 3)}
    assert abs(share[1] - 0.75) < 0.01  # 2 of 8 replayed: exactly 2 per batch
    assert abs(share[2] - 0.125) < 0.01 and abs(share[3] - 0.125) < 0.01  # each old task half, however big
    rare = cl.replay_batches(new, old, 0.01, batch_size=32, seed=1)  # 0.32 per batch: stochastic rounding
    replayed = sum(int((next(rare)[0][:, 0] != 1).sum()) for _ in range(3000))
    assert abs(replayed / (3000 * 32) - 0.01) < 0.002
    x, y = next(cl.replay_batches(new, [], 0.5, batch_size=4, seed=0))  # nothing old: all new
    assert x.tolist() == [[1, 1]] * 4 and y.tolist() == [[1, 1]] * 4
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        next(cl.replay_batches(new, old, 1.0, batch_size=4, seed=0))


# ----------------------------------------------------------------------------- EWC


class SoftmaxLayer(nn.Module):
    """logits = W x_t, x_t a fixed feature vector per input token: the Fisher has a closed form."""

    def __init__(self, n_in: int, d: int, V: int, scale: float = 1.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("x", torch.randn(n_in, d, generator=g, dtype=torch.float64))
        self.W = nn.Parameter(scale * torch.randn(V, d, generator=g, dtype=torch.float64))

    def forward(self, idx, targets=None):
        return self.x[idx] @ self.W.T, None  # (B, T, V)


def tiny_llama(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(LlamaConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))


def encoded_examples(n: int = 4, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        ids = torch.randint(0, 50, (5 + k,), generator=g).tolist()
        labels = [-100] * 2 + torch.randint(0, 50, (3 + k,), generator=g).tolist()  # a masked prompt
        out.append((ids, labels))
    return out


def test_empirical_fisher_is_the_mean_of_squared_per_example_gradients():
    model = tiny_llama().double()
    model.blocks[0].attn.wqkv.weight.requires_grad_(False)  # frozen weights get no Fisher
    model.train()
    data = encoded_examples()
    fisher = fisher_diagonal(model, data)
    assert model.training  # its mode restored
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(fisher) == set(params) and "blocks.0.attn.wqkv.weight" not in fisher
    hand = {n: torch.zeros_like(p) for n, p in params.items()}
    for ids, labels in data:
        logp = torch.log_softmax(model(torch.tensor([ids]))[0][0], -1)  # (T, V)
        scored = [(t, y) for t, y in enumerate(labels) if y != -100]
        loss = -sum(logp[t, y] for t, y in scored) / len(scored)
        for (n, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values())), strict=True):
            hand[n] += g**2 / len(data)
    for n in params:
        torch.testing.assert_close(fisher[n], hand[n], **tolerances.FLOAT64)
    ewc = EWC(1.0)
    ewc.consolidate(model, fisher)  # the names fisher_diagonal gives are the names EWC anchors
    assert ewc.penalty(model).item() == 0.0


def test_true_fisher_of_a_confident_model_is_the_empirical_one_at_its_argmax():
    model = SoftmaxLayer(n_in=3, d=3, V=5)
    g = torch.Generator().manual_seed(2)
    logits = torch.rand(3, 5, generator=g, dtype=torch.float64) + 18 * F.one_hot(torch.tensor([3, 0, 3]), 5)
    with torch.no_grad():
        model.W.copy_(torch.linalg.solve(model.x, logits).T)  # x_t W^T = the logits we chose: margins >= 17
    data = [([t], [0]) for t in range(3)] * 4
    probs = torch.softmax(model(torch.arange(3))[0], -1)
    assert (probs.max(-1).values > 1 - 1e-6).all()  # every prediction (near) certain
    argmax = [([t], [int(probs[t].argmax())]) for t in range(3)] * 4
    true = fisher_diagonal(model, data, kind="true", seed=0)
    emp = fisher_diagonal(model, argmax, kind="empirical")
    assert true["W"].max() > 0  # tiny, but not zero: the comparison is not 0 == 0
    torch.testing.assert_close(true["W"], emp["W"], rtol=1e-12, atol=0.0)


def test_true_fisher_matches_its_closed_form_within_monte_carlo_error():
    # logits = W x: the gradient of -log p(y|x) in W is (p - e_y) x^T, so E_y[g^2] enumerates V outcomes.
    model = SoftmaxLayer(n_in=2, d=3, V=4, scale=1.0)
    exact, var = torch.zeros_like(model.W), torch.zeros_like(model.W)
    for t in range(2):
        p = torch.softmax(model.W.detach() @ model.x[t], -1)  # (V,)
        g2 = torch.stack([torch.outer(p - F.one_hot(torch.tensor(y), 4), model.x[t]) ** 2 for y in range(4)])
        mean_t = (p[:, None, None] * g2).sum(0)  # E_y[g^2], (V, d)
        exact += mean_t / 2
        var += ((p[:, None, None] * g2**2).sum(0) - mean_t**2) / 4  # Var_y[g^2] / n_inputs^2
    M = 1500  # samples per input
    mc = fisher_diagonal(model, [([t], [0]) for t in range(2)] * M, kind="true", seed=0)["W"]
    stderr = (var / M).sqrt()
    # tolerance: 5 standard errors of the Monte-Carlo mean (Var computed exactly), entry by entry
    assert ((mc - exact).abs() <= 5 * stderr + 1e-12).all(), (mc - exact).abs() / stderr
    assert not torch.allclose(mc, fisher_diagonal(model, [([0], [0]), ([1], [0])])["W"])


def test_ewc_penalty_is_a_quadratic_spring_at_the_anchor():
    model, lam = SoftmaxLayer(n_in=2, d=3, V=4), 0.7
    fisher = {"W": torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))}
    ewc = EWC(lam)
    assert len(ewc) == 0 and ewc.penalty(model).item() == 0.0
    ewc.consolidate(model, fisher)
    anchor = model.W.detach().clone()
    assert ewc.penalty(model).item() == 0.0
    d = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        model.W.copy_(anchor + d)
    p1 = ewc.penalty(model)
    (grad,) = torch.autograd.grad(p1, [model.W])
    torch.testing.assert_close(grad, lam * fisher["W"] * d, **tolerances.FLOAT64)
    torch.testing.assert_close(p1, lam / 2 * (fisher["W"] * d**2).sum(), **tolerances.FLOAT64)
    with torch.no_grad():
        model.W.copy_(anchor + 2 * d)
    torch.testing.assert_close(ewc.penalty(model), 4 * p1.detach(), **tolerances.FLOAT64)
    ewc.consolidate(model, fisher)  # a second task: a second spring, anchored here
    assert len(ewc) == 2 and ewc.memory_bytes() == 2 * 2 * 12 * 8  # (fisher + anchor) x 2 terms, float64
    torch.testing.assert_close(ewc.penalty(model), 4 * p1.detach(), **tolerances.FLOAT64)


def test_ewc_errors_say_what_to_do():
    model = SoftmaxLayer(n_in=2, d=3, V=4)
    with pytest.raises(ValueError, match="kind must be one of"):
        fisher_diagonal(model, [([0], [1])], kind="exact")
    with pytest.raises(ValueError, match="at least one encoded"):
        fisher_diagonal(model, [])
    with pytest.raises(ValueError, match="no scored token"):
        fisher_diagonal(model, [([0, 1], [-100, -100])])
    with pytest.raises(ValueError, match="exactly the model's trainable parameters"):
        EWC(1.0).consolidate(model, {"V": torch.zeros(4, 3)})


# ----------------------------------------------------------------------------- router


def clusters(n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Three separable clusters in 8 dimensions, all far along one shared direction (as LM states are)."""
    g = torch.Generator().manual_seed(0)
    centers, shared = torch.randn(3, 8, generator=g), 20 * torch.randn(8, generator=g)
    g.manual_seed(seed)
    feats = [shared + centers[k] + 0.05 * torch.randn(n, 8, generator=g) for k in range(3)]
    return torch.cat(feats), [name for name in ("math", "code", "poem") for _ in range(n)]


def test_router_separates_clusters_and_roundtrips_its_state():
    train_x, train_y = clusters(10, seed=1)
    router = Router.fit(train_x, train_y)
    assert router.names == ["math", "code", "poem"]
    test_x, test_y = clusters(20, seed=2)
    assert router.predict(test_x) == test_y
    assert router.scores(test_x).shape == (60, 3)
    again = Router.from_state(router.state(), router.names)
    assert again.predict(test_x) == test_y and torch.equal(again.scores(test_x), router.scores(test_x))
    assert router.memory_bytes() == (3 + 1) * 8 * 4


def test_confusion_counts_true_rows_against_predicted_columns():
    true = ["a", "a", "b", "c", "c", "c"]
    pred = ["a", "b", "b", "c", "a", "c"]
    expected = np.array([[1, 1, 0],   # a: one right, one sent to b
                         [0, 1, 0],   # b: right
                         [1, 0, 2]])  # c: two right, one sent to a
    np.testing.assert_array_equal(confusion(true, pred, ["a", "b", "c"]), expected)
    with pytest.raises(ValueError, match=r"labels \['d'\] are not among names"):
        confusion(["a"], ["d"], ["a", "b", "c"])


def test_prompt_features_do_not_see_the_padding():
    model = tiny_llama()
    model.train()
    prompts = [[1, 2, 3], list(range(1, 21)), [7], [4, 5, 6, 7, 8, 9]]  # 20 tokens > block_size 16
    feats = prompt_features(model, prompts, batch_size=3)
    assert feats.dtype == torch.float32 and feats.shape == (4, 16)
    assert model.training and not model.norm_f._forward_hooks  # mode restored, hook removed
    model.eval()
    seen = []
    hook = model.norm_f.register_forward_hook(lambda _m, _i, out: seen.append(out[0]))  # (T, C)
    with torch.no_grad():
        for p in prompts:
            model(torch.tensor([p[-16:]]))  # alone, unpadded, the last block_size tokens
    hook.remove()
    for k, states in enumerate(seen):
        torch.testing.assert_close(feats[k], states.mean(0), **tolerances.FLOAT32)
    assert len(seen) == len(prompts)
    with pytest.raises(ValueError, match="have no token"):
        prompt_features(model, [[1], []])
