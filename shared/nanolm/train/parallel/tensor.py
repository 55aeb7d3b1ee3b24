"""Tensor parallelism of one SwiGLU feed-forward: the matrices themselves split over ranks (Megatron-LM).

    torchrun --standalone --nproc-per-node 2 -m nanolm.train.parallel.tensor --out OUT

down(silu(x W_gate^T) * (x W_up^T)) splits without any communication in the middle:
- column split of W_gate and W_up (each rank a slice of the hidden units): rank r computes its
  hidden units from the full input, and silu(.) * (.) is elementwise, so it needs no other rank's;
- row split of W_down (the input features that match those hidden units): rank r's product is a
  partial sum of the output, and one all-reduce adds the partial sums.
Backward mirrors it: the gradient of the input is a sum over ranks (an all-reduce), the weights'
gradients stay local. `copy_in` and `sum_out` are those two communication points (Megatron's f and g).

The same block is then split by torch: parallelize_module with ColwiseParallel on gate and up and
RowwiseParallel on down (DTensors, on a copy whose gate and up are separate matrices: splitting the
fused gate_up by rows would hand rank 0 all of gate and rank 1 all of up).
Writes tensor.rank<r>: the input, the block's output and gradients from one process (the reference),
from the hand split and from torch's, each weight gradient gathered whole.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from .common import Setup, build_model, init, save_results


class _CopyIn(torch.autograd.Function):
    """Forward: the input as it is (every rank has it). Backward: sum the input's gradient over ranks."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _SumOut(torch.autograd.Function):
    """Forward: sum the partial outputs over ranks. Backward: the gradient as it is (every rank needs it)."""

    @staticmethod
    def forward(ctx, y):
        y = y.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        return grad


class ShardedSwiGLU(nn.Module):
    """This rank's 1/world of a SwiGLU: hidden units [r * h / w, (r + 1) * h / w)."""

    def __init__(self, swiglu: nn.Module, rank: int, world: int):
        super().__init__()
        gate, up = swiglu.gate_up.weight.detach().chunk(2, dim=0)  # (h, C) each
        h = gate.size(0)
        if h % world:
            raise ValueError(f"hidden width {h} does not split over {world} ranks")
        lo, hi = rank * h // world, (rank + 1) * h // world
        self.gate = nn.Parameter(gate[lo:hi].clone())  # column split: (h / w, C)
        self.up = nn.Parameter(up[lo:hi].clone())
        self.down = nn.Parameter(swiglu.down.weight.detach()[:, lo:hi].clone())  # row split: (C, h / w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _CopyIn.apply(x)
        partial = F.linear(F.silu(F.linear(x, self.gate)) * F.linear(x, self.up), self.down)  # (B, T, C)
        return _SumOut.apply(partial)


class SplitSwiGLU(nn.Module):
    """The same SwiGLU with gate and up as separate matrices, for torch's ColwiseParallel."""

    def __init__(self, swiglu: nn.Module):
        super().__init__()
        gate, up = swiglu.gate_up.weight.detach().chunk(2, dim=0)
        C, h = swiglu.down.weight.shape
        kw = {"bias": False, "dtype": gate.dtype}
        self.gate, self.up, self.down = nn.Linear(C, h, **kw), nn.Linear(C, h, **kw), nn.Linear(h, C, **kw)
        with torch.no_grad():
            self.gate.weight.copy_(gate)
            self.up.weight.copy_(up)
            self.down.weight.copy_(swiglu.down.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def gather_rows(shard: torch.Tensor, dim: int) -> torch.Tensor:
    """The whole tensor from every rank's slice along dim."""
    parts = [torch.empty_like(shard) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, shard.contiguous())
    return torch.cat(parts, dim=dim)


def main(argv: list[str] | None = None) -> None:
    setup, _ = Setup.parse(argv)
    rank, world, device = init()
    swiglu = build_model(setup).blocks[0].ffn.to(device)
    C = swiglu.down.weight.size(0)
    x = torch.randn(2, setup.seq, C, generator=torch.Generator().manual_seed(setup.seed), dtype=getattr(torch, setup.dtype))
    x = x.to(device)
    out = {"x": x}
    x_ref = x.clone().requires_grad_()  # the reference: one process, the whole block
    y = swiglu(x_ref)
    y.square().sum().backward()
    gate_g, up_g = swiglu.gate_up.weight.grad.chunk(2, dim=0)
    out |= {"ref.y": y, "ref.dx": x_ref.grad, "ref.dgate": gate_g, "ref.dup": up_g, "ref.ddown": swiglu.down.weight.grad}
    hand = ShardedSwiGLU(swiglu, rank, world).to(device)  # by hand
    x_hand = x.clone().requires_grad_()
    y = hand(x_hand)
    y.square().sum().backward()
    out |= {"hand.y": y, "hand.dx": x_hand.grad, "hand.dgate": gather_rows(hand.gate.grad, 0),
            "hand.dup": gather_rows(hand.up.grad, 0), "hand.ddown": gather_rows(hand.down.grad, 1)}
    split = SplitSwiGLU(swiglu).to(device)  # by torch
    parallelize_module(split, init_device_mesh(device.type, (world,)),
                       {"gate": ColwiseParallel(), "up": ColwiseParallel(), "down": RowwiseParallel()})
    x_torch = x.clone().requires_grad_()
    y = split(x_torch)
    y = y.full_tensor() if hasattr(y, "full_tensor") else y
    y.square().sum().backward()
    out |= {"torch.y": y, "torch.dx": x_torch.grad, "torch.dgate": split.gate.weight.grad.full_tensor(),
            "torch.dup": split.up.weight.grad.full_tensor(), "torch.ddown": split.down.weight.grad.full_tensor()}
    info = {"world": world, "hidden": hand.gate.size(0) * world, "local_hidden": hand.gate.size(0),
            "local_param_bytes": sum(p.numel() * p.element_size() for p in hand.parameters()),
            "full_param_bytes": sum(p.numel() * p.element_size() for p in swiglu.parameters())}
    save_results(setup.out, "tensor", rank, out, {"setup": asdict(setup)} | info)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
