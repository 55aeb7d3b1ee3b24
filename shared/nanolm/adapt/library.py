"""An adapter library: several LoRA adapters for one base model, and a router that picks one per prompt.

Learning task after task into one adapter overwrites the old tasks (forgetting). Keeping one adapter per task
cannot forget: an adapter never trained again stays as it was. The price is choosing which adapter to use,
and when the prompt does not say, a router (nanolm.adapt.router) guesses from the base model's reading of
it. The router also knows a class "base": prompts that belong to no adapter (everyday text) run on the base
model, so general ability is exactly the base model's wherever the router says "base".

    prompt --base model, no adapter--> features --router--> "facts-a" --use(model, lib, "facts-a")--> run

All adapters of a library share the base and the LoRA settings (r, alpha, targets), so the model carries one
set of LoRA layers and `use` swaps the tensors in it: load_lora_state for an adapter, a zero B for "base"
(the adapter then adds exactly nothing). Swapping copies the adapter's tensors (a few MB), no reloading.

One artifact (`adapter-library` by default) holds it all, sha256-verified by nanolm.core.artifacts:

    <adapter>.adapter_model.safetensors   each adapter in PEFT's format (names as adapters.to_peft writes)
    <adapter>.adapter_config.json         and its PEFT config
    router.safetensors                    the router's mean and centroids
    manifest.json                         base name and base_sha256, adapter names, router classes, settings

`load` refuses a library made for other base weights (base_sha256) as adapters.load does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core import artifacts
from ..eval import scorer
from ..eval.complete import Completion, complete
from .adapters import base_sha256, check_base, from_peft, lora_settings, to_peft
from .learn import fresh_state
from .lora import load_lora_state, lora_layers, lora_state, ours_name
from .router import Router, prompt_features

KIND = "adapter-library"
BASE = "base"  # the router's class for prompts that go to no adapter
ROUTER = "router.safetensors"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass
class Library:
    """Named adapter tensors (our lora_state names) for one base, their shared settings, and a router."""

    base: str
    base_sha256: str
    settings: dict  # r, alpha, targets, dropout, rslora, use_dora (adapters.lora_settings)
    adapters: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    router: Router | None = None

    @property
    def names(self) -> list[str]:
        """Everything `use` accepts: "base" and the adapters."""
        return [BASE, *self.adapters]


def build(model: nn.Module, adapters: Mapping[str, Mapping[str, torch.Tensor]], *, base: str,
          router: Router | None = None) -> Library:
    """A library of adapter states (from learn() or lora_state) that all fit the model's LoRA layers."""
    if not lora_layers(model):
        raise ValueError("the model has no LoRA layers: apply_lora (or learn) before building a library")
    own = lora_state(model)
    for name, state in adapters.items():
        if not NAME.match(name) or name == BASE:
            raise ValueError(f"adapter name {name!r}: use lowercase letters, digits, '-' and '_', not {BASE!r}")
        if set(state) != set(own) or any(state[k].shape != v.shape for k, v in own.items()):
            raise ValueError(f"adapter {name!r} does not fit the model's LoRA layers (other targets or rank)")
    lib = Library(base, base_sha256(model), lora_settings(model),
                  {k: {n: t.detach().cpu().clone() for n, t in v.items()} for k, v in adapters.items()})
    if router is not None:
        set_router(lib, router)
    return lib


def set_router(library: Library, router: Router) -> None:
    """Attach a router; each of its classes must be "base" or one of the library's adapters."""
    if unknown := sorted(set(router.names) - set(library.names)):
        raise ValueError(f"router classes {unknown} are not in the library {library.names}")
    library.router = router


def use(model: nn.Module, library: Library, name: str) -> nn.Module:
    """Make one adapter of the library active on the model (in place); "base" turns the adapter off."""
    if name not in library.names:
        raise ValueError(f"no adapter {name!r} in the library; it has {library.names}")
    state = fresh_state(model, 0) if name == BASE else library.adapters[name]  # fresh: B = 0, adds nothing
    own = lora_state(model)
    load_lora_state(model, {k: v.to(own[k].device, own[k].dtype) if k in own else v for k, v in state.items()})
    return model


