"""nanolm.core.files: atomic writes, the one atomic folder swap and its recovery, plain names, verified reads."""

import os
import time

import pytest

from nanolm.core import files
from nanolm.core.files import sha256_bytes

MARK = "manifest.json"


def _folder(path, text):
    path.mkdir(parents=True)
    (path / "a.txt").write_text(text)
    (path / MARK).write_text("{}")
    return path


def _age(path, seconds):
    """Make a leftover folder look `seconds` old."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_write_bytes_atomic_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "x.bin"
    files.write_bytes_atomic(p, b"one")
    files.write_bytes_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    assert sorted(q.name for q in p.parent.iterdir()) == ["x.bin"]
    files.write_json_atomic(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "j.json").read_text().splitlines()[1] == '  "a": ['  # sorted keys, indented


def test_write_folder_atomic_swaps_and_cleans_up(tmp_path):
    final = tmp_path / "art"
    files.write_folder_atomic(final, {"a.txt": b"1", MARK: b"{}"}, marker=MARK)
    files.write_folder_atomic(final, {"b.txt": b"2", MARK: b"{}"}, marker=MARK)
    assert sorted(p.name for p in final.iterdir()) == ["b.txt", MARK], "the old folder is replaced whole"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]
    with pytest.raises(ValueError, match="marker"):
        files.write_folder_atomic(final, {"a.txt": b"1"}, marker=MARK)


def test_recover_after_a_crash_between_the_two_renames(tmp_path):
    """final was renamed away, the new folder never moved in: the old copy comes back, the temp stays while fresh."""
    _folder(tmp_path / ".art.old-100", "old")
    _folder(tmp_path / ".art.tmp-100", "new")
    files.recover_folder(tmp_path / "art", MARK)
    assert (tmp_path / "art" / "a.txt").read_text() == "old"
    assert (tmp_path / ".art.tmp-100").exists(), "a fresh temp folder may belong to a writer still at work"
    _age(tmp_path / ".art.tmp-100", 2 * files.STALE_S)
    files.recover_folder(tmp_path / "art", MARK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_recover_picks_the_newest_complete_old_copy(tmp_path):
    _folder(tmp_path / ".art.old-99", "older")
    _folder(tmp_path / ".art.old-100", "newest")
    (tmp_path / ".art.old-101").mkdir()  # no marker: never a complete artifact
    files.recover_folder(tmp_path / "art", MARK)
    assert (tmp_path / "art" / "a.txt").read_text() == "newest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"], "the other old copies are garbage now"


def test_recover_sweeps_a_stale_temp_folder_and_keeps_the_artifact(tmp_path):
    """A writer killed before its renames leaves a temp folder; the artifact is untouched and the temp goes."""
    _folder(tmp_path / "art", "current")
    stale = tmp_path / ".art.tmp-5"
    stale.mkdir()
    (stale / "a.txt").write_text("half")
    _age(stale, 2 * files.STALE_S)
    _folder(tmp_path / ".art.old-6", "after the second rename")  # a finished swap that died before its rmtree
    files.recover_folder(tmp_path / "art", MARK)
    assert (tmp_path / "art" / "a.txt").read_text() == "current"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_recover_leaves_other_folders_alone(tmp_path):
    _folder(tmp_path / ".other.old-1", "x")
    _folder(tmp_path / ".art[1].old-1", "glob characters in the name")
    files.recover_folder(tmp_path / "art", MARK)
    assert not (tmp_path / "art").exists() and (tmp_path / ".other.old-1").exists()
    files.recover_folder(tmp_path / "art[1]", MARK)
    assert (tmp_path / "art[1]" / "a.txt").exists()
    files.recover_folder(tmp_path / "missing" / "art", MARK)  # no parent: nothing to do


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "../../etc/passwd", "/etc/passwd", "a/b", ".hidden",
                                 "a\\b", "x\0y", 3])
def test_plain_names_only(bad):
    with pytest.raises(ValueError, match="plain file name"):
        files.check_plain_name(bad)


def test_plain_names_pass():
    for ok in ["tensors.safetensors", "model.safetensors", "a..b", "LICENSE", "code.train.bin"]:
        assert files.check_plain_name(ok) == ok


def test_read_verified(tmp_path):
    (tmp_path / "f").write_bytes(b"hello")
    meta = {"sha256": sha256_bytes(b"hello"), "bytes": 5}
    assert files.read_verified(tmp_path, "f", meta) == b"hello"
    with pytest.raises(FileNotFoundError):
        files.read_verified(tmp_path, "g", meta)
    (tmp_path / "f").write_bytes(b"hellO")
    with pytest.raises(ValueError, match="sha256 differs"):
        files.read_verified(tmp_path, "f", meta)
    with pytest.raises(ValueError, match="plain file name"):
        files.read_verified(tmp_path, "../f", meta)
