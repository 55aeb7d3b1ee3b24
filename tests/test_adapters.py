"""nanolm.adapt.adapters: our adapters open in PEFT, PEFT's open here, and a wrong or changed adapter is refused."""

import json

import pytest
import tolerances
import torch
from safetensors.torch import load_file
from test_lora import VARIANTS, _ids, hf_pair

from nanolm.adapt import adapters
from nanolm.adapt.lora import apply_lora, lora_state
from nanolm.core.artifacts import ArtifactError
from nanolm.model.hf import llama_from_hf_state

SAVE = dict(notebook="11_lora", profile="smoke")


def _trained_pair(tie=True, **variant):
    """(PEFT model, our model) with the same nonzero adapters, and our plain base (no adapters) beside them."""
    peft_model, ours = hf_pair(torch.float32, "all", tie=tie, **variant)
    hf = peft_model.base_model.model
    plain = {k.replace(".base_layer", ""): v for k, v in hf.state_dict().items() if "lora_" not in k}
    return peft_model, ours, llama_from_hf_state(hf.config.to_dict(), plain)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_our_artifact_opens_in_peft(tmp_path, monkeypatch, variant):
    """save() -> PeftModel.from_pretrained(LlamaForCausalLM, artifact folder): the same logits (measured 0)."""
    from peft import PeftModel

    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(tmp_path))
    peft_model, ours, _ = _trained_pair(**VARIANTS[variant])
    art = adapters.save("code", ours, base="base", **SAVE)
    assert art.name == "adapters/code" and {"adapter_model.safetensors", "adapter_config.json"} <= set(art.files())
    hf = peft_model.unload()  # the bare base model again, without PEFT's layers
    reopened = PeftModel.from_pretrained(hf, str(art.path)).eval()
    idx = _ids()
    torch.testing.assert_close(reopened(idx).logits, ours(idx)[0], **tolerances.FLOAT32_MODEL)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_peft_folder_opens_here(tmp_path, variant):
    """PEFT's save_pretrained folder -> from_peft on a plain Llama: the same logits, and our files match PEFT's."""
    peft_model, ours, plain = _trained_pair(**VARIANTS[variant])
    peft_model.save_pretrained(tmp_path / "peft")
    state = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    adapters.from_peft(plain, state, config).eval()
    idx = _ids()
    torch.testing.assert_close(plain(idx)[0], peft_model(idx).logits, **tolerances.FLOAT32_MODEL)
    our_state, our_config = adapters.to_peft(ours)
    assert set(our_state) == set(state) and all(torch.equal(our_state[k], v) for k, v in state.items())
    for key in ("peft_type", "r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora", "bias"):
        assert our_config[key] == config[key], key
    assert set(our_config["target_modules"]) == set(config["target_modules"])  # PEFT writes a set's order


def test_round_trip_through_an_artifact(tmp_path, monkeypatch):
    """save then load into a fresh copy of the base: the same adapter tensors and logits."""
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(tmp_path))
    _, ours, plain = _trained_pair(use_dora=True)
    adapters.save("math", ours, base="base", metrics={"loss": 1.5}, **SAVE)
    loaded, art = adapters.load("math", plain, profile="smoke")
    assert art.config["base"] == "base" and art.metrics == {"loss": 1.5}
    assert all(torch.equal(v, lora_state(ours)[k]) for k, v in lora_state(loaded).items())
    idx = _ids()
    torch.testing.assert_close(loaded(idx)[0], ours(idx)[0], **tolerances.FLOAT32)


def test_refuses_an_adapter_of_other_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(tmp_path))
    _, ours, plain = _trained_pair()
    adapters.save("code", ours, base="base", **SAVE)
    apply_lora(plain, r=8, alpha=8, targets="all")  # the right base, but LoRA'd with another rank
    with pytest.raises(ValueError, match="another rank r"):
        adapters.load("code", plain, profile="smoke")


def test_refuses_another_base_model(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(tmp_path))
    _, ours, _ = _trained_pair()
    adapters.save("code", ours, base="smollm2", **SAVE)
    _, _, other = _trained_pair(tie=False)  # the same shapes, other weights
    with torch.no_grad():
        other.tok_emb.weight.add_(1e-3)
    with pytest.raises(ValueError, match="trained on base model 'smollm2'"):
        adapters.load("code", other, profile="smoke")


def test_refuses_a_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(tmp_path))
    _, ours, plain = _trained_pair()
    art = adapters.save("code", ours, base="base", **SAVE)
    (art.path / "adapter_model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="incomplete: adapter_model.safetensors is missing. Re-run 11_lora"):
        adapters.load("code", plain, profile="smoke")
    with pytest.raises(ArtifactError, match="missing.*Run notebook 11_lora"):
        adapters.load("never-saved", plain, profile="smoke")


def test_refuses_changed_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(tmp_path))
    _, ours, plain = _trained_pair()
    art = adapters.save("code", ours, base="base", **SAVE)
    path = art.path / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one byte of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 differs"):
        adapters.load("code", plain, profile="smoke")


def test_refuses_peft_settings_we_do_not_have():
    _, ours, plain = _trained_pair()
    state, config = adapters.to_peft(ours)
    for change in ({"target_modules": ".*proj"}, {"target_modules": ["q_proj", "lm_head"]}, {"bias": "all"},
                   {"peft_type": "IA3"}, {"rank_pattern": {"q_proj": 2}}):
        with pytest.raises(ValueError):
            adapters.from_peft(plain, state, {**config, **change})
