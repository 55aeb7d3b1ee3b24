"""FSDP2 (fully_shard): parameters, gradients and AdamW state all sharded (ZeRO stage 3), and a sharded checkpoint.

    torchrun --standalone --nproc-per-node 2 -m nanolm.train.parallel.fsdp --steps 3 --out OUT

`fully_shard` on each block and then on the whole model turns every parameter into a DTensor of which
each rank holds one row-slice (dim 0). Forward all-gathers a block's parameters just before the block
runs and frees them after; backward gathers them again, and reduce-scatters the gradients, so each
rank ends with the averaged gradient of its slice only; the optimizer then steps its slice.
Per rank: parameters, gradients and AdamW state are about 1/world of the whole; the price is one
all-gather per block in forward and in backward, and one reduce-scatter per block.

At the end the ranks save one checkpoint together with torch.distributed.checkpoint: each writes its
own slices (safetensors, through the Hugging Face storage writer: no pickle), and the metadata says
where every slice of every tensor lives, so any number of processes, one included, can load it.
Writes fsdp.rank<r> (the full final parameters, the losses, bytes per rank) and OUT/fsdp-checkpoint/.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

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
    state_bytes,
)

CHECKPOINT = "fsdp-checkpoint"


def shard(model: torch.nn.Module, mesh) -> torch.nn.Module:
    """fully_shard each block (one all-gather unit each), then the root (embedding, final norm, head)."""
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def save_checkpoint(model: torch.nn.Module, folder: str) -> None:
    """Every rank writes its own slices into folder.tmp; rank 0 swaps it in when all have finished."""
    state = get_model_state_dict(model)  # DTensors: each rank's shard, with where it belongs
    if "head.weight" in state and model.config.tie_embeddings:
        del state["head.weight"]  # the same tensor as tok_emb.weight: store it once
    final, tmp = Path(folder), Path(f"{folder}.tmp")
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    dcp.save(state, storage_writer=dcp.HuggingFaceStorageWriter(str(tmp), save_distributed=True))
    dist.barrier()  # every shard written: a crash before this line leaves the old checkpoint as it was
    if dist.get_rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    dist.barrier()


def load_checkpoint(model: torch.nn.Module, folder: str) -> torch.nn.Module:
    """Load a checkpoint written by any number of ranks into a plain (unsharded) model, in one process."""
    state = {k: v for k, v in model.state_dict().items()
             if not (k == "head.weight" and model.config.tie_embeddings)}
    with warnings.catch_warnings():  # "torch.distributed is disabled ...": one process is what we want here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=dcp.HuggingFaceStorageReader(folder), no_dist=True)
    model.load_state_dict(state, strict=False)  # the tied head follows tok_emb.weight
    return model


def main(argv: list[str] | None = None) -> None:
    setup, _ = Setup.parse(argv)
    rank, world, device = init()
    model = build_model(setup).to(device)
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    shard(model, init_device_mesh(device.type, (world,)))
    opt = adamw(decay_groups(list(model.named_parameters()), setup.weight_decay), setup)
    batch_at = batches(setup, model.config.vocab_size)
    losses = []
    for step in range(setup.steps):
        x, y = batch_at(step)
        _, loss = model(my_rows(x, rank, world).to(device), my_rows(y, rank, world).to(device))
        loss.backward()  # gradients arrive reduce-scattered: each rank holds its slice, averaged
        if step == 0:
            grad_bytes = state_bytes(p.grad for p in model.parameters())
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(global_mean(loss))
        if rank == 0:
            print(f"step {step + 1}/{setup.steps} | loss {losses[-1]:.4f}", flush=True)
    adam_state = [t for s in opt.state.values() for t in s.values() if t.dim() > 0]
    info = {"losses": losses, "world": world, "full_param_bytes": full_bytes,
            "param_bytes": state_bytes(model.parameters()), "grad_bytes": grad_bytes,
            "adam_bytes": state_bytes(adam_state)}
    save_checkpoint(model, f"{setup.out}/{CHECKPOINT}")
    final = {k: v.full_tensor() for k, v in model.state_dict().items()}  # every rank gathers: a collective
    save_results(setup.out, "fsdp", rank, final, {"setup": asdict(setup)} | info)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
