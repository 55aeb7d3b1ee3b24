"""The `chat-tools` artifact: SmolLM2's tool-using LoRA adapter and the settings it was trained to run with.

An adapter alone is not enough to serve a tool-using model: the loop that runs it must offer the same tools
under the same names, with the same limits, that training showed. So the artifact holds both:

    adapter_model.safetensors, adapter_config.json   the LoRA adapter in PEFT's format (nanolm.adapt.adapters)
    settings.json                                    tools (names, in order), search k and method, the loop's
                                                     max_steps, time_limit_s and max_new_tokens
    manifest.json                                    the base model's name and sha256; every file's sha256

`load` refuses other base weights (as adapters.load does) and a file changed after saving (core.artifacts).
Notebook 14 saves it; notebook 16's engine loads it and runs nanolm.use.agent with `toolbox(settings, index)`.
"""

from __future__ import annotations

from torch import nn

from ..adapt.adapters import CONFIG, WEIGHTS, check_base, from_peft, peft_files
from ..core import artifacts
from . import tools

NAME = "chat-tools"
KIND = "chat-tools"
SETTINGS = "settings.json"
DEFAULTS = {"tools": ["calculator", "python", "search"], "search_k": 1, "search_method": "hybrid",
            "max_steps": 3, "time_limit_s": 60.0, "max_new_tokens": 96}


def save(name: str, model: nn.Module, *, settings: dict, profile: str, notebook: str, base: str = "smollm2",
         metrics: dict | None = None, root=None) -> artifacts.Artifact:
    """Save the model's LoRA adapter with the loop's settings (unknown settings are refused)."""
    settings = {**DEFAULTS, **settings}
    if unknown := set(settings) - set(DEFAULTS):
        raise ValueError(f"unknown settings {sorted(unknown)}; the settings are {sorted(DEFAULTS)}")
    config, files = peft_files(model, kind=KIND, base=base, base_model_name_or_path=base)
    files[SETTINGS] = settings
    return artifacts.save(name, notebook=notebook, profile=profile, config=config, metrics=metrics, files=files,
                          root=root)


def load(model: nn.Module, *, profile: str, name: str = NAME, root=None) -> dict:
    """Load the adapter into the model (in place, onto the base it was trained on); return the settings."""
    from safetensors.torch import load as st_load

    art = artifacts.load(name, profile=profile, root=root)
    check_base(art, model, KIND)
    from_peft(model, st_load(art.bytes(WEIGHTS)), art.json(CONFIG))
    return art.json(SETTINGS)


def toolbox(settings: dict, index=None) -> tools.Toolbox:
    """The tools the settings name, in their order; "search" needs a nanolm.use.rag index."""
    made = {"calculator": tools.calculator, "python": tools.python,
            "search": lambda: tools.search(index, k=settings["search_k"], method=settings["search_method"])}
    if "search" in settings["tools"] and index is None:
        raise ValueError("the settings name the search tool: pass the rag index (nanolm.use.rag.load)")
    if unknown := [t for t in settings["tools"] if t not in made]:
        raise ValueError(f"unknown tools {unknown}; known: {sorted(made)}")
    return tools.Toolbox([made[t]() for t in settings["tools"]])
