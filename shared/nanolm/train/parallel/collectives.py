"""The four collectives data, tensor and sharded parallelism are built from, on small tensors; then their speed.

    torchrun --standalone --nproc-per-node 2 -m nanolm.train.parallel.collectives --out OUT

Rank r starts with x = [0, 1, 2, 3] + 10 r. Then:
    all_reduce       every rank gets the elementwise sum over ranks        (DDP's gradient average)
    all_gather       every rank gets all ranks' tensors, concatenated       (FSDP before a layer runs)
    reduce_scatter   rank r gets slice r of the sum                         (FSDP's gradients, ZeRO-2)
    broadcast        every rank gets rank 0's tensor                        (DDP's start: equal weights)
An all-reduce is a reduce-scatter followed by an all-gather (the ring algorithm does exactly that):
shown by doing both. Then all_reduce of float32 tensors from 1 KB to --max_mb MB is timed; the bus
bandwidth 2 (w - 1) / w * bytes / seconds is what the links carry, comparable across world sizes.
Writes collectives.rank<r>: each result, and the timings.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
import torch.distributed as dist

from .common import Setup, init, save_results


def bandwidth(max_mb: float, repeats: int = 5) -> list[dict]:
    """Seconds per all_reduce of float32 tensors of growing size, best of `repeats`."""
    rows, world, size = [], dist.get_world_size(), 256
    while size * 4 <= max_mb * 2**20:
        t = torch.ones(size)
        dist.all_reduce(t)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            best = min(best, time.perf_counter() - t0)
        nbytes = size * 4
        rows.append({"bytes": nbytes, "seconds": best, "bus_gb_s": 2 * (world - 1) / world * nbytes / best / 1e9})
        size *= 8
    return rows


def main(argv: list[str] | None = None) -> None:
    setup, args = Setup.parse(argv, max_mb={"type": float, "default": 16.0})
    rank, world, _ = init()
    x = torch.arange(4.0) + 10 * rank
    out = {"x": x.clone()}
    summed = x.clone()
    dist.all_reduce(summed)
    out["all_reduce"] = summed
    gathered = torch.empty(4 * world)
    dist.all_gather_into_tensor(gathered, x)
    out["all_gather"] = gathered
    mine = torch.empty(4 // world) if 4 % world == 0 else None
    if mine is not None:
        dist.reduce_scatter_tensor(mine, x)
        out["reduce_scatter"] = mine
        both = torch.empty(4)
        dist.all_gather_into_tensor(both, mine)  # reduce-scatter then all-gather = all-reduce
        out["reduce_scatter_then_all_gather"] = both
    root = x.clone()
    dist.broadcast(root, src=0)
    out["broadcast"] = root
    save_results(setup.out, "collectives", rank, out, {"setup": asdict(setup)} | {"world": world, "backend": dist.get_backend(),
                                                   "bandwidth": bandwidth(args.max_mb)})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
