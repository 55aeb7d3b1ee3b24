"""The DDP step of `ddp`, written with Hugging Face Accelerate and started by `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 2 -m nanolm.train.parallel.accel --steps 3 --out OUT

Accelerate reads the same environment torchrun sets (its launcher is torchrun underneath), wraps the
model in DDP in `prepare`, and `accelerator.backward` is loss.backward() plus what mixed precision or
DeepSpeed would add. On a machine without GPUs, Accelerator(cpu=True) joins a gloo group.
Writes accel.rank<r>: the final parameters and the losses, to compare with `ddp`'s.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from accelerate import Accelerator

from .common import Setup, adamw, batches, build_model, decay_groups, my_rows, save_results


def main(argv: list[str] | None = None) -> None:
    setup, _ = Setup.parse(argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    model = build_model(setup)
    opt = adamw(decay_groups(list(model.named_parameters()), setup.weight_decay), setup)
    model, opt = accelerator.prepare(model, opt)  # DDP around the model, the optimizer made device-aware
    batch_at = batches(setup, accelerator.unwrap_model(model).config.vocab_size)
    losses = []
    for step in range(setup.steps):
        x, y = batch_at(step)
        _, loss = model(my_rows(x, rank, world).to(accelerator.device), my_rows(y, rank, world).to(accelerator.device))
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
        accelerator.print(f"step {step + 1}/{setup.steps} | loss {losses[-1]:.4f}")
    final = {k: v.detach().cpu().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    save_results(setup.out, "accel", rank, final, {"setup": asdict(setup)} | {"losses": losses, "world": world,
                                                "distributed_type": str(accelerator.distributed_type)})
    accelerator.end_training()


if __name__ == "__main__":
    main()
