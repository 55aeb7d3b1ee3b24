"""A training loop for any language model whose forward(idx, targets) returns (logits, loss).

The design, in the order a step runs:
- Data comes from a `BatchSource`: anything with next_batch() -> (x, y) and a JSON-able
  state_dict() / load_state_dict(), so a checkpoint can record where in the data a run stands.
- The learning rate is a pure function of the step (`lr_at`: warmup then cosine, WSD or constant),
  so a resumed run needs only the step number, never a scheduler object.
- One optimizer step = `grad_accum` micro-batches; each micro-loss is divided by grad_accum, so the
  summed gradients are those of one big batch. Then the gradient norm is clipped (the pre-clip norm
  is reported) and AdamW steps, with weight decay on matrices only (`param_groups`).
- Precision: bf16 autocast on CUDA GPUs that support it, fp16 autocast + GradScaler on older ones,
  fp32 elsewhere (`resolve_precision`). Measured on this course's CPU (AMD EPYC with AVX-512 bf16,
  2 threads): a 1024^3 bf16 matmul runs at about twice the fp32 rate, yet a bf16-autocast training
  step of a 4-layer, 128-wide GPT took 62 ms vs 60 ms in fp32 (the casts eat the gain) and rounds
  more, so "auto" keeps fp32 on CPU. (CPUs without bf16 units are far slower still in bf16.)
- The hot path never waits for the device: losses stay on it as tensors and are read (.tolist(),
  one sync) only at log steps; evaluation, logging and checkpoints happen between steps.
- Every `eval_every` steps each named validation source gets `eval_batches` batches; its state is
  restored afterwards, so every evaluation sees the same batches and the curves are comparable.
- A checkpoint is a folder without pickle: model.safetensors, optimizer.safetensors (the optimizer's
  tensors by name) + optimizer.json (the rest), trainer.json (step, config, data position, RNG
  states, history) and manifest.json (sha256 of each file). It is written into a temporary folder,
  fsynced, and swapped in by renames, so a crash mid-save leaves the previous checkpoint loadable.
  Loading checks every hash and the model's shapes and config, and refuses a mismatch.
A run stopped at step k and resumed from its checkpoint gives bit-identical losses (tests pin it).

Use:
    cfg = TrainConfig(max_steps=2000, lr=6e-4, eval_every=100, checkpoint_every=500, checkpoint_dir="run")
    trainer = Trainer(model, cfg, train_source, {"web": web_val, "code": code_val}, device, log_dir="runs/x")
    if (ck := last_checkpoint(cfg.checkpoint_dir)):
        trainer.load_checkpoint(ck)  # exact resume
    history = trainer.run(on_eval=lambda history: ...)  # prints progress lines; the callback can plot
    compare_throughput(make_model, make_source, cfg)  # tokens/s of the Trainer vs a bare loop
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from .files import sha256_bytes, write_bytes_atomic
from .flops import model_flops_per_token, peak_flops, sync

FORMAT = "nanolm-train-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE, OPTIM_FILE, OPTIM_META, TRAINER_FILE = (
    "model.safetensors", "optimizer.safetensors", "optimizer.json", "trainer.json",
)
SCHEDULES = ("cosine", "wsd", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or does not fit the model it is loaded into."""