# ----------------------------------------------------------------------------- routing


def route(model: nn.Module, library: Library, encode: Callable[[str], list[int]],
          prompts: Sequence[str]) -> list[str]:
    """The library name the router picks for each prompt, read by the base model (the model is left on base)."""
    if library.router is None:
        raise ValueError("this library has no router: set_router(library, Router.fit(...)) first")
    use(model, library, BASE)
    return library.router.predict(prompt_features(model, [encode(p) for p in prompts]))


def routed_score(model: nn.Module, library: Library, encode: Callable[[str], list[int]], context: str,
                 choices: Sequence[str]) -> tuple[str, list[scorer.Choice]]:
    """Route the context, activate its adapter and score the choices: (adapter name, scorer.score's list)."""
    name = route(model, library, encode, [context])[0]
    use(model, library, name)
    return name, scorer.score(model, encode, context, choices)


def routed_generate(model: nn.Module, library: Library, encode: Callable[[str], list[int]],
                    decode: Callable[[list[int]], str], prompt: str, max_new_tokens: int,
                    **options) -> tuple[str, Completion]:
    """Route the prompt, activate its adapter and continue it greedily: (adapter name, eval.complete's result)."""
    name = route(model, library, encode, [prompt])[0]
    use(model, library, name)
    return name, complete(model, encode, decode, prompt, max_new_tokens, **options)


# ----------------------------------------------------------------------------- one artifact


def save(name: str, library: Library, model: nn.Module, *, notebook: str, profile: str,
         metrics: dict | None = None, root=None) -> artifacts.Artifact:
    """Save the library as one artifact: each adapter in PEFT format, the router, a manifest naming the base."""
    from safetensors.torch import save as st_save

    if base_sha256(model) != library.base_sha256:
        raise ValueError("the model passed is not the library's base (its weights' sha256 differs)")
    files: dict = {}
    keep = {k: v.detach().clone() for k, v in lora_state(model).items()}  # the model's adapter, put back after
    for adapter in library.adapters:
        use(model, library, adapter)
        state, config = to_peft(model, base_model_name_or_path=library.base)
        files[f"{adapter}.adapter_model.safetensors"] = st_save(state, metadata={"format": "pt"})
        files[f"{adapter}.adapter_config.json"] = config
    load_lora_state(model, keep)
    router_names = []
    if library.router is not None:
        files[ROUTER] = st_save(library.router.state())
        router_names = library.router.names
    config = {"kind": KIND, "base": library.base, "base_sha256": library.base_sha256,
              "adapters": list(library.adapters), "router": router_names, **library.settings}
    config["targets"] = list(config["targets"])
    return artifacts.save(name, notebook=notebook, profile=profile, config=config, metrics=metrics,
                          files=files, root=root)


def load(name: str, model: nn.Module, *, profile: str, root=None) -> tuple[Library, artifacts.Artifact]:
    """Load a library onto its base model (verified files, the right base); the model is left on "base"."""
    from safetensors.torch import load as st_load

    art = artifacts.load(name, profile=profile, root=root)
    check_base(art, model, KIND)
    states = {}
    for adapter in art.config["adapters"]:
        peft = st_load(art.bytes(f"{adapter}.adapter_model.safetensors"))
        from_peft(model, peft, art.json(f"{adapter}.adapter_config.json"))  # checks the settings, LoRAs a bare model
        states[adapter] = {ours_name(k): v for k, v in peft.items()}
    settings = {k: art.config[k] for k in ("r", "alpha", "dropout", "rslora", "use_dora")}
    lib = Library(art.config["base"], art.config["base_sha256"], {**settings, "targets": tuple(art.config["targets"])}, states)
    if art.config["router"]:
        set_router(lib, Router.from_state(st_load(art.bytes(ROUTER)), art.config["router"]))
    use(model, lib, BASE)
    return lib, art
