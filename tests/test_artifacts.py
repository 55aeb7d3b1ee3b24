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


# ----------------------------------------------------------------------------- killing survivors of `make mutants`


def test_missing_artifact_message_says_exactly_what_to_run():
    """Known producer: the notebook and a `make course` line; unknown name: a generic hint, no bogus make line."""
    with pytest.raises(ArtifactError) as e:
        artifacts.load("gpt-base", profile="cpu")
    assert str(e.value).endswith("Run notebook 08_pretraining with PROFILE='cpu' first "
                                 "(e.g. `make course PROFILE=cpu UPTO=08`).")
    with pytest.raises(ArtifactError) as e:
        artifacts.load("mystery", profile="smoke")
    assert str(e.value).endswith("Run the notebook that saves it with PROFILE='smoke' first.")


def test_producer_prefers_an_exact_name_to_a_family():
    """adapters/smollm2-chat is notebook 13's; any other adapters/<name> belongs to 11's family; unknown: None."""
    from nanolm.core import syllabus

    assert syllabus.producer_of("adapters/smollm2-chat") == "13_alignment"
    assert syllabus.producer_of("adapters/smollm2-abstracts") == "11_lora"
    assert syllabus.producer_of("chat") == "13_alignment"
    assert syllabus.producer_of("adapters") is None and syllabus.producer_of("mystery") is None


def test_save_and_load_honour_an_explicit_root(tmp_path, isolated_checkpoints):
    """root= is where the artifact goes and is read from, for every entry point (not the default folder)."""
    root = tmp_path / "elsewhere"
    art = _save(root=root)
    assert art.path == root / "smoke" / "base" and not isolated_checkpoints.exists()
    assert artifacts.exists("base", profile="smoke", root=root)
    assert not artifacts.exists("base", profile="smoke")
    artifacts.update_metrics("base", profile="smoke", metrics={"x": 1}, root=root)
    assert artifacts.load("base", profile="smoke", root=root).metrics == {"val_loss": 2.5, "x": 1}


def test_save_returns_the_artifact_it_wrote():
    """The returned Artifact is the saved one: same name, profile, manifest and bytes as a fresh load."""
    saved = _save()
    loaded = artifacts.load("base", profile="smoke")
    assert (saved.name, saved.profile) == (loaded.name, loaded.profile) == ("base", "smoke")
    assert saved.manifest == loaded.manifest
    assert saved.bytes("raw.bin") == b"\x00\x01" and saved.files() == loaded.files()


def test_manifest_records_when_it_was_made_in_iso_format():
    """'created' is a local ISO-8601 time with its UTC offset, e.g. 2026-11-29T23:40:00+0000."""
    import re

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", _save().manifest["created"])


def test_seal_is_the_sha256_of_the_canonical_json():
    """The seal format is fixed (compact, sorted, UTF-8 non-ASCII): manifests sealed by one version verify in another."""
    import hashlib

    sealed = artifacts.seal({"name": "é", "files": {"b": 1, "a": [1, 2]}, "manifest_sha256": "stale"})
    canonical = '{"files":{"a":[1,2],"b":1},"name":"é"}'.encode()
    assert sealed == {"name": "é", "files": {"b": 1, "a": [1, 2]},
                      "manifest_sha256": hashlib.sha256(canonical).hexdigest()}


def test_manifest_and_json_files_are_stable_readable_json():
    """manifest.json and JSON files: 2-space indent, sorted keys, non-ASCII as is, final newline (clean diffs)."""
    art = artifacts.save("base", notebook="09_modern_architecture", profile="smoke",
                         config={"b": "é", "a": 1}, files={"cfg.json": {"z": "é", "a": [1]}})
    assert (art.path / "cfg.json").read_text("utf-8") == '{\n  "a": [\n    1\n  ],\n  "z": "é"\n}\n'
    text = (art.path / "manifest.json").read_text("utf-8")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert '\n  "config": {\n    "a": 1,\n    "b": "é"\n  },\n' in text


def test_manifest_is_read_as_utf8_whatever_the_locale(monkeypatch):
    """On a machine whose locale is not UTF-8 (Windows cp1252), a non-ASCII config still loads intact."""
    artifacts.save("base", notebook="09_modern_architecture", profile="smoke", config={"tok": "é→"})
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda p, encoding=None, errors=None:
                        real(p, encoding or "latin-1", errors))
    assert artifacts.load("base", profile="smoke").config == {"tok": "é→"}


