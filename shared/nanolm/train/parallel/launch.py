"""Start a parallel script the way practitioners do, from a notebook or a test, and read what it wrote.

The course never writes its own launcher: `command` builds a torchrun (torch.distributed.run) or an
`accelerate launch` line, `run` starts it as a child process and waits. The same script runs unchanged
on more hardware; only the launch line changes (`launch_lines` prints them):

    one machine, 2 CPU processes (gloo)   torchrun --standalone --nproc-per-node 2 -m SCRIPT ...
    one machine, 8 GPUs (NCCL)            torchrun --standalone --nproc-per-node 8 -m SCRIPT ...
    4 machines x 8 GPUs                   torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d
                                            --rdzv-endpoint HOST:29500 --rdzv-id JOB -m SCRIPT ...   (on each)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ...core import paths
from .common import Setup, read_results

LAUNCHERS = ("torchrun", "accelerate")


@dataclass
class Launched:
    """A finished launch: its command line, wall time (start-up included) and what rank 0 printed."""

    command: list[str]
    seconds: float
    output: str

    def show(self) -> str:
        """The command as a learner would type it (paths inside the repository relative to it)."""
        names = {"torch.distributed.run": "torchrun", "accelerate.commands.launch": "accelerate launch"}
        words = [names.get(self.command[2], self.command[2]), *self.command[3:]]
        return " ".join(w.replace(f"{paths.ROOT}/", "") for w in words)


def command(script: str, args: list[str], *, nproc: int = 2, launcher: str = "torchrun") -> list[str]:
    """The launch line for `python -m script args` on nproc processes of this machine."""
    if launcher == "torchrun":
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    elif launcher == "accelerate":
        # accelerate's torchrun-based launcher is the one called --multi_gpu; the script's
        # Accelerator(cpu=True) then picks gloo on a machine without GPUs
        head = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={nproc}",
                "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "--main_process_port=0"]
    else:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    return [*head, "-m", script, *args]


def run(script: str, setup: Setup | None, *extra: str, nproc: int = 2, launcher: str = "torchrun",
        threads: int = 1, timeout_s: float = 600, cpu_only: bool = False) -> Launched:
    """Launch `script` on nproc local processes with `setup` (its flags) and `extra` flags, wait, and
    raise with the script's output if it fails.

    Old results of the same name in setup.out are removed first, so what is read afterwards is this run's.
    threads: torch threads per process (2 processes x 1 thread fill this course's 2-core machine).
    cpu_only: hide GPUs from the processes (gloo on CPUs), e.g. 2 processes on a machine with one GPU.
    """
    if setup is not None:
        for old in Path(setup.out).glob(f"{script.rsplit('.', 1)[-1]}.rank*"):
            old.unlink()
    cmd = command(script, [*(setup.argv() if setup else []), *extra], nproc=nproc, launcher=launcher)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{script} did not finish within {timeout_s:.0f} s; its output:\n{e.stdout}") from None
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}\nexited {done.returncode}; its output:\n{done.stdout}\n{done.stderr}")
    return Launched(cmd, seconds, done.stdout)


def launch_lines(script: str, args: str = "") -> dict[str, str]:
    """How the same script starts on one machine's CPUs, one machine's GPUs, and several machines."""
    tail = f"-m {script} {args}".strip()
    return {
        "this machine, 2 CPU processes (gloo)": f"torchrun --standalone --nproc-per-node 2 {tail}",
        "one GPU": f"torchrun --standalone --nproc-per-node 1 {tail}",
        "one machine, 8 GPUs (NCCL)": f"torchrun --standalone --nproc-per-node 8 {tail}",
        "4 machines x 8 GPUs (run on each)": ("torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d "
                                              f"--rdzv-endpoint HOST0:29500 --rdzv-id job1 {tail}"),
        "Accelerate, 8 GPUs": f"accelerate launch --multi_gpu --num_processes 8 {tail}",
    }


__all__ = ["LAUNCHERS", "Launched", "command", "launch_lines", "read_results", "run"]
