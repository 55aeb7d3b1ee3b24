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


# Killing survivors of `make mutants` (core/files): each test fails on a planted bug the others let through.


def test_sha256_file_streams_in_chunks_and_equals_hashlib(tmp_path):
    """Read in 1 MiB chunks: a file of 2.5 MiB must hash like the whole byte string (hashlib, independent)."""
    import hashlib

    data = os.urandom(5 * (1 << 19))
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert files.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_write_bytes_atomic_makes_missing_parents_and_renames_within_the_folder(tmp_path, monkeypatch):
    """The temp file lives beside its target (a rename across filesystems is not atomic), parents are made."""
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append((os.path.dirname(src), os.path.dirname(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    target = tmp_path / "a" / "b" / "c.bin"
    files.write_bytes_atomic(target, b"xyz")
    assert target.read_bytes() == b"xyz"
    assert seen == [(str(target.parent), str(target.parent))]


def test_write_json_atomic_is_stable_utf8_with_a_final_newline(tmp_path):
    """Key-sorted, indented, non-ASCII kept as characters (not \\u escapes), ending in a newline: stable diffs."""
    path = files.write_json_atomic(tmp_path / "x.json", {"b": "é東", "a": [1, 2]})
    text = path.read_text("utf-8")
    assert text == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": "é東"\n}\n'


def test_plain_names_may_hold_any_letter():
    for name in ("X.json", "model.safetensors", "a b.txt", "tokenizer_config.json"):
        assert files.check_plain_name(name) == name
