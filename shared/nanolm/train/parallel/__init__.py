"""Parallel training on real launchers: each module is a script run once per process by torchrun.

    collectives   all-reduce, all-gather, reduce-scatter, broadcast on small tensors; their bandwidth
    ddp           DistributedDataParallel, gradient accumulation with no_sync, compute vs communication
    accel         the same DDP step through Hugging Face Accelerate (`accelerate launch`)
    zero          ZeRO-1 written by hand (sharded AdamW state), then torch's ZeroRedundancyOptimizer
    fsdp          FSDP2 (fully_shard) and a sharded checkpoint (torch.distributed.checkpoint)
    pipeline      pipeline parallelism, GPipe and 1F1B schedules (torch.distributed.pipelining)
    tensor        tensor parallelism of one SwiGLU block: by hand, then torch's parallelize_module

`common` holds what they share (process group, model, data, optimizer, results); `launch` starts them
from a notebook or a test and reads back what each rank wrote. `nanolm.train.pretrain` is the
full-size training script built from the same parts.
"""

from .common import TINY, Setup, read_results
from .launch import LAUNCHERS, Launched, command, launch_lines, run

__all__ = ["LAUNCHERS", "TINY", "Launched", "Setup", "command", "launch_lines", "read_results", "run"]
