"""The models the course evaluates and uses, each loaded with its tokenizer in one call.

    name       model                                          tokenizer                    made by
    gpt-char   GPT, character-level Tiny Shakespeare          its vocab.json (charset)     07_gpt
    gpt-base   GPT-2 style, trained on the BPE token shards   bpe-tokenizer                08_pretraining
    base       Llama-style, same shards and budget            bpe-tokenizer                09_modern_architecture
    smollm2    SmolLM2-135M-Instruct, read from its GGUF file the file's own (GGUFTokenizer) 09_modern_architecture

`load(name, profile=...)` gives a `Loaded`: the model in eval mode, its tokenizer, the chat format (ChatML
for smollm2, None for the course's own models), the verified artifact and its kind ("gpt", "llama",
"llama-hf"). It dispatches on the kind an artifact's config records, so later artifacts of these kinds
load the same way.

`smollm2` is one folder that is both a course artifact and a Hugging Face model folder:

    config.json, model.safetensors, generation_config.json   transformers' save_pretrained (float32; the
                                                              tied embedding stored once)
    tokenizer.json, tokenizer_config.json, chat_template.jinja  transformers' tokenizer from the same GGUF
    nanolm_tokenizer.json                                    the file's tokenizer.* metadata (GGUFTokenizer, ChatML)
    manifest.json                                            the sha256 of every file above, sealed

so `AutoModelForCausalLM.from_pretrained(hf_folder("smollm2", profile=...))` (and PEFT, lm-evaluation-harness)
open it unchanged, while `load` reads the same verified weights into our Llama without dequantizing again.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core import artifacts, data, gguf
from ..core.files import sha256_file
from ..model import gguf_llama, gpt, hf, llama
from ..text import bpe
from ..text.charset import VOCAB_FILE, CharTokenizer
from ..text.chat_template import ChatML
from ..text.gguf_tokenizer import SMOLLM2, GGUFTokenizer

HF_KIND = "llama-hf"  # an artifact that is also a Hugging Face model folder
CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "nanolm_tokenizer.json"
BPE_TOKENIZER = "bpe-tokenizer"  # the tokenizer of the course's own BPE models (notebook 04)


@dataclass
class Loaded:
    """A model in eval mode with what it needs to read and write text."""

    name: str
    model: torch.nn.Module
    tokenizer: Any  # GGUFTokenizer, bpe.Tokenizer or CharTokenizer: encode(text) -> ids, decode(ids) -> text
    chat: ChatML | None  # the chat format, for a chat model
    artifact: artifacts.Artifact
    kind: str  # "gpt", "llama" or "llama-hf"


def load(name: str, *, profile: str, device: torch.device | str = "cpu") -> Loaded:
    """Load a model artifact and its tokenizer (sha256-verified); a missing one names the notebook to run."""
    art = artifacts.load(name, profile=profile, lazy=lambda fn: fn.endswith(".safetensors"))
    kind = art.config.get("model")
    if kind == HF_KIND:
        return _load_hf_llama(art, device)
    if kind in ("gpt", "llama"):
        return _load_course_model(art, kind, device)
    raise artifacts.ArtifactError(f"artifact {name!r} holds no model this loader knows (config model: {kind!r}; "
                                  f"known: gpt, llama, {HF_KIND})")


def hf_folder(name: str, *, profile: str) -> Path:
    """The verified folder of an HF-format artifact, for transformers' from_pretrained, PEFT or lm-eval."""
    art = artifacts.load(name, profile=profile, lazy=lambda fn: True)
    if art.config.get("model") != HF_KIND:
        raise artifacts.ArtifactError(f"artifact {name!r} is not a Hugging Face model folder (config model: "
                                      f"{art.config.get('model')!r}); only {HF_KIND} artifacts such as smollm2 are")
    for fn in art.files():
        art.memmap(fn)  # hashes every file as it is on disk, without keeping it in memory
    return art.path


# ----------------------------------------------------------------------------- smollm2: save