def test_bad_file_names_in_save_are_refused_with_the_rule():
    """save(files=...) names the bad file and why; the manifest and tensors names are reserved."""
    with pytest.raises(ValueError, match=r"^artifact file name 'a/b' is not a plain file name"):
        artifacts.save("base", notebook="x", profile="smoke", files={"a/b": "x"})
    with pytest.raises(ValueError, match=r"'manifest.json' in artifact: .* are written by save\(\)"):
        artifacts.save("base", notebook="x", profile="smoke", files={"manifest.json": "x"})
    with pytest.raises(ValueError, match=r"^bad artifact name '\.\./x': use words like"):
        artifacts.save("../x", notebook="x", profile="smoke")


def test_a_listed_name_outside_the_folder_is_named_in_the_refusal():
    art = _save()
    _edit_manifest(art, lambda m: m["files"].__setitem__("../x", {"sha256": "0" * 64, "bytes": 1}), reseal=True)
    with pytest.raises(ArtifactError) as e:
        artifacts.load("base", profile="smoke")
    assert str(e.value).startswith("Artifact 'base': listed file name '../x' is not a plain file name")
    assert str(e.value).endswith("Refusing to load it. Re-run 09_modern_architecture.")


def test_a_size_that_is_not_an_integer_makes_the_manifest_unreadable():
    """A crafted entry with a sha256 but bytes '2' (a string) is reported as unreadable, not as changed."""
    art = _save()
    _edit_manifest(art, lambda m: m["files"]["raw.bin"].__setitem__("bytes", "2"), reseal=True)
    with pytest.raises(ArtifactError) as e:
        artifacts.load("base", profile="smoke")
    assert str(e.value) == ("Artifact 'base': manifest.json is unreadable (['raw.bin'] lack a sha256 or size). "
                            "Re-run 09_modern_architecture.")


def test_asking_for_a_file_the_artifact_lacks_lists_what_it_has():
    art = _save()
    with pytest.raises(ArtifactError) as e:
        art.bytes("vocab.txt")
    assert str(e.value) == ("artifact 'base' has no file 'vocab.txt'; it has "
                            "['notes.txt', 'raw.bin', 'tensors.safetensors', 'vocab.json']")


def test_update_metrics_overrides_and_works_on_a_manifest_without_metrics():
    """New values win over old ones; an older manifest with no 'metrics' key gets one."""
    art = _save()
    artifacts.update_metrics("base", profile="smoke", metrics={"val_loss": 1.5})
    assert artifacts.load("base", profile="smoke").metrics == {"val_loss": 1.5}
    _edit_manifest(art, lambda m: m.pop("metrics"), reseal=True)
    assert artifacts.load("base", profile="smoke").metrics == {}
    artifacts.update_metrics("base", profile="smoke", metrics={"a": 1})
    assert artifacts.load("base", profile="smoke").metrics == {"a": 1}


# ----------------------------------------------------------------------------- lazy files and memmap


def _shards():
    import numpy as np

    blob = np.arange(10, dtype="<u2").tobytes()
    return artifacts.save("token-shards", notebook="08_pretraining", profile="smoke",
                          files={"a.bin": blob, "empty.bin": b""})


def _changed_msg(name, fn, producer):
    return (f"Artifact {name!r}: {fn} does not match its manifest (sha256 differs); the file was changed or "
            f"corrupted after it was saved. Refusing to load it. Re-run {producer}.")


def test_memmap_defaults_to_bytes_and_keeps_the_dtype_of_an_empty_file():
    import numpy as np

    _shards()
    art = artifacts.load("token-shards", profile="smoke", lazy=lambda fn: True)
    assert art.memmap("a.bin").dtype == np.uint8 and art.memmap("a.bin").size == 20
    assert art.memmap("empty.bin", "<u2").dtype == np.dtype("<u2")


def test_a_listed_empty_file_that_gained_bytes_is_refused_by_memmap():
    """A shard listed as empty but now holding data: refused, even though its listed sha256 is the empty one."""
    art = _shards()
    art = artifacts.load("token-shards", profile="smoke", lazy=lambda fn: True)
    (art.path / "empty.bin").write_bytes(b"\x00\x01")
    with pytest.raises(ArtifactError) as e:
        art.memmap("empty.bin")
    assert str(e.value) == _changed_msg("token-shards", "empty.bin", "08_pretraining")


def test_memmap_refusal_names_the_file():
    art = _shards()
    art = artifacts.load("token-shards", profile="smoke", lazy=lambda fn: True)
    (art.path / "a.bin").write_bytes(b"\xff" * 20)
    with pytest.raises(ArtifactError) as e:
        art.memmap("a.bin")
    assert str(e.value) == _changed_msg("token-shards", "a.bin", "08_pretraining")


