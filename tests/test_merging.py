"""Merging LoRA adapters: which recipes are exact, what the others lose, and that they are PEFT's recipes."""

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.utils import merge_utils
from tolerances import FLOAT32, FLOAT64
from torch import nn

from nanolm.adapt import merging
from nanolm.adapt.merging import Adapter

OUT, IN = 6, 7


def _adapters(ranks=(3, 3, 2), scalings=(2.0, 1.0, 0.5), dtype=torch.float64, seed=0, shared_A=False):
    """Random adapters over one (OUT, IN) matrix, optionally all with the first one's A."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for r, s in zip(ranks, scalings, strict=True):
        A = torch.randn(r, IN, generator=g, dtype=dtype)
        B = torch.randn(OUT, r, generator=g, dtype=dtype)
        out.append(Adapter(out[0].A.clone() if shared_A and out else A, B, s))
    return out


WEIGHTS = [0.7, -0.4, 1.3]


# --- exact recipes -----------------------------------------------------------------------------------------


def test_delta_is_scaled_product():
    a = _adapters()[0]
    assert merging.delta(*a).shape == (OUT, IN)
    torch.testing.assert_close(merging.delta(*a), 2.0 * a.B @ a.A, **FLOAT64)


def test_concatenation_is_exact_with_summed_rank():
    adapters = _adapters()
    merged = merging.concatenation(adapters, WEIGHTS)
    assert merged.A.shape == (3 + 3 + 2, IN) and merged.B.shape == (OUT, 3 + 3 + 2)
    exact = merging.exact(adapters, WEIGHTS)
    assert merging.error(merging.delta(*merged), exact) < 1e-15
    merged32 = merging.concatenation(_adapters(dtype=torch.float32), WEIGHTS)
    exact32 = merging.exact(_adapters(dtype=torch.float32), WEIGHTS)
    assert merging.error(merging.delta(*merged32), exact32) < 1e-6  # float precision


def test_linear_of_different_A_is_not_exact():
    adapters = _adapters(ranks=(3, 3, 3))
    merged = merging.linear(adapters, WEIGHTS)
    assert merged.A.shape == (3, IN) and merged.B.shape == (OUT, 3)  # the rank stays r
    err = merging.error(merging.delta(*merged), merging.exact(adapters, WEIGHTS))
    assert err > 0.5, err  # measured 1.106: the cross terms B_i @ A_j are as large as the sum itself


def test_linear_of_shared_A_is_not_exact_either():
    """Shared A: B @ A = (sum_j sign_j c_j)(sum_i c_i B_i) A. Two equal weights give twice the exact sum."""
    adapters = _adapters(ranks=(3, 3), scalings=(1.0, 1.0), shared_A=True)
    merged = merging.linear(adapters, [0.5, 0.5])
    exact = merging.exact(adapters, [0.5, 0.5])
    torch.testing.assert_close(merging.delta(*merged), 2 * exact, **FLOAT64)
    assert merging.error(merging.delta(*merged), exact) == pytest.approx(1.0, abs=1e-12)


def test_linear_is_exact_when_cross_terms_vanish():
    """Adapters in disjoint rank slots: B_i @ A_j = 0 for i != j, so only the wanted terms remain."""
    adapters = _adapters(ranks=(4, 4), scalings=(2.0, 0.5))
    slots = [slice(0, 2), slice(2, 4)]
    for a, own in zip(adapters, slots, strict=True):
        other = slice(2, 4) if own.start == 0 else slice(0, 2)
        a.A[other] = 0.0
        a.B[:, other] = 0.0
    merged = merging.linear(adapters, [0.7, -0.4])
    assert merging.error(merging.delta(*merged), merging.exact(adapters, [0.7, -0.4])) < 1e-15


def test_svd_error_is_the_tail_of_singular_values():
    adapters = _adapters()
    exact = merging.exact(adapters, WEIGHTS)
    sigma = torch.linalg.svdvals(exact)  # rank <= 3 + 3 + 2 = 8 > min(OUT, IN) = 6: all six nonzero
    for k in range(1, 6):
        merged = merging.svd(adapters, WEIGHTS, rank=k)
        assert merged.A.shape == (k, IN) and merged.B.shape == (OUT, k) and merged.scaling == 1.0
        tail = torch.sqrt((sigma[k:] ** 2).sum()) / torch.linalg.norm(exact)
        assert merging.error(merging.delta(*merged), exact) == pytest.approx(tail.item(), rel=1e-12)


def test_svd_of_full_rank_is_exact():
    adapters = _adapters()
    exact = merging.exact(adapters, WEIGHTS)
    assert merging.error(merging.delta(*merging.svd(adapters, WEIGHTS, rank=min(OUT, IN))), exact) < 1e-14
    small = _adapters(ranks=(2, 1), scalings=(1.0, 3.0))  # exact sum of rank 3: rank 3 is enough
    exact = merging.exact(small, [1.0, 2.0])
    assert merging.error(merging.delta(*merging.svd(small, [1.0, 2.0], rank=3)), exact) < 1e-14


def test_one_adapter_with_weight_one_is_the_identity_merge():
    a = _adapters()[0]
    d = merging.delta(*a)
    for merged in (merging.concatenation([a], [1.0]), merging.linear([a], [1.0]), merging.svd([a], [1.0], rank=3)):
        torch.testing.assert_close(merging.delta(*merged), d, **FLOAT64)
    torch.testing.assert_close(merging.exact([a], [1.0]), d, **FLOAT64)
    torch.testing.assert_close(merging.ties([d], [1.0], density=1.0), d, **FLOAT64)
    torch.testing.assert_close(merging.dare([d], [1.0], density=1.0, generator=0), d, **FLOAT64)


def test_error_is_relative_frobenius():
    exact = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert merging.error(exact, exact) == 0.0
    assert merging.error(torch.zeros(2, 2), exact) == 1.0
    assert merging.error(exact + torch.tensor([[0.0, 1.0], [0.0, 0.0]]), exact) == pytest.approx(0.2)
    assert merging.error(torch.zeros(2, 2), torch.zeros(2, 2)) == 0.0
    assert merging.error(exact, torch.zeros(2, 2)) == math.inf


# --- TIES ------------------------------------------------------------------------------------------------

T1 = torch.tensor([[3.0, -1.0, 2.0], [-4.0, 0.5, 1.0]])
T2 = torch.tensor([[-1.0, -2.0, -3.0], [2.0, 1.0, -0.5]])


def test_ties_by_hand_without_trimming():
    """Sums [[2, -3, -1], [-2, 1.5, 0.5]] elect [[+, -, -], [-, +, +]]; agreeing entries are averaged."""
    merged = merging.ties([T1, T2], [1.0, 1.0], density=1.0)
    torch.testing.assert_close(merged, torch.tensor([[3.0, -1.5, -3.0], [-4.0, 0.75, 1.0]]))


def test_ties_by_hand_with_trimming():
    """density 0.5 keeps 3 of 6: T1 -> [[3,0,2],[-4,0,0]], T2 -> [[0,-2,-3],[2,0,0]]; sums elect
    [[+,-,-],[-,+,+]] (0 counts as +), so T1's +2 and T2's +2 lose their election."""
    mask = merging.majority_sign_mask(torch.stack([merging.trim(T1, 0.5), merging.trim(T2, 0.5)]))
    assert mask.tolist() == [[[True, False, False], [True, False, False]],
                             [[False, True, True], [False, False, False]]]
    merged = merging.ties([T1, T2], [1.0, 1.0], density=0.5)
    torch.testing.assert_close(merged, torch.tensor([[3.0, -2.0, -3.0], [-4.0, 0.0, 0.0]]))


@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 0.9])
def test_trim_keeps_the_largest_fraction(density):
    task = torch.randn(10, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kept = merging.trim(task, density)
    nonzero = kept != 0
    assert nonzero.sum().item() == int(density * task.numel())
    assert task.abs()[nonzero].min() >= task.abs()[~nonzero].max()  # the kept are the largest
    torch.testing.assert_close(kept[nonzero], task[nonzero], rtol=0.0, atol=0.0)


@pytest.mark.filterwarnings("ignore:The density 1.0:UserWarning")  # PEFT warns that 1.0 prunes nothing
@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_equals_peft(density):
    deltas = [merging.delta(*a) for a in _adapters(dtype=torch.float32)]
    w = torch.tensor(WEIGHTS)
    stacked = torch.stack([merging.trim(d, density) for d in deltas])
    peft_stacked = torch.stack([merge_utils.prune(d, density, "magnitude") for d in deltas])
    assert torch.equal(stacked, peft_stacked)
    assert torch.equal(merging.majority_sign_mask(stacked), merge_utils.calculate_majority_sign_mask(peft_stacked))
    assert torch.equal(merging.ties(deltas, WEIGHTS, density), merge_utils.ties(deltas, w, density))
    assert torch.equal(merging.ties(deltas, WEIGHTS, density, elect_sign=False),
                       merge_utils.magnitude_prune(deltas, w, density))


# --- DARE ------------------------------------------------------------------------------------------------


def test_dare_is_unbiased_over_seeds():
    """Each entry of the weighted sum has variance sum_i (w_i d_i)^2 (1 - p) / p; the mean of N draws sits
    within a few standard errors of the exact sum, and without rescaling it converges to p * exact."""
    deltas = [merging.delta(*a) for a in _adapters()]
    exact = merging.exact(_adapters(), WEIGHTS)
    p, n = 0.3, 2000
    draws = torch.stack([merging.dare(deltas, WEIGHTS, p, generator=s) for s in range(n)])  # (N, OUT, IN)
    var = sum((w * d) ** 2 for w, d in zip(WEIGHTS, deltas, strict=True)) * (1 - p) / p
    z = (draws.mean(0) - exact) / torch.sqrt(var / n)
    assert z.abs().max() < 4.5, z.abs().max()
    assert merging.error(draws.mean(0), exact) < 0.1
    assert merging.error(draws[0], exact) > 0.5  # one draw is far off; the mean is not
    plain = torch.stack([merging.dare(deltas, WEIGHTS, p, generator=s, rescale=False) for s in range(n)])
    torch.testing.assert_close(plain, draws * p, **FLOAT64)  # same seeds, same masks


@pytest.mark.parametrize("density", [0.25, 0.6])
def test_dare_equals_peft_with_the_same_seed(density):
    """PEFT draws torch.bernoulli from the global generator; a fresh generator with the same seed matches."""
    deltas = [merging.delta(*a) for a in _adapters(dtype=torch.float32)]
    w = torch.tensor(WEIGHTS)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        peft_linear = merge_utils.dare_linear(deltas, w, density)
        torch.manual_seed(5)
        peft_ties = merge_utils.dare_ties(deltas, w, density)
        torch.manual_seed(5)
        peft_drop = merge_utils.prune(deltas[0], density, "random", rescale=True)
    assert torch.equal(merging.dare(deltas, WEIGHTS, density, generator=5), peft_linear)
    assert torch.equal(merging.dare(deltas, WEIGHTS, density, generator=5, elect_sign=True), peft_ties)
    assert torch.equal(merging.drop(deltas[0], density, torch.Generator().manual_seed(5)), peft_drop)


# --- against PEFT's add_weighted_adapter on a real LoRA layer ----------------------------------------------


class _One(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(IN, OUT, bias=False)

    def forward(self, x):
        return self.lin(x)


@pytest.fixture(scope="module")
def peft_layer():
    """A PEFT LoRA layer holding our three float32 adapters (r 3, 3, 2; scalings 2, 1, 0.5)."""
    torch.manual_seed(0)
    model = get_peft_model(_One(), LoraConfig(target_modules=["lin"], r=3, lora_alpha=6), adapter_name="one")
    model.add_adapter("two", LoraConfig(target_modules=["lin"], r=3, lora_alpha=3))
    model.add_adapter("three", LoraConfig(target_modules=["lin"], r=2, lora_alpha=1))
    lin = model.base_model.model.lin
    for name, a in zip(("one", "two", "three"), _adapters(dtype=torch.float32), strict=True):
        lin.lora_A[name].weight.data.copy_(a.A)
        lin.lora_B[name].weight.data.copy_(a.B)
    assert [lin.scaling[n] for n in ("one", "two", "three")] == [2.0, 1.0, 0.5]
    return model.base_model, lin


def _peft_merge(peft_layer, names, weights, kind, **kw):
    lora_model, lin = peft_layer
    new = f"{kind}_{len(names)}_{kw.get('svd_rank', '')}"
    lora_model.add_weighted_adapter(list(names), weights, new, combination_type=kind, **kw)
    return Adapter(lin.lora_A[new].weight.data, lin.lora_B[new].weight.data, lin.scaling[new])


def test_linear_equals_peft(peft_layer):
    ours = merging.linear(_adapters(dtype=torch.float32)[:2], WEIGHTS[:2])
    theirs = _peft_merge(peft_layer, ("one", "two"), WEIGHTS[:2], "linear")
    assert torch.equal(ours.A, theirs.A) and torch.equal(ours.B, theirs.B) and ours.scaling == theirs.scaling


def test_concatenation_equals_peft(peft_layer):
    ours = merging.concatenation(_adapters(dtype=torch.float32), WEIGHTS)
    theirs = _peft_merge(peft_layer, ("one", "two", "three"), WEIGHTS, "cat")
    assert torch.equal(ours.A, theirs.A) and torch.equal(ours.B, theirs.B) and ours.scaling == theirs.scaling


def test_svd_equals_peft(peft_layer):
    """PEFT takes the full SVD (full_matrices=True), ours the reduced one: the same delta to float rounding."""
    ours = merging.svd(_adapters(dtype=torch.float32), WEIGHTS, rank=4)
    theirs = _peft_merge(peft_layer, ("one", "two", "three"), WEIGHTS, "svd", svd_rank=4)
    assert ours.scaling == theirs.scaling == 1.0
    torch.testing.assert_close(merging.delta(*ours), merging.delta(*theirs), **FLOAT32)


# --- bad input -------------------------------------------------------------------------------------------


def test_bad_inputs_are_refused():
    a = _adapters()
    d = [merging.delta(*x) for x in a]
    for merge in (merging.concatenation, merging.linear, merging.exact):
        with pytest.raises(ValueError, match="empty"):
            merge([], [])
    with pytest.raises(ValueError, match="empty"):
        merging.ties([], [], 0.5)
    with pytest.raises(ValueError, match="empty"):
        merging.dare([], [], 0.5)
    with pytest.raises(ValueError, match="one weight per adapter"):
        merging.concatenation(a, [1.0])
    with pytest.raises(ValueError, match="different shapes"):
        merging.concatenation([a[0], Adapter(torch.randn(3, IN + 1), torch.randn(OUT, 3), 1.0)], [1.0, 1.0])
    with pytest.raises(ValueError, match="rank"):
        merging.delta(torch.randn(3, IN), torch.randn(OUT, 2), 1.0)
    with pytest.raises(ValueError, match="one rank"):
        merging.linear(a, WEIGHTS)  # ranks 3, 3, 2
    with pytest.raises(ValueError, match="rank must lie"):
        merging.svd(a, WEIGHTS, rank=0)
    with pytest.raises(ValueError, match="rank must lie"):
        merging.svd(a, WEIGHTS, rank=min(OUT, IN) + 1)
    with pytest.raises(ValueError, match="one shape"):
        merging.ties([d[0], d[0].T], [1.0, 1.0], 0.5)
    with pytest.raises(ValueError, match="finite"):
        merging.exact(a, [1.0, math.nan, 1.0])
    with pytest.raises(ValueError, match="shapes differ"):
        merging.error(d[0], d[0].T)
    for density in (0.0, -0.1, 1.5, math.nan):
        for merge in (merging.ties, merging.dare):
            with pytest.raises(ValueError, match=r"density .* \(0, 1\]"):
                merge(d, WEIGHTS, density)
