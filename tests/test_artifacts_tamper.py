"""Tampering with a saved artifact, one part at a time: every file, the manifest's fields, its seal.

Each change must be refused on load with the message that says what happened and what to do (re-run the
producing notebook); a file that the manifest does not list is never served.
"""

import json

import pytest
import torch

from nanolm.core import artifacts
from nanolm.core.artifacts import ArtifactError

NAME, NOTEBOOK = "base", "09_modern_architecture"  # syllabus: notebook 09 saves 'base'
FILES = ["tensors.safetensors", "vocab.json", "notes.txt", "raw.bin"]


def _save():
    return artifacts.save(NAME, notebook=NOTEBOOK, profile="smoke",
                          tensors={"w": torch.arange(6.0).reshape(2, 3)}, config={"rope_theta": 10_000.0},
                          metrics={"val_loss": 2.5},
                          files={"vocab.json": ["a", "b"], "notes.txt": "héllo", "raw.bin": b"\x00\x01\x02"})


def _load(**kw):
    return artifacts.load(NAME, profile="smoke", **kw)


def _refusal(**kw) -> str:
    with pytest.raises(ArtifactError) as e:
        _load(**kw)
    return str(e.value)


CHANGED = ("Artifact 'base': {fn} does not match its manifest (sha256 differs); the file was changed or corrupted "
           "after it was saved. Refusing to load it. Re-run 09_modern_architecture.")
MISSING = "Artifact 'base' is incomplete: {fn} is missing. Re-run 09_modern_architecture."
EDITED = ("Artifact 'base': manifest.json was edited after the artifact was saved (its config, metrics or file "
          "list no longer match its manifest_sha256). Refusing to load it. Change settings such as rope_theta in "
          "the notebook, not in the manifest, and re-run 09_modern_architecture.")


def _flip_middle(p):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x80
    p.write_bytes(bytes(data))


TAMPER = {
    "one byte changed": (_flip_middle, CHANGED),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-1]), CHANGED),
    "emptied": (lambda p: p.write_bytes(b""), CHANGED),
    "byte appended": (lambda p: p.write_bytes(p.read_bytes() + b"\n"), CHANGED),
    "deleted": (lambda p: p.unlink(), MISSING),
    "replaced by a folder": (lambda p: (p.unlink(), p.mkdir()), MISSING),
}


@pytest.mark.parametrize("how", list(TAMPER))
@pytest.mark.parametrize("fn", FILES)
def test_each_file_tampered_is_refused_with_what_to_do(fn, how):
    """Every listed file, each kind of damage: the eager load refuses, naming the file and the notebook to re-run."""
    change, message = TAMPER[how]
    art = _save()
    change(art.path / fn)
    assert _refusal() == message.format(fn=fn)


@pytest.mark.parametrize("fn", FILES)
def test_a_changed_file_is_refused_by_a_lazy_load_when_opened(fn):
    """lazy= skips hashing at load, not verification: the same-size change is refused on first use."""
    art = _save()
    _flip_middle(art.path / fn)
    lazy = _load(lazy=lambda name: True)
    with pytest.raises(ArtifactError) as e:
        lazy.bytes(fn)
    assert str(e.value) == CHANGED.format(fn=fn)
    with pytest.raises(ArtifactError) as e:
        lazy.memmap(fn)
    assert str(e.value) == CHANGED.format(fn=fn)


def test_swapping_two_files_is_refused():
    """Two valid files exchanged (each intact, under the other's name): the hashes are per name, so refused."""
    art = _save()
    a, b = art.path / "notes.txt", art.path / "vocab.json"
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    assert _refusal() in {CHANGED.format(fn="notes.txt"), CHANGED.format(fn="vocab.json")}