def save_smollm2(gguf_path: str | Path | None = None, *, notebook: str, profile: str,
                 metrics: dict | None = None) -> artifacts.Artifact:
    """Save the `smollm2` artifact from its GGUF file (default: the course's): our artifact and an HF folder."""
    path = Path(gguf_path) if gguf_path is not None else data.path(*SMOLLM2)
    model, _ = gguf_llama.load_llama(path)
    meta = gguf.read(path).metadata
    files = _hf_files(model, meta, path)
    files[TOKENIZER] = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    config = {"model": HF_KIND, "source": "smollm2 GGUF", "gguf_file": path.name, "gguf_sha256": sha256_file(path),
              **model.config.to_dict()}
    return artifacts.save("smollm2", notebook=notebook, profile=profile, config=config, metrics=metrics,
                          files=files)


def _hf_files(model: llama.Llama, meta: dict, path: Path) -> dict[str, bytes]:
    """The files of a Hugging Face model folder: transformers' save_pretrained of the model and the tokenizer."""
    from transformers import AutoTokenizer

    ids = {f"{k}_token_id": meta.get(f"tokenizer.ggml.{g}_token_id")
           for k, g in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"))}
    with tempfile.TemporaryDirectory(prefix="smollm2-hf-") as tmp:
        hf_model = hf.to_hf(model)
        for key, value in ids.items():  # the file's special ids, not LlamaConfig's defaults
            setattr(hf_model.config, key, value)
            setattr(hf_model.generation_config, key, value)
        hf_model.save_pretrained(tmp)
        del hf_model
        AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(tmp)
        return _plain_files(Path(tmp))


def _plain_files(folder: Path) -> dict[str, bytes]:
    """Every file of a folder by name; a subfolder or a sharded checkpoint is refused (an artifact is flat)."""
    nested = [p.name for p in folder.iterdir() if not p.is_file()]
    if nested:
        raise ValueError(f"save_pretrained wrote subfolders {nested}: an artifact holds plain files only")
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    if WEIGHTS not in files or CONFIG not in files:
        raise ValueError(f"save_pretrained wrote {sorted(files)}, not one {CONFIG} and one {WEIGHTS} "
                         "(a sharded checkpoint is not supported)")
    return files


# ----------------------------------------------------------------------------- load


def _load_hf_llama(art: artifacts.Artifact, device: torch.device | str) -> Loaded:
    """smollm2: our Llama from the verified config.json + model.safetensors, the tokenizer from its metadata."""
    from safetensors.torch import load as st_load

    state = st_load(art.memmap(WEIGHTS).tobytes())  # the very bytes that were hashed; not kept afterwards
    model = hf.llama_from_hf_state(art.json(CONFIG), state)
    del state
    meta = art.json(TOKENIZER)
    tokenizer = GGUFTokenizer(meta, name=art.name)
    _check_vocab(art, tokenizer.vocab_size, model.config.vocab_size, exact=True)
    template = meta.get("tokenizer.chat_template")
    chat = ChatML.from_template(template) if template else None
    return Loaded(art.name, model.to(device).eval(), tokenizer, chat, art, HF_KIND)


def _load_course_model(art: artifacts.Artifact, kind: str, device: torch.device | str) -> Loaded:
    """gpt-char, gpt-base, base: the model through gpt.load / llama.load, its tokenizer beside or before it."""
    family = gpt if kind == "gpt" else llama
    model, art = family.load(art.name, profile=art.profile, device=device)
    if VOCAB_FILE in art.files():  # a character model keeps its vocabulary with it
        tokenizer = CharTokenizer.from_json(art.json(VOCAB_FILE))
    else:
        tokenizer = bpe.load(BPE_TOKENIZER, profile=art.profile)
    _check_vocab(art, tokenizer.vocab_size, model.config.vocab_size, exact=False)
    return Loaded(art.name, model, tokenizer, None, art, kind)


def _check_vocab(art: artifacts.Artifact, n_tokenizer: int, n_model: int, exact: bool) -> None:
    """A tokenizer whose ids the model has no rows for (or, exact, a different count) was not trained with it."""
    if n_tokenizer > n_model or (exact and n_tokenizer != n_model):
        raise artifacts.ArtifactError(
            f"artifact {art.name!r}: its tokenizer has {n_tokenizer} ids but the model {n_model} rows; they were "
            f"not made together. Re-run {artifacts.producer(art.name)}.")