def test_lazy_load_checks_presence_and_size_up_front():
    """lazy= skips hashing, not checking: a missing file is 'incomplete', a resized one 'does not match', at load."""
    art = _shards()
    (art.path / "a.bin").write_bytes(b"\x00" * 19)
    with pytest.raises(ArtifactError) as e:
        artifacts.load("token-shards", profile="smoke", lazy=lambda fn: True)
    assert str(e.value) == _changed_msg("token-shards", "a.bin", "08_pretraining")
    (art.path / "a.bin").unlink()
    with pytest.raises(ArtifactError) as e:
        artifacts.load("token-shards", profile="smoke", lazy=lambda fn: True)
    assert str(e.value) == "Artifact 'token-shards' is incomplete: a.bin is missing. Re-run 08_pretraining."


# ----------------------------------------------------------------------------- models


class _TinyConfig:
    def __init__(self, d=3):
        self.d = d

    def to_dict(self):
        return {"d": self.d}

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


class _Tiny(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.w = torch.nn.Parameter(torch.zeros(config.d))

    def tensors(self):
        return {"w": self.w}

    @classmethod
    def from_tensors(cls, config, tensors):
        model = cls(config)
        model.w.data.copy_(tensors["w"])
        return model


def test_save_model_and_load_model_round_trip():
    """Weights, config (with its kind), metrics, extra files and producer all survive; the model comes back in eval."""
    model = _Tiny(_TinyConfig(4))
    model.w.data[:] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    artifacts.save_model("gpt-base", model, "gpt", notebook="08_pretraining", profile="smoke",
                         metrics={"val_loss": 1.25}, files={"vocab.json": ["a"]})
    back, art = artifacts.load_model("gpt-base", "gpt", _Tiny, _TinyConfig, profile="smoke")
    assert isinstance(back, _Tiny) and not back.training and back.w.device.type == "cpu"
    assert back.w.tolist() == [1.0, 2.0, 3.0, 4.0] and back.config.d == 4
    assert art.config == {"model": "gpt", "d": 4} and art.metrics == {"val_loss": 1.25}
    assert art.json("vocab.json") == ["a"] and art.manifest["notebook"] == "08_pretraining"
    meta, _ = artifacts.load_model("gpt-base", "gpt", _Tiny, _TinyConfig, profile="smoke", device="meta")
    assert meta.w.device.type == "meta"


def test_load_model_refuses_another_kind_and_says_what_it_holds():
    artifacts.save_model("gpt-base", _Tiny(_TinyConfig()), "gpt", notebook="08_pretraining", profile="smoke")
    with pytest.raises(ValueError, match=r"^artifact 'gpt-base' does not hold a _Tiny \(it holds 'gpt'; config: "):
        artifacts.load_model("gpt-base", "llama", _Tiny, _TinyConfig, profile="smoke")
    artifacts.save("base", notebook="09_modern_architecture", profile="smoke", tensors={"w": torch.zeros(3)},
                   config={"d": 3})  # saved by save(), not save_model(): no kind recorded
    with pytest.raises(ValueError, match=r"it holds None"):
        artifacts.load_model("base", "gpt", _Tiny, _TinyConfig, profile="smoke")


# ----------------------------------------------------------------------------- provenance: the git commit


def _git(cwd, *args):
    import subprocess

    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@t",
                           "-c", "commit.gpgsign=false", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_git_commit_is_the_short_head_and_dirty_only_for_tracked_changes(tmp_path, monkeypatch):
    """12-char HEAD, '-dirty' when a tracked file changed (an untracked file does not count), 'unknown' outside git."""
    from nanolm.core import paths

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("1")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "c")
    head = _git(repo, "rev-parse", "HEAD")[:12]
    monkeypatch.setattr(paths, "ROOT", repo)
    (repo / "untracked.txt").write_text("x")
    assert artifacts._git_commit() == head
    (repo / "a.txt").write_text("2")
    assert artifacts._git_commit() == head + "-dirty"
    monkeypatch.setattr(paths, "ROOT", tmp_path / "not-a-repo")
    assert artifacts._git_commit() == "unknown"
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert artifacts._git_commit() == "unknown"


@pytest.mark.parametrize("hang_at", [0, 1])
def test_a_hung_git_gives_unknown_within_five_seconds(hang_at, monkeypatch):
    """Each git call is bounded (timeout=5 s): a hung git never blocks a save, the commit is 'unknown'."""
    import subprocess

    timeouts = []

    def run(cmd, **kw):
        timeouts.append(kw.get("timeout"))
        if len(timeouts) > hang_at:
            raise subprocess.TimeoutExpired(cmd, kw.get("timeout"))
        return subprocess.CompletedProcess(cmd, 0, "abc\n", "")

    monkeypatch.setattr(artifacts.subprocess, "run", run)
    assert artifacts._git_commit() == "unknown"
    assert timeouts == [5] * (hang_at + 1)
