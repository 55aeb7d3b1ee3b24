"""Pre-train a Llama on the course's token shards with FSDP2, on one GPU, many, or this machine's CPUs.

    one GPU                 torchrun --standalone --nproc-per-node 1 -m nanolm.train.pretrain --size 560m --profile gpu
    8 GPUs                  torchrun --standalone --nproc-per-node 8 -m nanolm.train.pretrain --size 1b --profile gpu
    4 machines x 8 GPUs     torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST0:29500
                              --rdzv-id job1 -m nanolm.train.pretrain --size 1b --profile gpu       (on each machine)
    this machine (2 CPUs)   torchrun --standalone --nproc-per-node 2 -m nanolm.train.pretrain --size tiny --profile cpu

The same code path everywhere: fully_shard on every block and the root (parameters, gradients and
AdamW state split over the GPUs), bf16 parameters with fp32 gradient reduction on GPUs that have
bf16 (fp32 on CPUs), optional activation checkpointing, gradient accumulation without a sync on all
but the last micro-batch, warmup + cosine learning rate, gradient clipping, a progress line per
--log_every steps, and a sharded checkpoint (torch.distributed.checkpoint, safetensors) at the end.
Rank 0 prints the memory plan (nanolm.train.memory) before training and the measured peak after.
Each rank sees batch x seq tokens per micro-batch; a step is batch x seq x accum x world tokens.
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ..core import paths
from ..model.llama import Llama, LlamaConfig
from ..text import shards
from . import memory
from .loop import human
from .parallel.common import init, save_results
from .parallel.fsdp import save_checkpoint
from .schedules import cosine_lr

# Sizes without the vocabulary, which comes from the token shards' tokenizer.
SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2),
    "base": dict(n_layer=4, n_embd=128, n_head=4, n_kv_head=2),  # notebook 09's `base`
    "560m": dict(n_layer=22, n_embd=1536, n_head=12, n_kv_head=4, ffn_hidden=4096),
    "1b": dict(n_layer=24, n_embd=2048, n_head=16, n_kv_head=8, ffn_hidden=5504),
}


def arguments(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=list(SIZES), default="tiny")
    p.add_argument("--profile", default="cpu", help="whose token-shards to read (notebook 08)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4, help="rows per micro-batch per process")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing of every block")
    p.add_argument("--log_every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="pretrain-run")
    return p.parse_args(argv)


def build(args, vocab_size: int, device: torch.device, world: int) -> Llama:
    """The model, seeded alike on every rank, sharded over all ranks."""
    torch.manual_seed(args.seed)
    model = Llama(LlamaConfig(vocab_size=vocab_size, block_size=args.seq, **SIZES[args.size])).to(device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    mesh = init_device_mesh(device.type, (world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh, **({"mp_policy": policy} if policy else {}))
    fully_shard(model, mesh=mesh, **({"mp_policy": policy} if policy else {}))
    return model


def print_plan(args, cfg: LlamaConfig, world: int, mixed: bool) -> None:
    tokens = args.batch * args.seq
    p = memory.plan(args.size, cfg, tokens_per_gpu=tokens, stage="zero3", world=world, mixed=mixed,
                    checkpointing=args.checkpointing)
    print(f"model {args.size}: {p.params / 1e6:.1f}M parameters | {world} processes | "
          f"{'bf16 mixed' if mixed else 'fp32'} | checkpointing {'on' if args.checkpointing else 'off'}")
    print(f"memory plan per process: state {p.state / 2**20:.1f} MiB (FSDP: 1/{world} each of params, grads, "
          f"AdamW) + activations {p.activations / 2**20:.1f} MiB = {p.total / 2**20:.1f} MiB", flush=True)


def train_step(model, opt, rows_x, rows_y, accum: int) -> torch.Tensor:
    """One optimizer step over `accum` micro-batches; gradients reduce-scatter on the last one only."""
    total = torch.zeros((), device=rows_x.device)
    for i, (x, y) in enumerate(zip(rows_x.chunk(accum), rows_y.chunk(accum), strict=True)):
        model.set_requires_gradient_sync(i == accum - 1)
        _, loss = model(x, y)
        (loss / accum).backward()
        total += loss.detach() / accum
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return torch.stack([total, norm.full_tensor() if hasattr(norm, "full_tensor") else norm])


def train(args, model, opt, source, rank: int, world: int, device) -> tuple[list[float], float]:
    """The training steps, with a progress line from rank 0: (loss per step, seconds)."""
    rows, losses, t0 = args.batch * args.accum, [], time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, args.lr, args.lr / 10, args.warmup, args.steps)
        x, y = source.batch_at(step)
        mine = slice(rank * rows, (rank + 1) * rows)
        loss, norm = train_step(model, opt, x[mine].to(device), y[mine].to(device), args.accum)
        dist.all_reduce(loss)
        losses.append(loss.item() / world)
        if rank == 0 and ((step + 1) % args.log_every == 0 or step + 1 == args.steps):
            seconds = time.perf_counter() - t0
            tok_s = (step + 1) * rows * world * args.seq / seconds
            print(f"step {step + 1}/{args.steps} | loss {losses[-1]:.2f} | grad norm {norm.item():.2f} | "
                  f"{human(tok_s)} tok/s | {seconds:.1f} s", flush=True)
    return losses, time.perf_counter() - t0


def main(argv=None) -> None:
    args = arguments(argv)
    rank, world, device = init()
    data = shards.load(profile=args.profile)
    rows = args.batch * args.accum  # per process per step
    source = data.train_source(rows * world, args.seq, seed=args.seed)
    model = build(args, data.vocab_size, device, world)
    mixed = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if rank == 0:
        print_plan(args, model.config, world, mixed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    with memory.activation_checkpointing(model) if args.checkpointing else contextlib.nullcontext():
        losses, seconds = train(args, model, opt, source, rank, world, device)
    save_checkpoint(model, f"{args.out}/checkpoint")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    info = {"losses": losses, "world": world, "seconds": seconds, "peak_bytes": peak, "size": args.size,
            "params": sum(p.numel() for p in model.parameters()), "tokens_per_step": rows * world * args.seq}
    save_results(args.out, "pretrain", rank, {}, {"args": vars(args)} | info)
    if rank == 0:
        shown = str(args.out).replace(f"{paths.ROOT}/", "")  # inside the repository: relative to it
        print(f"done: {args.steps} steps in {seconds:.1f} s; sharded checkpoint in {shown}/checkpoint"
              + (f"; peak GPU memory {peak / 2**30:.2f} GiB" if peak else ""), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