@runtime_checkable
class BatchSource(Protocol):
    """Where batches come from: the training loop only needs these three methods."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) pair, both (B, T) int64 token ids (y is x shifted by one)."""
        ...

    def state_dict(self) -> dict:
        """The position in the data, as JSON-able values (ints, strings, lists)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Go back to a position returned by state_dict()."""
        ...


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained (saved in every checkpoint)."""

    max_steps: int = 1000
    batch_size: int = 16  # sequences per micro-batch (documentation: the source makes the batches)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 6e-4  # peak learning rate
    min_lr: float = 6e-5  # floor of the decay
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine", "wsd" (warmup-stable-decay) or "constant"
    decay_fraction: float = 0.2  # wsd: the last fraction of max_steps decays linearly to min_lr
    weight_decay: float = 0.1  # on matrices (dim >= 2) only
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    eval_every: int = 100  # steps between evaluations; 0 turns them off
    eval_batches: int = 10  # batches per validation source and evaluation
    log_every: int = 10  # steps between progress lines
    precision: str = "auto"  # "auto", "fp32", "bf16", "fp16"
    compile: bool = False  # torch.compile the model's forward
    checkpoint_every: int = 0  # steps between checkpoints into checkpoint_dir/last; 0: never
    checkpoint_dir: str | None = None
    seed: int | None = 0  # seeds python, numpy and torch when the Trainer is made (None: leave them)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_steps < 1 or self.grad_accum < 1 or self.warmup_steps < 0:
            raise ValueError("max_steps and grad_accum must be >= 1 and warmup_steps >= 0")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("checkpoint_every needs a checkpoint_dir")


# --------------------------------------------------------------------------- schedules


def cosine_lr(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup lr*(step+1)/(warmup+1), then cosine from lr down to min_lr at max_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def wsd_lr(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int,
           decay_fraction: float = 0.2) -> float:
    """Warmup-stable-decay: warmup, flat at lr, then linear to min_lr over the last decay_fraction."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, round(decay_fraction * max_steps))
    decay_start = max(warmup_steps, max_steps - decay_steps)
    if step < decay_start:
        return lr
    progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
    return lr + (min_lr - lr) * progress


def constant_lr(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warmup, then lr forever."""
    return lr * (step + 1) / (warmup_steps + 1) if step < warmup_steps else lr


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of (0-based) optimizer step `step` under cfg's schedule."""
    if cfg.schedule == "cosine":
        return cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
    if cfg.schedule == "wsd":
        return wsd_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps, cfg.decay_fraction)
    return constant_lr(step, cfg.lr, cfg.warmup_steps)


# --------------------------------------------------------------------------- optimizer


