"""Pipeline parallelism: the layers cut into stages, one per rank, fed micro-batches by a schedule.

    torchrun --standalone --nproc-per-node 2 -m nanolm.train.parallel.pipeline --schedule 1f1b --micro 4 --out OUT

Rank s holds blocks [s * L / S, (s + 1) * L / S): the first stage also the embedding, the last the final
norm, the head and the loss. Activations go forward rank to rank (point-to-point send/recv), their
gradients come back. One global batch is cut into `micro` micro-batches so that stages work at the
same time; torch.distributed.pipelining runs the schedule and scales each micro-batch's gradient by
1/micro, so the step equals one step on the whole batch. GPipe runs every forward, then every
backward (each stage keeps `micro` activations); 1F1B starts backwards as soon as it can (at most S
in flight). `timeline` below draws either schedule and its idle time (the bubble).

A tied embedding lives on two ranks (the first stage reads it, the last uses it as the head): each
keeps a copy, and after backward the two gradients are summed across the two ranks, so both copies
take the same step, as Megatron-LM does. Writes pipeline.rank<r>: that stage's final parameters.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from ...model.layers import rope_angles
from .common import Setup, adamw, batches, build_model, decay_groups, init, save_results

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


class Stage(nn.Module):
    """Blocks [lo, hi) of a Llama, with the embedding if first and the norm and head if last."""

    def __init__(self, model: nn.Module, lo: int, hi: int, first: bool, last: bool):
        super().__init__()
        self.lo, self.first, self.last = lo, first, last
        self.tok_emb = model.tok_emb if first else None
        self.blocks = nn.ModuleList(model.blocks[lo:hi])
        self.norm_f = model.norm_f if last else None
        if last:  # its own copy of a tied weight: the first stage has the embedding
            self.head = nn.Linear(model.config.n_embd, model.config.vocab_size, bias=False,
                                  dtype=model.head.weight.dtype)
            self.head.weight.data.copy_(model.head.weight.data)
        self.register_buffer("inv_freq", model.blocks[0].attn.inv_freq.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """first: ids (B, T) -> hidden (B, T, C); middle: hidden -> hidden; last: hidden -> logits (B, T, V)."""
        if self.first:
            x = self.tok_emb(x)
        positions = torch.arange(x.size(1), device=x.device)
        rope = rope_angles(positions, self.inv_freq)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, None, self.lo + i, rope)
        return self.head(self.norm_f(x)) if self.last else x


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The Llama's own loss: cross-entropy computed in float32 (as Llama.forward does)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


def split(model: nn.Module, rank: int, world: int) -> Stage:
    n = model.config.n_layer
    if n % world:
        raise ValueError(f"{n} layers do not split into {world} equal stages")
    lo, hi = rank * n // world, (rank + 1) * n // world
    return Stage(model, lo, hi, first=rank == 0, last=rank == world - 1)


def orders(stages: int, micro: int, kind: str) -> list[list[tuple[str, int]]]:
    """Each stage's sequence of ("F" or "B", micro-batch) under GPipe or 1F1B."""
    result = []
    for s in range(stages):
        if kind == "gpipe":
            result.append([("F", m) for m in range(micro)] + [("B", m) for m in range(micro)])
            continue
        warm = min(stages - s - 1, micro)  # 1F1B: a few forwards, then one forward one backward, ...
        order = [("F", m) for m in range(warm)]
        for m in range(micro - warm):
            order += [("F", warm + m), ("B", m)]
        result.append(order + [("B", m) for m in range(micro - warm, micro)])
    return result


def timeline(stages: int, micro: int, kind: str, backward_cost: int = 2) -> tuple[list[str], float, int]:
    """Simulate a schedule, a forward taking 1 time unit and a backward `backward_cost`.

    Returns one text row per stage (a digit m: forward of micro-batch m; a letter: its backward,
    a = 0; '.': idle), the bubble (the idle share of all stage-time), and the most micro-batch
    activations one stage holds at once (forwards done whose backward has not run).
    """
    todo = orders(stages, micro, kind)
    finish, free, rows = {}, [0] * stages, [""] * stages
    while any(todo):
        for s in range(stages):
            if not todo[s]:
                continue
            op, m = todo[s][0]
            if op == "F":
                needs = [("F", s - 1, m)] if s else []
            else:
                needs = [("B", s + 1, m)] if s < stages - 1 else [("F", s, m)]
            if any(n not in finish for n in needs):
                continue  # waits for the neighbouring stage
            start = max([free[s]] + [finish[n] for n in needs])
            cost = 1 if op == "F" else backward_cost
            mark = str(m % 10) if op == "F" else chr(ord("a") + m % 26)
            rows[s] += "." * (start - len(rows[s])) + mark * cost
            free[s] = finish[(op, s, m)] = start + cost
            todo[s].pop(0)
    total = max(free)
    rows = [r.ljust(total, ".") for r in rows]
    peak = max(max(sum(1 if op == "F" else -1 for op, _ in o[:k + 1]) for k in range(len(o)))
               for o in orders(stages, micro, kind))
    return rows, 1 - stages * micro * (1 + backward_cost) / (stages * total), peak


def main(argv: list[str] | None = None) -> None:
    setup, args = Setup.parse(argv, schedule={"choices": list(SCHEDULES), "default": "1f1b"},
                              micro={"type": int, "default": 4})
    rank, world, device = init()
    model = build_model(setup)
    stage = split(model, rank, world).to(device)
    tied, vocab_size = model.config.tie_embeddings and world > 1, model.config.vocab_size
    ends = dist.new_group([0, world - 1]) if tied else None  # every rank takes part in making a group
    del model  # this rank keeps its stage only
    opt = adamw(decay_groups(list(stage.named_parameters()), setup.weight_decay), setup)
    pipe = PipelineStage(stage, rank, world, device)
    schedule = SCHEDULES[args.schedule](pipe, n_microbatches=args.micro, loss_fn=loss_fn)
    batch_at = batches(setup, vocab_size)
    losses = []
    for step in range(setup.steps):
        x, y = batch_at(step)
        micro_losses = []
        if rank == 0:
            schedule.step(x.to(device))
        elif rank == world - 1:
            schedule.step(target=y.to(device), losses=micro_losses)
        else:
            schedule.step()
        if tied and rank in (0, world - 1):  # the tied embedding: sum the two stages' gradients
            weight = stage.tok_emb.weight if rank == 0 else stage.head.weight
            dist.all_reduce(weight.grad, group=ends)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if rank == world - 1:
            losses.append(torch.stack(micro_losses).mean().item())
            print(f"step {step + 1}/{setup.steps} | loss {losses[-1]:.4f}", flush=True)
    params = {k if k.startswith(("tok_emb", "norm_f", "head")) else f"blocks.{stage.lo + int(k.split('.')[1])}."
              + k.split(".", 2)[2]: v for k, v in stage.state_dict().items()}
    save_results(setup.out, "pipeline", rank, params, {"setup": asdict(setup)} | {"losses": losses, "world": world, "micro": args.micro,
                                                   "schedule": args.schedule, "stage_layers": len(stage.blocks)})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
