"""ZeRO-1: each rank keeps the AdamW state of only its 1/world of the parameters.

    torchrun --standalone --nproc-per-node 2 -m nanolm.train.parallel.zero --steps 3 --out OUT [--torch]

Plain data parallelism keeps the whole AdamW state (m and v, 8 bytes a parameter in fp32) on every
rank. ZeRO stage 1 (Rajbhandari et al., 2020) shards it. `ShardedAdamW` below does it by hand on one
flat vector of all parameters, padded to a multiple of world and cut into equal slices:

    1. all-reduce the flat gradient (average)          every rank: the full averaged gradient
    2. AdamW on my slice only                           m, v exist for my slice only
    3. all-gather the updated slices                    every rank: the full new parameters

Stage 2 replaces step 1 with a reduce-scatter (each rank receives only its slice of the averaged
gradient, so gradients are sharded too); stage 3 also shards the parameters themselves and gathers
each layer just before it is used: that is FSDP (`fsdp`). With --torch the same training runs with
torch's ZeroRedundancyOptimizer around AdamW, under DDP.
Writes zero.rank<r>: the final parameters, the losses, the optimizer-state bytes on this rank.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel as DDP

from .common import (
    Setup,
    batches,
    build_model,
    decay_groups,
    global_mean,
    init,
    my_rows,
    save_results,
)


class ShardedAdamW:
    """AdamW (torch's arithmetic) over one flat slice of the parameters per rank; the state is the slice's."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        numel = sum(p.numel() for p in params)
        self.shard = -(-numel // self.world)  # ceil: every slice the same length, the last one padded
        self.lo = self.rank * self.shard
        dtype = params[0].dtype
        flat_decay = torch.cat([torch.full((p.numel(),), weight_decay if p.dim() >= 2 else 0.0, dtype=dtype)
                                for p in params])
        self.decay = self._pad(flat_decay)[self.lo:self.lo + self.shard]  # decay per element of my slice
        self.exp_avg = torch.zeros(self.shard, dtype=dtype)  # m and v: 1/world of what one rank would hold
        self.exp_avg_sq = torch.zeros(self.shard, dtype=dtype)
        self.t = 0

    def _pad(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.cat([flat, flat.new_zeros(self.shard * self.world - flat.numel())])

    def _flat(self, tensors) -> torch.Tensor:
        return self._pad(torch.cat([t.reshape(-1) for t in tensors]))

    @torch.no_grad()
    def step(self) -> None:
        grad = self._flat([p.grad for p in self.params])
        dist.all_reduce(grad)  # 1. every rank: the sum of all ranks' gradients ...
        grad = grad[self.lo:self.lo + self.shard] / self.world  # ... of which it needs its slice, averaged
        param = self._flat(self.params)[self.lo:self.lo + self.shard].clone()
        self.t += 1  # 2. AdamW on my slice, written as torch.optim.AdamW computes it
        b1, b2 = self.betas
        param.mul_(1 - self.lr * self.decay)
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / (1 - b2 ** self.t) ** 0.5).add_(self.eps)
        param.addcdiv_(self.exp_avg, denom, value=-self.lr / (1 - b1 ** self.t))
        full = torch.empty(self.shard * self.world, dtype=param.dtype)
        dist.all_gather_into_tensor(full, param)  # 3. every rank: all the updated slices
        offset = 0
        for p in self.params:
            p.copy_(full[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.exp_avg, self.exp_avg_sq]


def main(argv: list[str] | None = None) -> None:
    setup, args = Setup.parse(argv, torch={"action": "store_true"})
    rank, world, device = init()
    model = build_model(setup).to(device)
    if args.torch:
        ddp = DDP(model)
        groups = decay_groups(list(model.named_parameters()), setup.weight_decay)
        opt = ZeroRedundancyOptimizer(groups[0]["params"], optimizer_class=torch.optim.AdamW, lr=setup.lr,
                                      betas=(0.9, 0.95), eps=1e-8, weight_decay=setup.weight_decay)
        opt.add_param_group(groups[1])  # norm gains: no weight decay
        forward = ddp
    else:
        opt = ShardedAdamW(list(model.parameters()), setup.lr, (0.9, 0.95), 1e-8, setup.weight_decay)
        forward = model  # no DDP: ShardedAdamW does the gradient all-reduce itself
    batch_at = batches(setup, model.config.vocab_size)
    losses = []
    for step in range(setup.steps):
        x, y = batch_at(step)
        _, loss = forward(my_rows(x, rank, world).to(device), my_rows(y, rank, world).to(device))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(global_mean(loss))
        if rank == 0:
            print(f"step {step + 1}/{setup.steps} | loss {losses[-1]:.4f}", flush=True)
    state = opt.state_tensors() if not args.torch else [t for s in opt.optim.state.values() for t in s.values()
                                                        if torch.is_tensor(t) and t.dim() > 0]
    full_state = 2 * sum(p.numel() * p.element_size() for p in model.parameters())  # plain AdamW, every rank
    final = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_results(setup.out, "zero", rank, final, {"setup": asdict(setup)} | {"losses": losses, "world": world, "torch": args.torch,
                                              "state_bytes": sum(t.numel() * t.element_size() for t in state),
                                              "unsharded_state_bytes": full_state})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