def split_decay(model: nn.Module) -> tuple[list[str], list[str]]:
    """(decayed, not decayed) parameter names: matrices (dim >= 2, embeddings too) vs biases and norm gains."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied weight appears once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(name)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on matrices and embeddings, none on biases and norm gains."""
    params = dict(model.named_parameters())
    decay, no_decay = split_decay(model)
    return [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over param_groups: the fused kernel on CUDA and CPU, the foreach (multi-tensor) one elsewhere.

    On this course's 2-core CPU the fused step of a 0.9M-parameter GPT took 0.64 ms, foreach 2.6 ms.
    """
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                             eps=cfg.eps, **fast)


# --------------------------------------------------------------------------- precision


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'auto' -> bf16 on a bf16 CUDA GPU, fp16 on an older one, fp32 on CPU/MPS; others pass through."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"  # CPU: bf16 autocast measured slower than fp32 here, and less exact
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- formatting


def human(x: float) -> str:
    """18400 -> '18.4k', 2.5e6 -> '2.50M', 950 -> '950'."""
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def progress_line(step: int, max_steps: int, loss: float, lr: float, tok_per_s: float,
                  mfu: float | None, seconds: float) -> str:
    """'step 120/2000 | loss 1.92 | lr 6.0e-04 | 18.4k tok/s | mfu 12.3% | 3.1 s' (s: training time so far)."""
    mfu_s = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
    return (f"step {step}/{max_steps} | loss {loss:.2f} | lr {lr:.1e} | {human(tok_per_s)} tok/s"
            f" | mfu {mfu_s} | {seconds:.1f} s")


# --------------------------------------------------------------------------- the trainer


@dataclass
class _Window:
    """What happened since the last progress line (losses stay on the device until then)."""

    losses: list[torch.Tensor] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0


class Trainer:
    """Train `model` on `train_source`, evaluating on named `val_sources`; checkpoint and resume exactly."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        train_source: BatchSource,
        val_sources: dict[str, BatchSource] | None = None,
        device: torch.device | str = "cpu",
        log_dir: str | os.PathLike | None = None,
        printer: Callable[[str], None] | None = print,
        peak_flops_per_s: float | None = None,
    ) -> None:
        for name, src in {"train_source": train_source, **(val_sources or {})}.items():
            if not isinstance(src, BatchSource):
                raise TypeError(f"{name} is a {type(src).__name__}, not a BatchSource: it needs next_batch(), "
                                "state_dict() and load_state_dict()")
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.train_source = train_source
        self.val_sources = dict(val_sources or {})
        self.precision = resolve_precision(cfg.precision, self.device)
        self.printer = printer
        self.log_dir = log_dir
        if cfg.seed is not None:
            _seed(cfg.seed)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.step = 0  # optimizer steps taken
        self.tokens_seen = 0
        self.elapsed = 0.0  # seconds spent in training steps (eval and checkpoints excluded)
        self.history: list[dict] = []  # one dict per logged or evaluated step
        self.losses: list[float] = []  # the train loss of every step
        self._peak = peak_flops_per_s
        self._fpt: float | None = None  # FLOPs per token, known after the first batch
        self._writer = None
        self._window = _Window()
        self._grad_norm: torch.Tensor | None = None

    # ------------------------------------------------------------------ the loop

    def run(self, until_step: int | None = None,
            on_eval: Callable[[list[dict]], None] | None = None) -> list[dict]:
        """Train until step `until_step` (default max_steps); returns the history (list of dicts)."""
        cfg = self.cfg
        end = cfg.max_steps if until_step is None else min(until_step, cfg.max_steps)
        self.model.train()
        if self.step == 0 and cfg.eval_every and self.val_sources:
            self._eval_and_record(on_eval)
        t0 = time.perf_counter()
        while self.step < end:
            last = self.step + 1 == end
            do_log = (self.step + 1) % cfg.log_every == 0 or last
            self._train_step(want_norm=do_log)
            do_eval = bool(cfg.eval_every and self.val_sources) and (
                self.step % cfg.eval_every == 0 or self.step == cfg.max_steps)
            do_save = bool(cfg.checkpoint_every) and (self.step % cfg.checkpoint_every == 0 or last)
            if do_log or do_eval or do_save:
                sync(self.device)
                self._window.seconds += time.perf_counter() - t0
                if do_log:
                    self._log()
                if do_eval:
                    self._eval_and_record(on_eval)
                if do_save:
                    self.save_checkpoint(Path(cfg.checkpoint_dir) / "last")
                t0 = time.perf_counter()  # evaluation and checkpoints are not training time
        if self._writer is not None:
            self._writer.flush()
        return self.history

    def _train_step(self, want_norm: bool = True) -> None:
        """One optimizer step over grad_accum micro-batches; the loss stays on the device."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for _ in range(cfg.grad_accum):
            x, y = self.train_source.next_batch()  # (B, T), (B, T)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast(self.precision, self.device):
                _, loss = self.forward(x, y)
            loss = loss / cfg.grad_accum  # the mean over all micro-batches, once summed
            total += loss.detach()
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            self._window.tokens += x.numel()
            self.tokens_seen += x.numel()
            if self._fpt is None:
                self._fpt = model_flops_per_token(self.model, x.shape[1]) or 0.0
        self._grad_norm = self._clip(want_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._window.losses.append(total)
        self.step += 1

    def _clip(self, want_norm: bool) -> torch.Tensor | None:
        """Clip the global grad norm to cfg.grad_clip; returns the pre-clip norm (a device tensor)."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip > 0:
            return clip_grad_norm(self.model, self.cfg.grad_clip)
        return grad_norm(self.model) if want_norm else None  # without clipping: only for log lines

    def _log(self) -> None:
        """Read the window's losses (one device sync), print a progress line, record it."""
        w, self._window = self._window, _Window()
        losses = torch.stack(w.losses).tolist()
        self.losses.extend(losses)
        self.elapsed += w.seconds
        tok_s = w.tokens / max(w.seconds, 1e-9)
        mfu = self._mfu(tok_s)
        lr = lr_at(self.step - 1, self.cfg)
        rec = {"step": self.step, "loss": sum(losses) / len(losses), "lr": lr, "tok_per_s": tok_s,
               "mfu": mfu, "time": self.elapsed, "tokens": self.tokens_seen}
        if self._grad_norm is not None:
            rec["grad_norm"] = float(self._grad_norm)
        self._record(rec)
        if self.printer:
            self.printer(progress_line(self.step, self.cfg.max_steps, rec["loss"], lr, tok_s, mfu,
                                       self.elapsed))

    def _mfu(self, tok_s: float) -> float | None:
        """Model FLOPs utilization of the last window, or None when FLOPs per token are unknown."""
        if not self._fpt:
            return None
        if self._peak is None:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
            self._peak = peak_flops(self.device, dtype)[0]
        return tok_s * self._fpt / self._peak

    def _record(self, rec: dict) -> None:
        """Add to history (merging with a record of the same step) and to TensorBoard."""
        if self.history and self.history[-1]["step"] == rec["step"]:
            self.history[-1].update(rec)
        else:
            self.history.append(rec)
        writer = self._tb()
        if writer is not None:
            for key, value in rec.items():
                if key == "val":
                    for name, v in value.items():
                        writer.add_scalar(f"val/{name}", v, rec["step"])
                elif key != "step" and value is not None:
                    writer.add_scalar(f"train/{key}", value, rec["step"])

    def _tb(self):
        """The TensorBoard SummaryWriter, made on first use; None without a log_dir."""
        if self.log_dir is None:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, batches: int | None = None) -> dict[str, float]:
        """Mean loss on each validation source over `batches` batches (its position is restored after)."""
        n = batches or self.cfg.eval_batches
        was_training = self.model.training
        self.model.eval()
        out = {}
        for name, source in self.val_sources.items():
            state = copy.deepcopy(source.state_dict())
            total = torch.zeros((), device=self.device)
            for _ in range(n):
                x, y = source.next_batch()
                with autocast(self.precision, self.device):
                    _, loss = self.forward(x.to(self.device), y.to(self.device))
                total += loss.float()
            source.load_state_dict(state)
            out[name] = (total / n).item()
        self.model.train(was_training)
        return out

    def _eval_and_record(self, on_eval: Callable[[list[dict]], None] | None) -> None:
        val = self.evaluate()
        self._record({"step": self.step, "val": val})
        if self.printer:
            self.printer(f"step {self.step}/{self.cfg.max_steps} | val "
                         + " | ".join(f"{k} {v:.3f}" for k, v in val.items()))
        if on_eval is not None:
            on_eval(self.history)

    # ------------------------------------------------------------------ memory

    def memory_report(self) -> dict[str, int]:
        """Bytes held by parameters, gradients and optimizer state, and their total."""
        params = {id(p): p for p in self.model.parameters()}.values()
        rep = {
            "params": sum(p.numel() * p.element_size() for p in params),
            "grads": sum(p.numel() * p.element_size() for p in params if p.requires_grad),
            "optimizer": sum(t.numel() * t.element_size() for s in self.optimizer.state.values()
                             for t in s.values() if torch.is_tensor(t)),
        }
        rep["total"] = sum(rep.values())
        return rep

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint folder atomically (the previous one stays until the new one is complete)."""
        blobs = self._checkpoint_blobs()
        return write_checkpoint(Path(path), blobs)

    def load_checkpoint(self, path: str | os.PathLike, strict: bool = True) -> int:
        """Restore model, optimizer, step, RNG states and data position; returns the step."""
        blobs = read_checkpoint(Path(path))
        meta = json.loads(blobs[TRAINER_FILE])
        check_model_fits(self.model, meta["model"], Path(path), strict)
        self._load_model(blobs, meta)
        self._load_optimizer(blobs)
        self.step, self.tokens_seen, self.elapsed = meta["step"], meta["tokens_seen"], meta["elapsed"]
        self.history, self.losses = meta["history"], meta["losses"]
        if self.scaler is not None and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.train_source.load_state_dict(meta["data"])
        set_rng_state(meta["rng"])
        self._window = _Window()
        return self.step

    def _checkpoint_blobs(self) -> dict[str, bytes]:
        from safetensors.torch import save as st_save

        tensors, aliases = dedupe_tensors(self.model.state_dict())
        opt_tensors, opt_meta = flatten_optimizer(self.optimizer.state_dict())
        pending = self._window.losses  # steps since the last progress line: not yet read
        losses = self.losses + (torch.stack(pending).tolist() if pending else [])
        meta = {
            "format": FORMAT, "version": VERSION, "step": self.step, "tokens_seen": self.tokens_seen,
            "elapsed": self.elapsed + self._window.seconds, "precision": self.precision,
            "train_config": _jsonable(asdict(self.cfg)), "model": model_signature(self.model, aliases),
            "data": self.train_source.state_dict(), "rng": get_rng_state(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "history": self.history, "losses": losses,
        }
        return {
            MODEL_FILE: st_save(tensors),
            OPTIM_FILE: st_save(opt_tensors),
            OPTIM_META: _json_bytes(opt_meta),
            TRAINER_FILE: _json_bytes(meta, what="the trainer state (is the data source's state_dict JSON?)"),
        }

    def _load_model(self, blobs: dict[str, bytes], meta: dict) -> None:
        from safetensors.torch import load as st_load

        tensors = st_load(blobs[MODEL_FILE])
        for alias, source in meta["model"]["aliases"].items():
            tensors[alias] = tensors[source]
        self.model.load_state_dict(tensors, strict=True)

    def _load_optimizer(self, blobs: dict[str, bytes]) -> None:
        from safetensors.torch import load as st_load

        state = unflatten_optimizer(st_load(blobs[OPTIM_FILE]), json.loads(blobs[OPTIM_META]))
        for saved, live in zip(state["param_groups"], self.optimizer.param_groups, strict=True):
            for key in ("fused", "foreach"):  # kernel choices belong to this machine, not the checkpoint
                if key in live:
                    saved[key] = live[key]
        self.optimizer.load_state_dict(state)


def grad_norm(model: nn.Module) -> torch.Tensor:
    """The global L2 norm of all gradients (a device tensor, no sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    # one multi-tensor kernel for all per-tensor norms (what torch.nn.utils uses inside)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale all gradients so their global norm is at most max_norm; returns the pre-clip norm.

    The same arithmetic as torch.nn.utils.clip_grad_norm_ (coefficient max_norm / (norm + 1e-6),
    capped at 1), without its per-call grouping, which took about 3 ms a step on a 0.9M-parameter
    GPT on this CPU, against 0.9 ms here: small models feel that.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = grad_norm(model)
    if grads:
        torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return norm


# --------------------------------------------------------------------------- checkpoint parts


def dedupe_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors for safetensors (tied weights stored once) and {alias: stored name} for the ties."""
    out, aliases, seen = {}, {}, {}
    for name, t in state.items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride(), t.device)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        out[name] = t.detach().contiguous().cpu()
    return out, aliases


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer state_dict -> ({'state.<i>.<key>': tensor}, JSON-able rest)."""
    tensors, rest = {}, {"param_groups": _jsonable(state["param_groups"]), "state": {}}
    for idx, buffers in state["state"].items():
        for key, value in buffers.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                rest["state"].setdefault(str(idx), {})[key] = value
    return tensors, rest


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """The inverse of flatten_optimizer: a state_dict torch's optimizer can load."""
    state: dict[int, dict] = {int(i): dict(v) for i, v in rest["state"].items()}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    return {"state": state, "param_groups": rest["param_groups"]}


def model_signature(model: nn.Module, aliases: dict[str, str]) -> dict:
    """What a checkpoint must match: the model's class, config (if any) and every tensor's shape."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    elif dataclasses.is_dataclass(cfg):
        cfg = asdict(cfg)
    elif cfg is not None:
        cfg = None
    return {
        "class": type(model).__name__,
        "config": _jsonable(cfg),
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "aliases": aliases,
    }


def check_model_fits(model: nn.Module, saved: dict, path: Path, strict: bool = True) -> None:
    """Refuse a checkpoint made for another model (other class, config or tensor shapes)."""
    live = model_signature(model, {})
    fix = ("Build the model with the checkpoint's config (see checkpoint_info(path)['model']) "
           "or point checkpoint_dir at a fresh folder to start over.")
    if saved["class"] != live["class"]:
        raise CheckpointError(f"checkpoint {path} holds a {saved['class']}, not a {live['class']}. {fix}")
    old, new = saved["config"] or {}, live["config"] or {}
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    config_diff = ", ".join(f"{k}={old.get(k)!r} (this model: {new.get(k)!r})" for k in keys)
    if saved["shapes"] != live["shapes"]:
        diff = sorted(set(saved["shapes"]) ^ set(live["shapes"]))
        diff += [k for k in saved["shapes"] if saved["shapes"][k] != live["shapes"].get(k, saved["shapes"][k])]
        first = diff[0]
        raise CheckpointError(
            f"checkpoint {path} does not fit this model"
            + (f": it was saved with {config_diff}" if config_diff else "")
            + f"; tensor {first!r} is {saved['shapes'].get(first)} in the checkpoint but "
            f"{live['shapes'].get(first)} here ({len(diff)} tensors differ). {fix}")
    if strict and keys:
        raise CheckpointError(f"checkpoint {path} was saved with another model config: {config_diff}. "
                              f"{fix} (load_checkpoint(path, strict=False) accepts a config that "
                              "differs only where the shapes agree, e.g. dropout.)")


def last_checkpoint(checkpoint_dir: str | os.PathLike | None) -> Path | None:
    """checkpoint_dir/last if a complete checkpoint is there (what run() saves), else None."""
    if checkpoint_dir is None:
        return None
    path = Path(checkpoint_dir) / "last"
    _recover(path)
    return path if (path / MANIFEST).exists() else None


def checkpoint_info(path: str | os.PathLike) -> dict:
    """The verified trainer.json of a checkpoint: step, train_config, model class/config, history."""
    return json.loads(read_checkpoint(Path(path))[TRAINER_FILE])


# --------------------------------------------------------------------------- RNG states


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def get_rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states as JSON-able values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore what get_rng_state() returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- atomic folders


def _json_bytes(obj: Any, what: str = "checkpoint metadata") -> bytes:
    try:
        return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n").encode("utf-8")
    except TypeError as e:
        raise TypeError(f"cannot write {what} as JSON: {e}") from e


def _jsonable(obj: Any) -> Any:
    """Tuples -> lists, recursively (what JSON would give back)."""
    return json.loads(json.dumps(obj))


def _fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(final: Path, blobs: dict[str, bytes]) -> Path:
    """Write files + manifest into a temp folder beside `final`, then swap it in by two renames."""
    final.parent.mkdir(parents=True, exist_ok=True)
    stamp = f"{time.time_ns()}"
    tmp = final.parent / f".{final.name}.tmp-{stamp}"
    tmp.mkdir()
    try:
        for name, data in blobs.items():
            write_bytes_atomic(tmp / name, data)  # fsyncs each file
        manifest = {"format": FORMAT, "version": VERSION,
                    "files": {n: {"sha256": sha256_bytes(b), "bytes": len(b)} for n, b in sorted(blobs.items())}}
        write_bytes_atomic(tmp / MANIFEST, _json_bytes(manifest))  # last: its presence means complete
        _fsync_dir(tmp)
        old = final.parent / f".{final.name}.old-{stamp}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)  # a crash between the renames is mended by _recover()
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _recover(final: Path) -> None:
    """If a save died between its two renames, put the previous checkpoint back."""
    if final.exists() or not final.parent.exists():
        return
    olds = sorted(final.parent.glob(f".{final.name}.old-*"))
    if olds and (olds[-1] / MANIFEST).exists():
        olds[-1].rename(final)


def read_checkpoint(path: Path) -> dict[str, bytes]:
    """Every file of a checkpoint folder, verified against its manifest's sha256."""
    _recover(path)
    redo = "Delete this folder and resume from an earlier checkpoint, or start training from scratch."
    mpath = path / MANIFEST
    if not mpath.exists():
        raise CheckpointError(f"no checkpoint at {path} (no {MANIFEST}): save one with "
                              "trainer.save_checkpoint(path), or train from scratch.")
    try:
        manifest = json.loads(mpath.read_text("utf-8"))
        files = manifest["files"]
        assert manifest["format"] == FORMAT
    except (ValueError, KeyError, AssertionError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is unreadable or not a training "
                              f"checkpoint ({e!r}). {redo}") from e
    blobs = {}
    for name, meta in files.items():
        fpath = path / name
        if not fpath.exists():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing. {redo}")
        data = fpath.read_bytes()
        if sha256_bytes(data) != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint {path}: {name} does not match its manifest (sha256 differs), so it was "
                f"changed or corrupted after it was saved. Refusing to load it. {redo}")
        blobs[name] = data
    missing = {MODEL_FILE, OPTIM_FILE, OPTIM_META, TRAINER_FILE} - set(blobs)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}. {redo}")
    return blobs


