"""nanolm.use.chat_tools: the adapter and its loop settings saved as one artifact, loaded back exactly; other
bases, edited files and unknown settings or tools refused."""

import pytest
import torch
from test_adapters import _trained_pair

from nanolm.adapt.lora import lora_state
from nanolm.core.artifacts import ArtifactError
from nanolm.use import chat_tools

SAVE = dict(notebook="14_tools_and_rag", profile="smoke")


def test_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(tmp_path))
    _, ours, plain = _trained_pair()
    chat_tools.save("chat-tools", ours, settings={"max_steps": 2, "tools": ["calculator", "python"]}, metrics={"acc": 0.9}, **SAVE)
    settings = chat_tools.load(plain, profile="smoke")
    assert settings == {**chat_tools.DEFAULTS, "max_steps": 2, "tools": ["calculator", "python"]}
    assert all(torch.equal(v, lora_state(ours)[k]) for k, v in lora_state(plain).items())
    box = chat_tools.toolbox(settings)
    assert list(box.tools) == ["calculator", "python"] and box.call("calculator", "6*7").output == "42"


def test_refusals(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(tmp_path))
    _, ours, plain = _trained_pair()
    with pytest.raises(ValueError, match="unknown settings"):
        chat_tools.save("chat-tools", ours, settings={"max_stepz": 2}, **SAVE)
    art = chat_tools.save("chat-tools", ours, settings={}, **SAVE)
    _, _, other = _trained_pair(tie=False)
    with torch.no_grad():
        other.tok_emb.weight.add_(1e-3)
    with pytest.raises(ValueError, match="was trained on base model 'smollm2'"):
        chat_tools.load(other, profile="smoke")
    with pytest.raises(ValueError, match="pass the rag index"):
        chat_tools.toolbox(chat_tools.DEFAULTS)
    with pytest.raises(ValueError, match="unknown tools"):
        chat_tools.toolbox({**chat_tools.DEFAULTS, "tools": ["shell"]})
    path = art.path / chat_tools.SETTINGS
    path.write_text(path.read_text().replace('"max_steps": 3', '"max_steps": 30'))
    with pytest.raises(ArtifactError):
        chat_tools.load(plain, profile="smoke")
