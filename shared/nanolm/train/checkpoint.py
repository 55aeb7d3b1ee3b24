"""Training checkpoints without pickle: a folder of safetensors and JSON, sha256-verified, swapped in atomically.

model.safetensors (tied weights stored once), optimizer.safetensors (the optimizer's tensors by name) +
optimizer.json (the rest), trainer.json (step, config, data position, RNG states, history) and
manifest.json (sha256 of each file). Loading checks every hash and the model's shapes and config.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.files import (
    check_plain_name,
    read_verified,
    recover_folder,
    sha256_bytes,
    write_folder_atomic,
)

FORMAT = "nanolm-train-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE, OPTIM_FILE, OPTIM_META, TRAINER_FILE = (
    "model.safetensors", "optimizer.safetensors", "optimizer.json", "trainer.json",
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or does not fit the model it is loaded into."""


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


def write_checkpoint(final: Path, blobs: dict[str, bytes]) -> Path:
    """Write files + manifest as one folder, swapped in atomically (nanolm.core.files.write_folder_atomic)."""
    manifest = {"format": FORMAT, "version": VERSION,
                "files": {n: {"sha256": sha256_bytes(b), "bytes": len(b)} for n, b in sorted(blobs.items())}}
    return write_folder_atomic(final, {**blobs, MANIFEST: _json_bytes(manifest)}, marker=MANIFEST)


def _recover(final: Path) -> None:
    recover_folder(final, MANIFEST)


_REDO = "Delete this folder and resume from an earlier checkpoint, or start training from scratch."


def read_checkpoint(path: Path) -> dict[str, bytes]:
    """Every file of a checkpoint folder, verified against its manifest's sha256."""
    _recover(path)
    blobs = {}
    for name, meta in _read_manifest(path)["files"].items():
        try:
            blobs[name] = read_verified(path, name, meta)
        except FileNotFoundError as e:
            raise CheckpointError(f"checkpoint {path} is incomplete: {e}. {_REDO}") from e
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path}: {e}, so it was changed or corrupted after it was "
                                  f"saved. Refusing to load it. {_REDO}") from e
    missing = {MODEL_FILE, OPTIM_FILE, OPTIM_META, TRAINER_FILE} - set(blobs)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}. {_REDO}")
    return blobs


def _read_manifest(path: Path) -> dict:
    """The checkpoint's manifest, checked: its format and version, and plain file names with sha256 and size."""
    mpath = path / MANIFEST
    if not mpath.exists():
        raise CheckpointError(f"no checkpoint at {path} (no {MANIFEST}): save one with "
                              "trainer.save_checkpoint(path), or train from scratch.")
    try:
        manifest = json.loads(mpath.read_text("utf-8"))
        fmt, version, files = manifest["format"], manifest["version"], manifest["files"]
        bad = [n for n, m in files.items() if not (isinstance(m.get("sha256"), str) and isinstance(m.get("bytes"), int))]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is unreadable or not a training "
                              f"checkpoint ({e!r}). {_REDO}") from e
    if bad:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is unreadable: {bad} lack a sha256 or size. {_REDO}")
    if fmt != FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint: its {MANIFEST} says format {fmt!r}, "
                              f"not {FORMAT!r}. {_REDO}")
    if version != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version!r}; this nanolm reads version "
                              f"{VERSION}. Use the nanolm that wrote it, or start training from scratch.")
    for name in files:  # every listed name must stay inside the folder, whatever its hash says
        try:
            check_plain_name(name, "checkpoint file")
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path}: {e}. Refusing to load it. {_REDO}") from e
    return manifest
