"""DPO from scratch against TRL's own DPOTrainer._compute_loss (TRL 1.16, called unbound on a stand-in trainer).

TRL 1.16 has no separate dpo_loss method: the loss lives inside DPOTrainer._compute_loss, which runs the model
itself. The stand-in `self` carries the attributes that method reads, and the stand-in model returns per-token
log-probs we chose (TRL sums them over the completion), with the reference's sums precomputed
(precompute_ref_logps). Tolerances: tolerances.FLOAT64 (1e-12) in float64, FLOAT32 (1e-6) in float32.
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from tolerances import FLOAT32, FLOAT64
from trl.trainer.dpo_trainer import DPOTrainer

from nanolm.adapt.dpo import IGNORE, completion_lengths, dpo_loss, reward_metrics, sequence_logprobs

TOL = {torch.float64: FLOAT64, torch.float32: FLOAT32}


def _per_token(B: int, T: int, seed: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (2B, T-1) of [chosen; rejected] completions of random lengths, 0 off the completion,
    and TRL's completion_mask (2B, T) over input_ids (its [:, 1:] is where the per-token log-probs count)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T, (2 * B,), generator=g)
    starts = torch.tensor([int(torch.randint(0, T - n, (1,), generator=g)) for n in lengths.tolist()])
    pos = torch.arange(T - 1)
    shift = (pos >= starts[:, None]) & (pos < (starts + lengths)[:, None])  # (2B, T-1)
    logps = torch.where(shift, -3 * torch.rand(2 * B, T - 1, generator=g, dtype=dtype), 0.0)
    mask = torch.cat([torch.zeros(2 * B, 1, dtype=torch.long), shift.long()], dim=1)
    return logps, mask


def trl_dpo(per_token, mask, ref_chosen, ref_rejected, *, beta, loss_type, label_smoothing=0.0):
    """TRL's loss (mean over the batch) and its logged reward metrics for these per-token log-probs."""
    B2, T = mask.shape
    model = lambda **kw: SimpleNamespace(log_probs=per_token, entropy=torch.zeros(B2, T - 1),
                                         mean_logits=torch.zeros(B2, T - 1), is_top1=torch.zeros(B2, T - 1).bool())
    metrics = defaultdict(lambda: defaultdict(list))
    identity = lambda t: t
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=False), accelerator=SimpleNamespace(device=torch.device("cpu"),
                                                                           gather=identity, gather_for_metrics=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
        use_weighting=False, _metrics=metrics, _total_train_tokens=0, args=SimpleNamespace())
    inputs = {"input_ids": torch.zeros(B2, T, dtype=torch.long), "attention_mask": torch.ones(B2, T, dtype=torch.long),
              "completion_mask": mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in metrics["eval"].items()}


def _case(B, T, seed, dtype):
    """Per-token log-probs, TRL's mask, our four sequence log-prob vectors and the completions' lengths."""
    per_token, mask = _per_token(B, T, seed, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    sums = per_token.sum(1)
    ref = sums + 0.5 * torch.randn(2 * B, generator=g, dtype=dtype)  # the reference, a little elsewhere
    n = mask.sum(1)
    return per_token, mask, (*sums.chunk(2), *ref.chunk(2)), n.chunk(2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpo_loss_equals_trl(loss_type, dtype, seed):
    """Random pairs: TRL's batch loss, per-pair losses (one pair at a time) and logged rewards are ours."""
    B, T, beta = 6, 9, [0.1, 0.5, 2.0][seed]
    per_token, mask, (pc, pr, rc, rr), (nc, nr) = _case(B, T, seed, dtype)
    lengths = {"chosen_lengths": nc, "rejected_lengths": nr} if loss_type == "ipo" else {}
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, **lengths)
    assert losses.dtype == dtype
    trl_loss, m = trl_dpo(per_token, mask, rc, rr, beta=beta, loss_type=loss_type)
    torch.testing.assert_close(losses.mean(), trl_loss, **TOL[dtype])
    ours = reward_metrics(cr, rj)
    for key, name in [("chosen", "chosen"), ("rejected", "rejected"), ("margins", "margins"), ("accuracy", "accuracies")]:
        assert ours[key] == pytest.approx(m[f"rewards/{name}"], rel=TOL[dtype]["rtol"], abs=TOL[dtype]["atol"])
    for b in range(B):  # one pair at a time: TRL's per-pair loss
        rows = [b, B + b]
        one, _ = trl_dpo(per_token[rows], mask[rows], rc[b:b + 1], rr[b:b + 1], beta=beta, loss_type=loss_type)
        torch.testing.assert_close(losses[b], one, **TOL[dtype])


def test_dpo_loss_fixed_vectors():
    """Hand-picked vectors (a clear win, a tie, a loss, a near-tie) against TRL and the formulas in closed form."""
    per_token = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0], [-4.0, -1.0, -1.0], [-0.25, -0.25, 0.0],
                              [-6.0, -1.0, 0.0], [-0.5, 0.0, 0.0], [-1.0, -2.0, -1.0], [-0.5, -0.5, 0.0]],
                             dtype=torch.float64)  # rows 0-3 chosen, 4-7 rejected
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 1, 1], [0, 1, 1, 0]] * 2)
    rc = torch.tensor([-4.0, -0.5, -5.0, -0.4], dtype=torch.float64)
    rr = torch.tensor([-4.0, -0.5, -5.0, -0.6], dtype=torch.float64)
    pc, pr = per_token.sum(1).chunk(2)
    for loss_type, beta in [("sigmoid", 0.1), ("hinge", 0.5), ("ipo", 0.3)]:
        lengths = {"chosen_lengths": mask[:4].sum(1), "rejected_lengths": mask[4:].sum(1)} if loss_type == "ipo" else {}
        losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, **lengths)
        trl_loss, _ = trl_dpo(per_token, mask, rc, rr, beta=beta, loss_type=loss_type)
        torch.testing.assert_close(losses.mean(), trl_loss, **FLOAT64)
    h = (pc - rc) - (pr - rr)  # log-ratio margins: a clear win, a tie, a loss, a near-tie
    torch.testing.assert_close(h, torch.tensor([4.0, 0.0, -2.0, 0.3], dtype=torch.float64), **FLOAT64)
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.1)
    expected = [math.log1p(math.exp(-0.1 * x)) for x in h.tolist()]
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=torch.float64), **FLOAT64)
    metrics = reward_metrics(cr, rj)  # chosen rewards 0.1 * [1, 0, -1, -0.1], rejected 0.1 * [-3, 0, 1, -0.4]
    assert metrics["accuracy"] == 0.5 and metrics["margins"] == pytest.approx(0.1 * (4 + 0 - 2 + 0.3) / 4)


