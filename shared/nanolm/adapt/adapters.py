"""Adapters as files: a LoRA you train here opens in Hugging Face's PEFT, and a PEFT adapter opens here.

A LoRA adapter is small (a few MB for a model of hundreds of MB), so it is shared without its base model.
PEFT, the library most of the ecosystem uses, stores one as a folder of two files:

    adapter_model.safetensors   A, B (and DoRA's magnitude) under the names of the Hugging Face modules,
                                e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
    adapter_config.json         peft_type "LORA", r, lora_alpha, target_modules, use_rslora, use_dora, ...

`to_peft` and `from_peft` translate between those and our LoRA'd Llama (our fused wqkv and gate_up hold
one adapter per row block; see nanolm.adapt.lora). `save` writes the two files into a course artifact
(adapters/<name>), so `PeftModel.from_pretrained(hf_model, artifact.path)` opens it as it is, and the
manifest records which base model the adapter belongs to, with the sha256 of that base's weights: an
adapter only means something on top of the exact weights it was trained on, so `load` refuses any other.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..core import artifacts
from .lora import (
    HF_MODULES,
    TARGETS,
    apply_lora,
    base_tensors,
    load_lora_state,
    lora_layers,
    lora_state,
    ours_name,
    peft_name,
)

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
KIND = "lora-adapter"
# adapter_config.json settings our LoRA has no counterpart for, with the only value we accept
_PLAIN = {"bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "layers_to_transform": None,
          "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}, "lora_bias": False,
          "target_parameters": None, "exclude_modules": None, "trainable_token_indices": None}


def lora_settings(model: nn.Module) -> dict:
    """The settings shared by all of a model's adapters: r, alpha, targets, dropout, rslora, use_dora."""
    layers = lora_layers(model)
    adapters = [a for layer in layers.values() for a in layer.adapters.values()]
    if not adapters:
        raise ValueError("this model has no LoRA adapters: call nanolm.adapt.lora.apply_lora first")
    found = {(a.r, a.alpha, a.rslora, a.use_dora, getattr(a.dropout, "p", 0.0)) for a in adapters}
    if len(found) > 1:
        raise ValueError(f"adapters with different settings (r, alpha, rslora, dora, dropout) {sorted(found)} "
                         "cannot be written as one PEFT config")
    r, alpha, rslora, dora, dropout = found.pop()
    targets = tuple(t for t in TARGETS if any(t in layer.adapters for layer in layers.values()))
    return dict(r=r, alpha=alpha, targets=targets, dropout=dropout, rslora=rslora, use_dora=dora)


def to_peft(model: nn.Module, *, base_model_name_or_path: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Our adapters in PEFT's format: (the tensors of adapter_model.safetensors, adapter_config.json as a dict)."""
    s = lora_settings(model)
    state = {peft_name(k, adapter=None): v.detach().cpu().contiguous() for k, v in lora_state(model).items()}
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": s["r"], "lora_alpha": s["alpha"], "lora_dropout": s["dropout"], "use_rslora": s["rslora"],
        "use_dora": s["use_dora"], "target_modules": sorted(HF_MODULES[t].split(".")[1] for t in s["targets"]),
        "init_lora_weights": True, "inference_mode": True, "revision": None, **_PLAIN,
    }
    return state, config


def _targets_from_peft(config: dict) -> tuple[str, ...]:
    """PEFT's target_modules (q_proj, ...) -> our target names; anything we cannot map is refused."""
    if config.get("peft_type") != "LORA":
        raise ValueError(f"not a LoRA adapter: peft_type is {config.get('peft_type')!r}")
    off = {k: config[k] for k, plain in _PLAIN.items() if config.get(k, plain) not in (plain, None, [], {})}
    if off:
        raise ValueError(f"this PEFT adapter uses settings our LoRA does not have: {off}")
    modules = config.get("target_modules")
    ours = {v.split(".")[1]: k for k, v in HF_MODULES.items()}
    if isinstance(modules, str) or not modules or set(modules) - set(ours):
        raise ValueError(f"target_modules must be a list of Llama projections {sorted(ours)}, got {modules!r}")
    return tuple(t for t in TARGETS if HF_MODULES[t].split(".")[1] in modules)


