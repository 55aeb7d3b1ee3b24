"""Optimizers from scratch (SGD with momentum, RMSprop, Adam, AdamW), step for step equal to torch.optim.

They work on torch tensors, in place, so the same object can train any nn.Module on any
device (CPU, CUDA, MPS) in later notebooks, and the tests can compare them with
torch.optim on the very same tensors. Each follows torch's conventions exactly:
  SGD      buf = momentum*buf + (1-dampening)*g (the first step sets buf = g); nesterov uses g + momentum*buf
  RMSprop  eps is added after the square root: g / (sqrt(v) + eps); `centered` subtracts the mean square
  Adam     bias-corrected: p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps); weight_decay is L2 (added to g)
  AdamW    decoupled decay: p *= 1 - lr*weight_decay before the Adam step

Use it like torch.optim (`opt.zero_grad(); loss.backward(); opt.step()`), or hand the
gradients in yourself: `opt.step([g1, g2, ...])`, one per parameter in order.
Parameter groups work as in torch: pass [{"params": [...], "weight_decay": 0.0}, ...].
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

Params = Iterable[torch.Tensor] | Iterable[dict]


class Optimizer:
    """Base class: parameter groups with their hyperparameters, per-parameter state, step counting."""

    def __init__(self, params: Params, defaults: dict) -> None:
        params = list(params)
        if not params:
            raise ValueError("the optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        for g in groups:
            unknown = set(g) - set(defaults) - {"params"}
            if unknown:
                raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)}; known: {sorted(defaults)}")
            group = {**defaults, **g, "params": list(g["params"])}
            self._check(group)
            self.param_groups.append(group)
        self.state: dict[int, dict] = {}  # id(param) -> that parameter's buffers

    def _check(self, group: dict) -> None:
        if group["lr"] < 0:
            raise ValueError(f"learning rate must be >= 0, got {group['lr']}")

    def params(self) -> list[torch.Tensor]:
        """All parameters, in group order (the order `step(grads)` expects)."""
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self) -> None:
        """Forget the gradients autograd accumulated (sets .grad to None, like torch)."""
        for p in self.params():
            p.grad = None

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor | None] | None = None) -> None:
        """Update every parameter in place; gradients from `grads` (one per parameter) or else from p.grad."""
        ps = self.params()
        if grads is None:
            grads = [p.grad for p in ps]
        if len(grads) != len(ps):
            raise ValueError(f"got {len(grads)} gradients for {len(ps)} parameters")
        it = iter(grads)
        for group in self.param_groups:
            for p in group["params"]:
                g = next(it)
                if g is None:
                    continue  # a parameter that took no part in the loss is left alone, as in torch
                if g.shape != p.shape:
                    raise ValueError(f"gradient shape {tuple(g.shape)} does not match parameter {tuple(p.shape)}")
                self._update(p, g, self.state.setdefault(id(p), {}), group)

    def _update(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """SGD with optional momentum (torch's dampening and nesterov conventions) and L2 weight decay."""

    def __init__(self, params: Params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check(self, group: dict) -> None:
        super()._check(group)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")

    def _update(self, p, g, state, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        mu = group["momentum"]
        if mu:
            if "buf" not in state:
                state["buf"] = g.clone()  # first step: no dampening, buf = g
            else:
                state["buf"].mul_(mu).add_(g, alpha=1 - group["dampening"])
            buf = state["buf"]
            g = g + mu * buf if group["nesterov"] else buf
        p.add_(g, alpha=-group["lr"])


class RMSprop(Optimizer):
    """RMSprop: divide by a running RMS of the gradient, eps outside the square root (as torch)."""

    def __init__(self, params: Params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _update(self, p, g, state, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        a = group["alpha"]
        if not state:
            state["square_avg"] = torch.zeros_like(p)
            if group["momentum"]:
                state["buf"] = torch.zeros_like(p)
            if group["centered"]:
                state["grad_avg"] = torch.zeros_like(p)
        v = state["square_avg"].mul_(a).addcmul_(g, g, value=1 - a)  # v = a*v + (1-a)*g^2
        if group["centered"]:
            m = state["grad_avg"].mul_(a).add_(g, alpha=1 - a)  # m = a*m + (1-a)*g
            denom = (v - m * m).sqrt_().add_(group["eps"])  # sqrt(Var[g]) + eps
        else:
            denom = v.sqrt().add_(group["eps"])
        if group["momentum"]:
            buf = state["buf"].mul_(group["momentum"]).addcdiv_(g, denom)
            p.add_(buf, alpha=-group["lr"])
        else:
            p.addcdiv_(g, denom, value=-group["lr"])


class Adam(Optimizer):
    """Adam with bias correction; weight_decay here is L2 (added to the gradient), as in torch.optim.Adam."""

    decoupled = False

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad))

    def _check(self, group: dict) -> None:
        super()._check(group)
        b1, b2 = group["betas"]
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {group['betas']}")

    def _update(self, p, g, state, group):
        lr, wd, (b1, b2) = group["lr"], group["weight_decay"], group["betas"]
        if wd:
            if self.decoupled:
                p.mul_(1 - lr * wd)  # AdamW: shrink the weights directly, outside the adaptive scaling
            else:
                g = g + wd * p  # Adam: L2 penalty, which the adaptive scaling then rescales
        if not state:
            state["step"] = 0
            state["m"] = torch.zeros_like(p)
            state["v"] = torch.zeros_like(p)
            if group["amsgrad"]:
                state["v_max"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        m = state["m"].lerp_(g, 1 - b1)  # m = b1*m + (1-b1)*g
        v = state["v"].mul_(b2).addcmul_(g, g, value=1 - b2)  # v = b2*v + (1-b2)*g^2
        if group["amsgrad"]:
            v = torch.maximum(state["v_max"], v, out=state["v_max"])
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        denom = (v.sqrt() / math.sqrt(bc2)).add_(group["eps"])
        p.addcdiv_(m, denom, value=-lr / bc1)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr*wd, then the Adam step."""

    decoupled = True

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}