@pytest.mark.parametrize("label_smoothing", [0.1, 0.3])
def test_conservative_sigmoid_equals_trl(label_smoothing):
    """label_smoothing: TRL 1.16's "sigmoid" ignores it; its "aot" on one pair is the conservative DPO formula."""
    B, T = 5, 8
    per_token, mask, (pc, pr, rc, rr), _ = _case(B, T, 7, torch.float64)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.2, label_smoothing=label_smoothing)
    for b in range(B):  # aot sorts over the batch: with one pair the sort does nothing and delta = h
        rows = [b, B + b]
        one, _ = trl_dpo(per_token[rows], mask[rows], rc[b:b + 1], rr[b:b + 1], beta=0.2, loss_type="aot",
                         label_smoothing=label_smoothing)
        torch.testing.assert_close(losses[b], one, **FLOAT64)


def test_ipo_averages_equal_lengths():
    """IPO on sums with lengths = IPO on per-token averages without: what TRL's division amounts to."""
    _, mask, (pc, pr, rc, rr), (nc, nr) = _case(4, 7, 3, torch.float64)
    with_lengths, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.4, loss_type="ipo", chosen_lengths=nc, rejected_lengths=nr)
    averaged, _, _ = dpo_loss(pc / nc, pr / nr, rc / nc, rr / nr, beta=0.4, loss_type="ipo")
    torch.testing.assert_close(with_lengths, averaged, **FLOAT64)


def test_sigmoid_at_reference_is_log2():
    """Policy = reference: h = 0, loss log 2 for every pair, rewards 0, margins 0 and accuracy 0 (no strict win)."""
    x, y = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    losses, cr, rj = dpo_loss(x, y, x.clone(), y.clone())
    torch.testing.assert_close(losses, torch.full((5,), math.log(2), dtype=torch.float64), **FLOAT64)
    assert reward_metrics(cr, rj) == {"chosen": 0.0, "rejected": 0.0, "margins": 0.0, "accuracy": 0.0}


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_gradient_sign(loss_type):
    """Raising the chosen log-prob lowers the loss, raising the rejected one raises it (in the losses' active range)."""
    pc = torch.tensor([-5.0, -3.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-4.0, -3.5], dtype=torch.float64, requires_grad=True)
    rc, rr = torch.tensor([-5.0, -3.2], dtype=torch.float64), torch.tensor([-4.1, -3.4], dtype=torch.float64)
    losses, cr, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=loss_type)
    losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    assert not cr.requires_grad  # rewards are for logging only


def test_sequence_logprobs_equals_hand_loop():
    """The sum of log-softmax at the labels over labelled positions, float32 from bfloat16 logits."""
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 6, 11
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :2] = IGNORE
    labels[1, 4:] = IGNORE
    labels[2, ::2] = IGNORE
    hand = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            if labels[b, t] != IGNORE:
                z = logits[b, t]
                hand[b] += z[labels[b, t]] - torch.logsumexp(z, 0)
    torch.testing.assert_close(sequence_logprobs(logits, labels), hand, **FLOAT64)
    assert completion_lengths(labels).tolist() == [4, 4, 3]
    low = sequence_logprobs(logits.bfloat16(), labels)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, sequence_logprobs(logits.bfloat16().float(), labels), rtol=0, atol=0)


def test_masked_logits_change_nothing():
    """A logit at a position labelled -100 changes neither the result nor any gradient."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[0, 1] = labels[1, 4] = IGNORE
    results = []
    for bump in (0.0, 50.0):
        x = logits.clone()
        x[0, 1, 3] += bump
        x[1, 4, :] -= bump
        x.requires_grad_(True)
        out = sequence_logprobs(x, labels)
        out.sum().backward()
        results.append((out.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)
    assert (results[1][1][0, 1] == 0).all() and (results[1][1][1, 4] == 0).all()


def test_errors_say_what_is_wrong():
    """Bad inputs raise ValueErrors that name the problem."""
    v = torch.zeros(3)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(v, v, v, v, loss_type="kto")
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(v, v, v, torch.zeros(2))
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(v, v, v, v, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(v, v, v, v, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="lengths"):
        dpo_loss(v, v, v, v, chosen_lengths=torch.ones(3))
    with pytest.raises(ValueError, match="no completion token"):
        sequence_logprobs(torch.zeros(2, 3, 4), torch.tensor([[1, 2, 3], [IGNORE] * 3]))
    with pytest.raises(ValueError, match="token ids"):
        sequence_logprobs(torch.zeros(1, 3, 4), torch.tensor([[1, 2, 9]]))