# --------------------------------------------------------------------------- throughput


def minimal_loop(model: nn.Module, source: BatchSource, steps: int, cfg: TrainConfig,
                 device: torch.device | str = "cpu") -> float:
    """Tokens/s of a bare loop (forward, backward, AdamW step, same precision) over `steps` steps."""
    device = torch.device(device)
    model.to(device).train()
    precision = resolve_precision(cfg.precision, device)
    opt = make_optimizer(model, cfg, device)
    tokens, last = 0, None
    t0 = time.perf_counter()
    for _ in range(steps):
        for _ in range(cfg.grad_accum):
            x, y = source.next_batch()
            x, y = x.to(device), y.to(device)
            with autocast(precision, device):
                _, loss = model(x, y)
            (loss / cfg.grad_accum).backward()
            tokens += x.numel()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = loss
    last.item()  # wait for the device
    return tokens / (time.perf_counter() - t0)


def compare_throughput(make_model: Callable[[], nn.Module], make_source: Callable[[], BatchSource],
                       cfg: TrainConfig, device: torch.device | str = "cpu", steps: int = 20,
                       warmup: int = 3, repeats: int = 2) -> dict[str, float]:
    """Tokens/s of Trainer.run vs minimal_loop on fresh copies of the same model (best of `repeats`)."""
    run_cfg = dataclasses.replace(cfg, max_steps=warmup + steps, eval_every=0, checkpoint_every=0,
                                  log_every=warmup + steps, warmup_steps=0, seed=None)
    best_trainer, best_minimal = 0.0, 0.0
    for _ in range(repeats):
        trainer = Trainer(make_model(), run_cfg, make_source(), device=device, printer=None,
                          peak_flops_per_s=1.0)
        trainer.run(until_step=warmup)
        trainer.elapsed, trainer.tokens_seen = 0.0, 0
        trainer.run()
        best_trainer = max(best_trainer, trainer.history[-1]["tok_per_s"])
        model, source = make_model(), make_source()
        minimal_loop(model, source, warmup, run_cfg, device)
        best_minimal = max(best_minimal, minimal_loop(model, source, steps, run_cfg, device))
    return {"trainer_tok_per_s": best_trainer, "minimal_tok_per_s": best_minimal,
            "ratio": best_trainer / best_minimal}
