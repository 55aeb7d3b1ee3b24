"""nanolm.core.artifacts: round trip, tamper refusal, clear errors, atomic saves."""

import json
from pathlib import Path

import pytest
import torch

from nanolm.core import artifacts, files
from nanolm.core.artifacts import ArtifactError


def _save(name="base", value=1.0, **kw):
    return artifacts.save(
        name, notebook="09_modern_architecture", profile="smoke",
        tensors={"w": torch.full((2, 3), value), "ids": torch.arange(5, dtype=torch.int16)},
        config={"d_model": 8}, metrics={"val_loss": 2.5},
        files={"vocab.json": ["a", "b"], "notes.txt": "héllo", "raw.bin": b"\x00\x01"}, **kw,
    )


def test_round_trip_keeps_every_part():
    saved = _save()
    art = artifacts.load("base", profile="smoke")
    torch.testing.assert_close(art.tensors()["w"], torch.ones(2, 3), rtol=0, atol=0)
    assert art.tensors()["ids"].dtype == torch.int16
    assert art.config == {"d_model": 8} and art.metrics == {"val_loss": 2.5}
    assert art.json("vocab.json") == ["a", "b"]
    assert art.text("notes.txt") == "héllo"
    assert art.bytes("raw.bin") == b"\x00\x01"
    m = art.manifest
    assert m["notebook"] == "09_modern_architecture" and m["profile"] == "smoke"
    assert set(m["files"]) == {"tensors.safetensors", "vocab.json", "notes.txt", "raw.bin"}
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert m["git_commit"]
    assert saved.path == art.path


def test_profiles_are_kept_apart():
    _save()
    with pytest.raises(ArtifactError):
        artifacts.load("base", profile="cpu")


def test_tampered_file_is_refused():
    art = _save()
    p = art.path / "tensors.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 differs.*Refusing"):
        artifacts.load("base", profile="smoke")


def test_missing_artifact_names_the_notebook_to_run():
    with pytest.raises(ArtifactError, match="03_sequence_models") as e:
        artifacts.load("shakespeare-char", profile="cpu")
    assert "PROFILE='cpu'" in str(e.value)
    with pytest.raises(ArtifactError, match="11_lora"):
        artifacts.load("adapters/code", profile="cpu")


def test_missing_file_is_reported():
    art = _save()
    (art.path / "vocab.json").unlink()
    with pytest.raises(ArtifactError, match="incomplete: vocab.json"):
        artifacts.load("base", profile="smoke")


def test_bad_names_and_non_json_config_are_refused_before_writing(isolated_checkpoints):
    for bad in ["", "../x", "a//b", ".hidden"]:
        with pytest.raises(ValueError):
            artifacts.save(bad, notebook="x", profile="smoke")
    with pytest.raises(TypeError):
        artifacts.save("base", notebook="x", profile="smoke", config={"f": object()})
    assert not (isolated_checkpoints / "smoke" / "base").exists()


def test_crash_before_the_swap_leaves_the_old_artifact(monkeypatch):
    _save(value=1.0)
    real = files.fsync_dir

    def crash(*a, **k):  # the first fsync of the new folder comes after its files, before the renames
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(files, "fsync_dir", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(value=2.0)
    monkeypatch.setattr(files, "fsync_dir", real)
    art = artifacts.load("base", profile="smoke")
    assert art.tensors()["w"][0, 0].item() == 1.0
    leftovers = [p.name for p in art.path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "temporary folders must be cleaned up"


def test_crash_between_the_two_renames_is_recovered(monkeypatch):
    _save(value=1.0)
    real_rename = Path.rename

    def rename(self, target):
        if ".tmp-" in self.name:  # the new folder moving into place: die here
            raise KeyboardInterrupt("killed between renames")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        _save(value=2.0)
    monkeypatch.setattr(Path, "rename", real_rename)
    assert artifacts.exists("base", profile="smoke")
    assert artifacts.load("base", profile="smoke").tensors()["w"][0, 0].item() == 1.0


def test_a_second_save_replaces_the_first():
    _save(value=1.0)
    _save(value=3.0)
    assert artifacts.load("base", profile="smoke").tensors()["w"][0, 0].item() == 3.0


def test_update_metrics_merges_into_the_manifest():
    _save()
    artifacts.update_metrics("base", profile="smoke", metrics={"tokens_per_s": 100})
    art = artifacts.load("base", profile="smoke")
    assert art.metrics == {"val_loss": 2.5, "tokens_per_s": 100}
    with pytest.raises(ArtifactError, match="not been saved"):
        artifacts.update_metrics("gpt-base", profile="smoke", metrics={})


def test_unreadable_manifest_is_refused():
    art = _save()
    (art.path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        artifacts.load("base", profile="smoke")


def test_manifest_is_plain_json():
    art = _save()
    assert json.loads((art.path / "manifest.json").read_text())["name"] == "base"
