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
  fp32 elsewhere (`resolve_precision`). Measured for notebook 08's GPT step: on an AMD EPYC (2 threads)
  bf16 matmuls ran at twice the fp32 rate, yet the bf16-autocast step took 62 ms vs 60 ms in fp32 (the
  casts eat the gain); on an Intel Xeon (1 thread) bf16 matmuls ran at half the fp32 rate and the step
  took 182 vs 97 ms. bf16 also rounds more, so "auto" keeps fp32 on CPU.
- The hot path never waits for the device: losses stay on it as tensors and are read (.tolist(),
  one sync) only at log steps, checkpoints and the end of a `run`; evaluation, logging and checkpoints
  happen between steps. Progress lines come every `log_every` steps and at max_steps, however the run
  is cut into `run(until_step=...)` calls, and each averages the steps since the previous line.
- Every `eval_every` steps each named validation source gets `eval_batches` batches; its state is
  restored afterwards, so every evaluation sees the same batches and the curves are comparable.
- A checkpoint is a folder without pickle: model.safetensors, optimizer.safetensors (the optimizer's
  tensors by name) + optimizer.json (the rest), trainer.json (step, config, data position, RNG
  states, history, the steps since the last progress line) and manifest.json (sha256 of each file).
  It is written into a temporary folder, fsynced, and swapped in by renames, so a crash mid-save
  leaves the previous checkpoint loadable. Loading checks every hash, the model's shapes and config.
A run stopped at step k and resumed from its checkpoint gives bit-identical losses and the same
history (step, loss, lr, tokens, grad norm, validation; not the timings). Tests pin both.

Use:
    cfg = TrainConfig(max_steps=2000, lr=6e-4, eval_every=100, checkpoint_every=500, checkpoint_dir="run")
    trainer = Trainer(model, cfg, train_source, {"web": web_val, "code": code_val}, device, log_dir="runs/x")
    if (ck := last_checkpoint(cfg.checkpoint_dir)):
        trainer.load_checkpoint(ck)  # exact resume
    history = trainer.run(on_eval=lambda history: ...)  # prints progress lines; the callback can plot
    compare_throughput(make_model, make_source, cfg)  # tokens/s of the Trainer vs a bare loop
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    FORMAT,
    MODEL_FILE,
    OPTIM_FILE,
    OPTIM_META,
    TRAINER_FILE,
    VERSION,
    _json_bytes,
    _jsonable,
    _seed,
    check_model_fits,
    dedupe_tensors,
    flatten_optimizer,
    get_rng_state,
    model_signature,
    read_checkpoint,
    set_rng_state,
    unflatten_optimizer,
    write_checkpoint,
)
from .config import BatchSource, TrainConfig, autocast, resolve_precision
from .flops import model_flops_per_token, peak_flops, sync
from .optimizer import clip_grad_norm, grad_norm, make_optimizer
from .schedules import lr_at

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
    """What happened since the last progress line: its losses (still on the device, or read), tokens, seconds."""

    pending: list[torch.Tensor] = field(default_factory=list)  # losses not yet read from the device
    losses: list[float] = field(default_factory=list)  # losses read (at a checkpoint or the end of a run)
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
            last = self.step + 1 == end  # the end of this call (a progress line only if it is max_steps)
            do_log = (self.step + 1) % cfg.log_every == 0 or self.step + 1 == cfg.max_steps
            self._train_step(want_norm=do_log)
            do_eval = bool(cfg.eval_every and self.val_sources) and (
                self.step % cfg.eval_every == 0 or self.step == cfg.max_steps)
            do_save = bool(cfg.checkpoint_every) and (self.step % cfg.checkpoint_every == 0 or last)
            if do_log or do_eval or do_save or last:
                sync(self.device)
                self._window.seconds += time.perf_counter() - t0
                if do_log:
                    self._log()
                if do_eval:
                    self._eval_and_record(on_eval)
                if do_save:
                    self.save_checkpoint(Path(cfg.checkpoint_dir) / "last")
                t0 = time.perf_counter()  # evaluation and checkpoints are not training time
        self._read_losses()  # every step's loss is in self.losses when run returns
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
        self._window.pending.append(total)
        self.step += 1

    def _clip(self, want_norm: bool) -> torch.Tensor | None:
        """Clip the global grad norm to cfg.grad_clip; returns the pre-clip norm (a device tensor)."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip > 0:
            return clip_grad_norm(self.model, self.cfg.grad_clip)
        return grad_norm(self.model) if want_norm else None  # without clipping: only for log lines

    def _read_losses(self) -> None:
        """Copy the window's pending losses from the device (one sync) into the window and self.losses."""
        w = self._window
        if w.pending:
            values = torch.stack(w.pending).tolist()
            w.pending = []
            w.losses.extend(values)
            self.losses.extend(values)

    def _log(self) -> None:
        """Read the window's losses, print a progress line of their mean, record it; start a new window."""
        self._read_losses()
        w, self._window = self._window, _Window()
        losses = w.losses
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
        window = meta.get("window") or {}  # older checkpoints have none: the next line averages fewer steps
        self._window = _Window(losses=list(window.get("losses", [])), tokens=window.get("tokens", 0),
                               seconds=window.get("seconds", 0.0))
        self.elapsed -= self._window.seconds  # "elapsed" counts the window too; it is added at its line
        return self.step

    def _checkpoint_blobs(self) -> dict[str, bytes]:
        from safetensors.torch import save as st_save

        tensors, aliases = dedupe_tensors(self.model.state_dict())
        opt_tensors, opt_meta = flatten_optimizer(self.optimizer.state_dict())
        self._read_losses()
        w = self._window  # the steps since the last progress line: their line comes after the resume
        meta = {
            "format": FORMAT, "version": VERSION, "step": self.step, "tokens_seen": self.tokens_seen,
            "elapsed": self.elapsed + w.seconds, "precision": self.precision,
            "train_config": _jsonable(asdict(self.cfg)), "model": model_signature(self.model, aliases),
            "data": self.train_source.state_dict(), "rng": get_rng_state(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "history": self.history, "losses": self.losses,
            "window": {"losses": w.losses, "tokens": w.tokens, "seconds": w.seconds},
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