def from_peft(model: nn.Module, state: dict[str, torch.Tensor], config: dict) -> nn.Module:
    """Load a PEFT LoRA adapter (its safetensors tensors and adapter_config.json) into our Llama, in place.

    A model without adapters gets them first (apply_lora with the adapter's settings); one that has them
    must match the adapter's targets and shapes.
    """
    targets = _targets_from_peft(config)
    if not lora_layers(model):
        apply_lora(model, r=config["r"], alpha=config["lora_alpha"], targets=targets,
                   dropout=config.get("lora_dropout", 0.0), rslora=config.get("use_rslora", False),
                   use_dora=config.get("use_dora", False))
    else:
        s = lora_settings(model)
        want = dict(targets=targets, alpha=config["lora_alpha"], rslora=config.get("use_rslora", False))
        if differ := {k: (v, s[k]) for k, v in want.items() if s[k] != v}:
            raise ValueError(f"the adapter and the model's LoRA differ in {differ} (adapter, model): "
                             "load it into a model without adapters and its own settings are applied")
    load_lora_state(model, {ours_name(k): v for k, v in state.items()})
    return model


def base_sha256(model: nn.Module) -> str:
    """sha256 of the frozen base weights (as float32, by name): which base model an adapter belongs to."""
    if any(layer.merged for layer in lora_layers(model).values()):
        raise RuntimeError("the adapters are merged into the weights: unmerge_all(model) first")
    h = hashlib.sha256()
    for name, t in sorted(base_tensors(model).items()):
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def peft_files(model: nn.Module, *, kind: str, base: str,
               base_model_name_or_path: str | None = None) -> tuple[dict, dict]:
    """(manifest config, files) of a model's adapter: PEFT's two files, and a config naming kind and base."""
    from safetensors.torch import save as st_save

    state, peft_config = to_peft(model, base_model_name_or_path=base_model_name_or_path)
    config = {"kind": kind, "base": base, "base_sha256": base_sha256(model), **lora_settings(model)}
    return config, {WEIGHTS: st_save(state, metadata={"format": "pt"}), CONFIG: peft_config}


def check_base(art: artifacts.Artifact, model: nn.Module, kind: str) -> None:
    """Refuse an artifact of another kind, or one made for other base weights than the model's."""
    if art.config.get("kind") != kind:
        raise artifacts.ArtifactError(f"artifact {art.name!r} is not a {kind} (kind {art.config.get('kind')!r}); "
                                      f"re-run {artifacts.producer(art.name)}")
    want, got = art.config["base_sha256"], base_sha256(model)
    if want != got:
        raise ValueError(
            f"{art.name!r} was trained on base model {art.config['base']!r} (weights sha256 {want[:12]}...), "
            f"but the model passed has other weights (sha256 {got[:12]}...). Load {art.config['base']!r} "
            "(unmerged, without other adapters merged in) and pass that model.")


def save(name: str, model: nn.Module, *, notebook: str, profile: str, base: str, metrics: dict | None = None,
         base_model_name_or_path: str | None = None) -> artifacts.Artifact:
    """Save a model's adapters as artifact adapters/<name>: PEFT's two files + a manifest naming the base."""
    config, files = peft_files(model, kind=KIND, base=base, base_model_name_or_path=base_model_name_or_path)
    return artifacts.save(f"adapters/{name}", notebook=notebook, profile=profile, config=config,
                          metrics=metrics, files=files)


def load(name: str, model: nn.Module, *, profile: str) -> tuple[nn.Module, artifacts.Artifact]:
    """Load artifact adapters/<name> into our Llama (sha256-verified, and only onto the base it was made for)."""
    from safetensors.torch import load as st_load

    art = artifacts.load(f"adapters/{name}", profile=profile)
    missing = [fn for fn in (WEIGHTS, CONFIG) if fn not in art.files()]
    if art.config.get("kind") != KIND or missing:
        raise artifacts.ArtifactError(
            f"artifact {art.name!r} holds no LoRA adapter (missing {missing}, kind {art.config.get('kind')!r}); "
            f"save one with nanolm.adapt.adapters.save, or re-run {artifacts.producer(art.name)}")
    check_base(art, model, KIND)
    from_peft(model, st_load(art.bytes(WEIGHTS)), art.json(CONFIG))
    return model, art
