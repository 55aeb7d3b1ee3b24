"""nanolm.train.checkpoint: the folder's manifest is checked for real (names inside the folder, format, hashes)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nanolm.core.files import sha256_bytes
from nanolm.train import checkpoint as ck
from nanolm.train.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
BLOBS = {ck.MODEL_FILE: b"model", ck.OPTIM_FILE: b"optim", ck.OPTIM_META: b"{}",
         ck.TRAINER_FILE: b'{"step": 3, "train_config": {"lr": 0.001}}'}


def _edit_manifest(path, change):
    mpath = path / ck.MANIFEST
    manifest = json.loads(mpath.read_text())
    change(manifest)
    mpath.write_text(json.dumps(manifest))


def test_round_trip(tmp_path):
    path = ck.write_checkpoint(tmp_path / "ck", BLOBS)
    assert ck.read_checkpoint(path) == BLOBS
    assert ck.checkpoint_info(path)["step"] == 3


@pytest.mark.parametrize("escape", ["../outside.bin", "../../outside.bin", "/tmp/outside.bin", ".hidden", "a/b"])
def test_listed_names_must_stay_inside_the_folder(tmp_path, escape):
    """A manifest naming a file outside its folder is refused, even with that file's right sha256."""
    path = ck.write_checkpoint(tmp_path / "run" / "ck", BLOBS)
    secret = b"not part of the checkpoint"
    for where in (tmp_path / "run" / "outside.bin", tmp_path / "outside.bin"):
        where.write_bytes(secret)
    _edit_manifest(path, lambda m: m["files"].__setitem__(escape, {"sha256": sha256_bytes(secret),
                                                                      "bytes": len(secret)}))
    with pytest.raises(CheckpointError, match="plain file name"):
        ck.read_checkpoint(path)


def test_edited_trainer_config_is_refused(tmp_path):
    """trainer.json (step, train_config, model config) is a hashed file: editing it is caught."""
    path = ck.write_checkpoint(tmp_path / "ck", BLOBS)
    (path / ck.TRAINER_FILE).write_bytes(BLOBS[ck.TRAINER_FILE].replace(b"0.001", b"0.002"))
    with pytest.raises(CheckpointError, match=r"trainer.json does not match .*sha256 differs"):
        ck.read_checkpoint(path)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.__setitem__("format", "something-else"), "not a training checkpoint"),
    (lambda m: m.pop("format"), "unreadable or not a training checkpoint"),
    (lambda m: m.__setitem__("version", ck.VERSION + 1), "version"),
    (lambda m: m.__setitem__("files", ["model.safetensors"]), "unreadable"),
    (lambda m: m["files"][ck.MODEL_FILE].pop("sha256"), "unreadable"),
])
def test_bad_manifests_are_refused(tmp_path, change, message):
    path = ck.write_checkpoint(tmp_path / "ck", BLOBS)
    _edit_manifest(path, change)
    with pytest.raises(CheckpointError, match=message):
        ck.read_checkpoint(path)


def test_format_is_checked_under_python_O(tmp_path):
    """`python -O` drops asserts: the format check must be a real one."""
    path = ck.write_checkpoint(tmp_path / "ck", BLOBS)
    _edit_manifest(path, lambda m: m.__setitem__("format", "not-a-checkpoint"))
    code = ("import sys; from pathlib import Path; from nanolm.train import checkpoint as ck\n"
            "try:\n    ck.read_checkpoint(Path(sys.argv[1]))\nexcept ck.CheckpointError:\n    sys.exit(0)\n"
            "sys.exit('loaded a folder whose manifest is not a training checkpoint')")
    run = subprocess.run([sys.executable, "-O", "-c", code, str(path)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]


def test_missing_file_and_missing_manifest(tmp_path):
    path = ck.write_checkpoint(tmp_path / "ck", BLOBS)
    (path / ck.OPTIM_META).unlink()
    with pytest.raises(CheckpointError, match="incomplete: optimizer.json is missing"):
        ck.read_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ck.read_checkpoint(tmp_path / "nothing")
