"""What every parallel script shares: the process group, the model, the data, the optimizer, the results.

A script here runs once per process, started by a launcher (torchrun, or accelerate launch), which
sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. `init` joins the group with NCCL on
GPUs and gloo on CPUs; nothing else in a script knows how many machines or GPUs there are.

Every script trains the same thing, so that each can be compared with one process doing it alone:
the model (`base` from notebook 09, or a tiny random Llama for tests), `steps` optimizer steps of AdamW
(weight decay on matrices only) on global batches of `batch` rows. Batch `i` is a function of (seed, i)
alone; rank r of w takes rows [r * batch / w, (r + 1) * batch / w). Each process writes its results
as `<name>.rank<r>.safetensors` + `.json` into `out`; `read_results` reads them back (no pickle).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ...core.files import write_bytes_atomic, write_json_atomic
from ...model.llama import Llama, LlamaConfig
from ...model.llama import load as load_llama
from ...text import shards

TINY = LlamaConfig(vocab_size=256, block_size=32, n_layer=4, n_head=4, n_kv_head=2, n_embd=32)


@dataclass
class Setup:
    """One run's settings: the same on every rank and in the single-process reference."""

    model: str = "tiny"  # "tiny" (random, seeded) or "base" (notebook 09's artifact)
    profile: str = "smoke"  # whose `base` and `token-shards` to read
    data: str = "random"  # "random" token ids or "shards" (notebook 08's token-shards)
    steps: int = 3
    batch: int = 8  # global batch: rows per optimizer step, over all ranks
    seq: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.1
    seed: int = 0
    dtype: str = "float32"  # "float64" for tests: parity down to rounding
    out: str = "."

    @classmethod
    def parse(cls, argv: list[str] | None = None, **extra) -> tuple[Setup, argparse.Namespace]:
        """Parse --model --profile ... plus a script's own flags (extra: name -> argparse kwargs)."""
        p = argparse.ArgumentParser()
        for key, value in asdict(cls()).items():
            p.add_argument(f"--{key}", type=type(value), default=value)
        for name, kw in extra.items():
            p.add_argument(f"--{name}", **kw)
        args = p.parse_args(argv)
        return cls(**{k: getattr(args, k) for k in asdict(cls())}), args

    def argv(self) -> list[str]:
        """The command-line flags that give this setup back."""
        return [s for k, v in asdict(self).items() for s in (f"--{k}", str(v))]


def init() -> tuple[int, int, torch.device]:
    """Join the process group the launcher describes: (rank, world size, this process's device)."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def build_model(setup: Setup) -> Llama:
    """The starting model, identical in every process: `base` as saved, or a tiny Llama from the seed."""
    if setup.model == "base":
        model, _ = load_llama("base", profile=setup.profile)
    elif setup.model == "tiny":
        torch.manual_seed(setup.seed)
        model = Llama(TINY)
    else:
        raise ValueError(f"model must be 'tiny' or 'base', got {setup.model!r}")
    return model.to(getattr(torch, setup.dtype)).train()


def batches(setup: Setup, vocab_size: int):
    """batch_at(i) -> (x, y), each (batch, seq) int64: the global batch of step i."""
    if setup.data == "shards":
        source = shards.load(profile=setup.profile).train_source(setup.batch, setup.seq, seed=setup.seed)
        return source.batch_at
    if setup.data != "random":
        raise ValueError(f"data must be 'random' or 'shards', got {setup.data!r}")

    def batch_at(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 * setup.seed + i)
        rows = torch.randint(vocab_size, (setup.batch, setup.seq + 1), generator=g)
        return rows[:, :-1], rows[:, 1:]
    return batch_at


def my_rows(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's share of a global batch: rows [rank * B / world, (rank + 1) * B / world)."""
    if t.size(0) % world:
        raise ValueError(f"global batch {t.size(0)} does not split over {world} processes")
    n = t.size(0) // world
    return t[rank * n:(rank + 1) * n]


def adamw(params_or_groups, setup: Setup) -> torch.optim.AdamW:
    """AdamW as every run here uses it (the reference too)."""
    return torch.optim.AdamW(params_or_groups, lr=setup.lr, betas=(0.9, 0.95), eps=1e-8,
                             weight_decay=setup.weight_decay)


def decay_groups(named: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings (dim >= 2), none on norm gains: train.param_groups' rule."""
    return [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}]


def global_mean(value: torch.Tensor) -> float:
    """The mean over ranks of a scalar (each rank's loss is the mean over its rows)."""
    v = value.detach().clone()
    dist.all_reduce(v)
    return v.item() / dist.get_world_size()


class Clock:
    """Wall time of what runs inside `with clock:` blocks, summed."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self._t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._t0


def state_bytes(tensors) -> int:
    """Bytes held by these tensors in this process (a DTensor counts its local shard only)."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def save_results(out: str | os.PathLike, name: str, rank: int, tensors: dict[str, torch.Tensor], info: dict) -> None:
    """Write this rank's tensors (safetensors) and facts (JSON) into folder `out`, each atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    write_bytes_atomic(out / f"{name}.rank{rank}.safetensors", save_safetensors(plain))
    write_json_atomic(out / f"{name}.rank{rank}.json", {"rank": rank, **info})


def read_results(out: str | os.PathLike, name: str) -> list[tuple[dict[str, torch.Tensor], dict]]:
    """Every rank's (tensors, facts) of one run, rank 0 first; a missing rank is an error."""
    folder = Path(out)
    found = sorted(folder.glob(f"{name}.rank*.json"), key=lambda p: int(p.stem.rsplit("rank", 1)[1]))
    if not found:
        raise FileNotFoundError(f"no results named {name!r} in {folder}: did the launch fail?")
    results = []
    for r, path in enumerate(found):
        info = json.loads(path.read_text())
        if info["rank"] != r:
            raise FileNotFoundError(f"results of rank {r} missing in {folder} (found rank {info['rank']})")
        tensors = load_safetensors(path.with_suffix(".safetensors").read_bytes())
        results.append((tensors, info))
    return results
