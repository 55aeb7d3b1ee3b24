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


# ----------------------------------------------------------------------------- a manifest is not trusted


def _edit_manifest(art, change, reseal=False):
    """Edit manifest.json by hand; reseal=True also fixes its sha256, as a crafted manifest would."""
    mpath = art.path / "manifest.json"
    manifest = json.loads(mpath.read_text())
    change(manifest)
    if reseal:
        manifest = getattr(artifacts, "seal", lambda m: m)(manifest)
    mpath.write_text(json.dumps(manifest))


@pytest.mark.parametrize("escape", ["../../x", "../base2/x", "/etc/hostname", ".hidden", "sub/x", ".."])
def test_manifest_names_outside_the_folder_are_refused(escape, isolated_checkpoints):
    art = _save()
    secret = b"a file outside the artifact"
    (isolated_checkpoints / "x").write_bytes(secret)  # what checkpoints/smoke/base/../../x points at
    entry = {"sha256": files.sha256_bytes(secret), "bytes": len(secret)}
    _edit_manifest(art, lambda m: m["files"].__setitem__(escape, entry), reseal=True)
    with pytest.raises(ArtifactError, match="not a plain file name.*Re-run"):
        artifacts.load("base", profile="smoke")


@pytest.mark.parametrize("key, value", [("rope_theta", 500_000.0), ("norm_eps", 1e-3), ("top_k", 1),
                                        ("dropout", 0.5)])
def test_an_edited_config_in_the_manifest_is_refused(key, value):
    config = {"rope_theta": 10_000.0, "norm_eps": 1e-5, "top_k": 50, "dropout": 0.0}
    art = artifacts.save("gpt-base", notebook="08_pretraining", profile="smoke",
                         tensors={"w": torch.zeros(2)}, config=config)
    _edit_manifest(art, lambda m: m["config"].__setitem__(key, value))
    with pytest.raises(ArtifactError, match="manifest.json was edited.*08_pretraining"):
        artifacts.load("gpt-base", profile="smoke")


def test_edited_metrics_and_profile_are_refused_and_update_metrics_keeps_the_seal():
    art = _save()
    artifacts.update_metrics("base", profile="smoke", metrics={"tokens_per_s": 100})
    assert artifacts.load("base", profile="smoke").metrics["tokens_per_s"] == 100
    _edit_manifest(art, lambda m: m["metrics"].__setitem__("val_loss", 0.1))
    with pytest.raises(ArtifactError, match="manifest.json was edited"):
        artifacts.load("base", profile="smoke")
    with pytest.raises(ArtifactError, match="manifest.json was edited"):  # update_metrics never launders an edit
        artifacts.update_metrics("base", profile="smoke", metrics={"x": 1})
    moved = _save()  # a smoke artifact copied under cpu/ is not a cpu artifact
    _edit_manifest(moved, lambda m: m.__setitem__("profile", "cpu"), reseal=True)
    with pytest.raises(ArtifactError, match="profile 'cpu'"):
        artifacts.load("base", profile="smoke")


def test_a_manifest_without_its_seal_is_refused():
    art = _save()
    _edit_manifest(art, lambda m: m.pop("manifest_sha256", None))
    with pytest.raises(ArtifactError, match="manifest.json was edited.*re-run 09_modern_architecture"):
        artifacts.load("base", profile="smoke")


def test_listed_sizes_and_shapes_of_entries_are_checked():
    art = _save()
    _edit_manifest(art, lambda m: m["files"]["raw.bin"].pop("sha256"), reseal=True)
    with pytest.raises(ArtifactError, match="unreadable"):
        artifacts.load("base", profile="smoke")


# ----------------------------------------------------------------------------- profiles name folders


@pytest.mark.parametrize("bad", ["../../etc", "auto", "", "smoke/../cpu"])
def test_every_entry_point_checks_the_profile(bad, isolated_checkpoints):
    _save()
    calls = [lambda: artifacts.artifact_dir("base", bad),
             lambda: artifacts.save("base", notebook="x", profile=bad, files={"a.txt": "a"}),
             lambda: artifacts.load("base", profile=bad),
             lambda: artifacts.exists("base", profile=bad),
             lambda: artifacts.update_metrics("base", profile=bad, metrics={"a": 1})]
    for call in calls:
        with pytest.raises(ValueError, match="smoke, cpu, gpu"):
            call()
    assert sorted(p.name for p in isolated_checkpoints.iterdir()) == ["smoke"], "nothing written elsewhere"