def test_an_unlisted_file_is_ignored_and_never_served():
    """A file dropped into the folder later is not part of the artifact: the load ignores it and will not serve it."""
    art = _save()
    (art.path / "extra.json").write_text('{"injected": true}')
    (art.path / "tensors2.safetensors").write_bytes(b"junk")
    loaded = _load()
    assert loaded.files() == sorted(FILES)
    for fn in ("extra.json", "tensors2.safetensors"):
        with pytest.raises(ArtifactError, match=f"has no file '{fn}'"):
            loaded.bytes(fn)
        with pytest.raises(ArtifactError, match=f"has no file '{fn}'"):
            loaded.memmap(fn)
    assert loaded.tensors()["w"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def _edit(art, change, reseal=False):
    mpath = art.path / "manifest.json"
    manifest = json.loads(mpath.read_text("utf-8"))
    change(manifest)
    mpath.write_text(json.dumps(artifacts.seal(manifest) if reseal else manifest), "utf-8")


@pytest.mark.parametrize("fn", FILES)
def test_an_edited_hash_in_the_manifest_is_refused(fn):
    """A listed sha256 edited by hand breaks the seal; re-sealed (a crafted manifest), the file check refuses it."""
    art = _save()
    _edit(art, lambda m: m["files"][fn].__setitem__("sha256", "0" * 64))
    assert _refusal() == EDITED
    _edit(art, lambda m: None, reseal=True)
    assert _refusal() == CHANGED.format(fn=fn)


@pytest.mark.parametrize("change", [
    lambda m: m["config"].__setitem__("rope_theta", 500_000.0),   # the documented example
    lambda m: m["config"].__setitem__("new_key", 1),
    lambda m: m["metrics"].__setitem__("val_loss", 0.1),          # a nicer metric
    lambda m: m["metrics"].pop("val_loss"),
    lambda m: m["files"]["raw.bin"].__setitem__("bytes", 4),
    lambda m: m["files"].pop("raw.bin"),                           # a file dropped from the list
    lambda m: m["files"].__setitem__("extra.json", m["files"]["vocab.json"]),  # a file added to the list
    lambda m: m.__setitem__("manifest_sha256", m["manifest_sha256"][:-1] + "0"
                            if m["manifest_sha256"][-1] != "0" else m["manifest_sha256"][:-1] + "1"),
    lambda m: m.pop("manifest_sha256"),
], ids=["config", "config-added", "metric", "metric-dropped", "size", "file-dropped", "file-added", "seal",
        "seal-removed"])
def test_an_edited_manifest_is_refused_with_what_to_do(change):
    """Config, metrics, the file list or the seal itself, edited by hand: refused, telling to re-run the notebook."""
    art = _save()
    _edit(art, change)
    assert _refusal() == EDITED


@pytest.mark.parametrize("text", ['{"name": "base"', "", "[]", "null", '"x"', '{"manifest_sha256": 1}',
                                  '{"files": []}'])
def test_a_manifest_that_is_not_one_is_unreadable(text):
    """Truncated, empty or of the wrong shape: 'unreadable', with the notebook to re-run."""
    art = _save()
    (art.path / "manifest.json").write_text(text)
    message = _refusal()
    assert message.startswith("Artifact 'base': manifest.json is unreadable (")
    assert message.endswith("). Re-run 09_modern_architecture.")


def test_a_deleted_manifest_means_a_missing_artifact():
    """Without its manifest the folder is not an artifact: the message says which notebook to run."""
    art = _save()
    (art.path / "manifest.json").unlink()
    assert not artifacts.exists(NAME, profile="smoke")
    assert _refusal().endswith("Run notebook 09_modern_architecture with PROFILE='smoke' first "
                               "(e.g. `make course PROFILE=smoke UPTO=09`).")


def test_an_artifact_copied_under_another_name_is_refused():
    """checkpoints/smoke/gpt-base copied to checkpoints/smoke/base must not load as 'base' (cf. the profile check)."""
    import shutil

    art = artifacts.save("gpt-base", notebook="08_pretraining", profile="smoke", tensors={"w": torch.zeros(2)})
    shutil.copytree(art.path, art.path.parent / NAME)
    with pytest.raises(ArtifactError, match="Re-run 09_modern_architecture") as e:
        _load()
    assert "holds the artifact 'gpt-base'" in str(e.value)  # the message names what the folder really holds
