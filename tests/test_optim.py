"""nanolm.teach.optim against torch.optim: the same parameters after 20 steps, to rounding (float64 1e-12, float32
1e-6: see tests/tolerances.py; measured 2.2e-16 and 1.8e-7 at most), for several settings each."""

from __future__ import annotations

import pytest
import tolerances
import torch

from nanolm.teach import optim

STEPS = 20
TOL = {torch.float64: tolerances.FLOAT64, torch.float32: tolerances.FLOAT32}

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=3e-3, alpha=0.9, eps=1e-6, weight_decay=0.01)),
    ("RMSprop", dict(lr=1e-3, momentum=0.9, centered=True)),
    ("RMSprop", dict(lr=1e-3, alpha=0.95, momentum=0.5, centered=False, eps=1e-4)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.5, amsgrad=True, eps=1e-5)),
]


def _problem(dtype: torch.dtype, seed: int = 0):
    """A small two-layer regression: initial parameters and a loss function of them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, generator=g, dtype=dtype)
    y = torch.randn(32, 1, generator=g, dtype=dtype)
    init = [torch.randn(5, 8, generator=g, dtype=dtype) * 0.5, torch.zeros(8, dtype=dtype),
            torch.randn(8, 1, generator=g, dtype=dtype) * 0.5, torch.zeros(1, dtype=dtype)]

    def loss_fn(w1, b1, w2, b2):
        return ((torch.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2).mean()

    return init, loss_fn


def _run(make_opt, init, loss_fn, steps=STEPS):
    params = [t.clone().requires_grad_(True) for t in init]
    opt = make_opt(params)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(*params)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return [p.detach() for p in params], losses


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,hp", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_matches_torch(name, hp, dtype):
    init, loss_fn = _problem(dtype)
    ours, our_losses = _run(lambda ps: getattr(optim, name)(ps, **hp), init, loss_fn)
    ref, ref_losses = _run(lambda ps: getattr(torch.optim, name)(ps, **hp), init, loss_fn)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    torch.testing.assert_close(torch.tensor(our_losses, dtype=torch.float64), torch.tensor(ref_losses, dtype=torch.float64),
                               **TOL[dtype])
    assert our_losses[-1] < our_losses[0], "the optimizer should make progress on this problem"
    assert any(not torch.equal(a, b) for a, b in zip(ours, init, strict=True))


def test_explicit_grads_equal_autograd_path():
    init, loss_fn = _problem(torch.float64, seed=1)
    ref, _ = _run(lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.1), init, loss_fn)
    params = [t.clone() for t in init]
    opt = optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for _ in range(STEPS):
        leaf = [p.clone().requires_grad_(True) for p in params]
        grads = torch.autograd.grad(loss_fn(*leaf), leaf)
        opt.step(list(grads))
    for a, b in zip(params, ref, strict=True):
        torch.testing.assert_close(a, b, **tolerances.FLOAT64)


def test_param_groups_match_torch():
    init, loss_fn = _problem(torch.float64, seed=2)

    def groups(ps):
        return [{"params": ps[0::2], "weight_decay": 0.2}, {"params": ps[1::2], "weight_decay": 0.0, "lr": 3e-3}]

    ours, _ = _run(lambda ps: optim.AdamW(groups(ps), lr=1e-2), init, loss_fn)
    ref, _ = _run(lambda ps: torch.optim.AdamW(groups(ps), lr=1e-2), init, loss_fn)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, **tolerances.FLOAT64)


def test_missing_grad_leaves_param_alone():
    p, q = torch.ones(3), torch.ones(2)
    opt = optim.SGD([p, q], lr=0.5, momentum=0.9)
    opt.step([torch.ones(3), None])
    assert torch.equal(q, torch.ones(2))
    torch.testing.assert_close(p, torch.full((3,), 0.5))


def test_bad_inputs():
    p = torch.zeros(3)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        optim.Adam([p], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="unknown"):
        optim.AdamW([{"params": [p], "momentum": 0.9}])
    opt = optim.Adam([p])
    with pytest.raises(ValueError, match="2 gradients for 1"):
        opt.step([torch.zeros(3), torch.zeros(3)])
    with pytest.raises(ValueError, match="shape"):
        opt.step([torch.zeros(4)])