# ----------------------------------------------------------------------------- big files: hashed once, mapped


def test_lazy_files_are_not_read_but_verified_when_opened(monkeypatch):
    import numpy as np

    blob = np.arange(1000, dtype="<u2").tobytes()
    art = artifacts.save("token-shards", notebook="08_pretraining", profile="smoke",
                         files={"a.bin": blob, "empty.bin": b"", "index.json": {"n": 1}})
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: pytest.fail(f"read {p.name}") if p.suffix == ".bin"
                        else real(p))
    art = artifacts.load("token-shards", profile="smoke", lazy=lambda fn: fn.endswith(".bin"))
    assert art.files() == ["a.bin", "empty.bin", "index.json"]
    mm = art.memmap("a.bin", "<u2")
    assert isinstance(mm, np.memmap) and not mm.flags.writeable and mm[999] == 999
    assert art.memmap("empty.bin", "<u2").size == 0
    monkeypatch.setattr(Path, "read_bytes", real)
    raw = bytearray(blob)
    raw[7] ^= 1
    (art.path / "a.bin").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="sha256 differs.*Refusing"):
        art.memmap("a.bin", "<u2")
    with pytest.raises(ArtifactError, match="sha256 differs"):
        art.bytes("a.bin")
    with pytest.raises(ArtifactError, match="has no file"):
        art.memmap("../x.bin")


# ----------------------------------------------------------------------------- every file is sealed


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01  # one bit, same size: only the hash can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fn", ["tensors.safetensors", "vocab.json", "notes.txt", "raw.bin"])
@pytest.mark.parametrize("change", ["first byte", "last byte", "appended", "truncated"])
def test_every_file_of_an_artifact_is_sealed(fn, change):
    """Each file in turn (tensors, JSON, text, raw bytes), changed at either end or in its size: refused on
    load, eager or lazy (then when it is opened)."""
    art = _save()
    p = art.path / fn
    if change == "first byte":
        _flip(p, 0)
    elif change == "last byte":
        _flip(p, -1)
    elif change == "appended":
        p.write_bytes(p.read_bytes() + b" ")
    else:
        p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(ArtifactError, match=fn):
        artifacts.load("base", profile="smoke")
    with pytest.raises(ArtifactError, match=fn):
        artifacts.load("base", profile="smoke", lazy=lambda name: True).bytes(fn)


@pytest.mark.parametrize("edit", [
    lambda m: m["files"]["notes.txt"].__setitem__("sha256", "0" * 64),     # a listed hash
    lambda m: m["files"]["vocab.json"].__setitem__("bytes", m["files"]["vocab.json"]["bytes"] + 1),
    lambda m: m["files"].pop("raw.bin"),                                    # a file dropped from the list
    lambda m: m.__setitem__("notebook", "08_pretraining"),                 # who made it
    lambda m: m.__setitem__("git_commit", "0" * 12),                      # from which commit
    lambda m: m.__setitem__("name", "other"),
    lambda m: m.__setitem__("extra", 1),                                   # an added key
], ids=["hash", "size", "dropped-file", "notebook", "commit", "name", "added-key"])
def test_every_part_of_the_manifest_is_sealed(edit):
    """Any edit of the manifest itself (not resealed) is refused, whichever field it touches."""
    art = _save()
    _edit_manifest(art, edit)
    with pytest.raises(ArtifactError):
        artifacts.load("base", profile="smoke")


def test_a_flipped_byte_anywhere_in_the_manifest_is_refused():
    """Every byte position of manifest.json, flipped: the result is either unreadable or refused, never loaded."""
    art = _save()
    mpath = art.path / "manifest.json"
    original = mpath.read_bytes()
    for at in range(0, len(original), max(1, len(original) // 97)):
        data = bytearray(original)
        data[at] ^= 0x01
        mpath.write_bytes(bytes(data))
        with pytest.raises(ArtifactError):
            artifacts.load("base", profile="smoke")
    mpath.write_bytes(original)
    artifacts.load("base", profile="smoke")  # and the untouched manifest still loads
