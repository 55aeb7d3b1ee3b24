"""Data parallelism with DistributedDataParallel: every rank a full copy, gradients averaged by all-reduce.

    torchrun --standalone --nproc-per-node 2 -m nanolm.train.parallel.ddp --steps 3 --out OUT [--accum 2]

Each rank computes the loss on its rows of the global batch; DDP's backward hooks all-reduce (average)
each bucket of gradients while the rest of backward still runs; then every rank takes the same AdamW
step, so the copies stay equal. With --accum k each rank splits its rows into k micro-batches and
runs the first k - 1 backwards under `no_sync()` (gradients add up locally, no communication), so
the result is the same step with 1/k of the all-reduces.

After training, --timing n times n more steps twice: as DDP steps, and with every backward under
no_sync (the compute alone), so the difference is what communication costs (`compute_s`, `step_s`).
Writes ddp.rank<r>: the final parameters, the loss of each step, bytes of state per rank.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .common import (
    Setup,
    adamw,
    batches,
    build_model,
    decay_groups,
    global_mean,
    init,
    my_rows,
    save_results,
)


def train_step(ddp: DDP, opt, x: torch.Tensor, y: torch.Tensor, accum: int, sync: bool = True) -> torch.Tensor:
    """One optimizer step on this rank's rows, in `accum` micro-batches; returns this rank's mean loss."""
    total = torch.zeros(())
    for xs, ys, last in zip(x.chunk(accum), y.chunk(accum), [False] * (accum - 1) + [True], strict=True):
        context = ddp.no_sync() if (not last or not sync) else contextlib.nullcontext()
        with context:
            _, loss = ddp(xs, ys)
            (loss / accum).backward()  # the mean over micro-batches: the gradient of the whole batch
        total += loss.detach() / accum
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total


def timed(ddp: DDP, opt, batch_at, setup: Setup, rank: int, world: int, accum: int, n: int, sync: bool) -> float:
    """Seconds per step over n steps (after the training steps), with or without the all-reduce."""
    dist.barrier()
    t0 = time.perf_counter()
    for i in range(n):
        x, y = batch_at(setup.steps + i)
        train_step(ddp, opt, my_rows(x, rank, world), my_rows(y, rank, world), accum, sync)
    dist.barrier()
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> None:
    setup, args = Setup.parse(argv, accum={"type": int, "default": 1}, timing={"type": int, "default": 0})
    rank, world, device = init()
    model = build_model(setup).to(device)
    ddp = DDP(model)  # broadcasts rank 0's weights, then all-reduces gradients in buckets during backward
    opt = adamw(decay_groups(list(model.named_parameters()), setup.weight_decay), setup)
    batch_at = batches(setup, model.config.vocab_size)
    losses = []
    for step in range(setup.steps):
        x, y = batch_at(step)
        loss = train_step(ddp, opt, my_rows(x, rank, world).to(device), my_rows(y, rank, world).to(device),
                          args.accum)
        losses.append(global_mean(loss))
        if rank == 0:
            print(f"step {step + 1}/{setup.steps} | loss {losses[-1]:.4f}", flush=True)
    final = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    info = {"losses": losses, "world": world, "accum": args.accum, "buckets_mb": 25,
            "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
    if args.timing:
        info["step_s"] = timed(ddp, opt, batch_at, setup, rank, world, args.accum, args.timing, True)
        info["compute_s"] = timed(ddp, opt, batch_at, setup, rank, world, args.accum, args.timing, False)
    save_results(setup.out, "ddp", rank, final, {"setup": asdict(setup)} | info)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
