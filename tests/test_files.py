"""nanolm.core.files: atomic writes, the one atomic folder swap and its recovery, plain names, verified reads."""

import os
import time
import types

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


def test_sha256_file_never_reads_more_than_one_chunk_at_a_time(tmp_path, monkeypatch):
    """A multi-GiB token shard must hash in bounded memory: every read asks for 1 MiB, never the whole file."""
    path = tmp_path / "shard.bin"
    path.write_bytes(b"x" * 10)
    sizes = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            sizes.append(n)
            return self.f.read(n)

    monkeypatch.setattr(files, "open", lambda p, mode: Spy(real_open(p, mode)), raising=False)
    assert files.sha256_file(path) == sha256_bytes(b"x" * 10)
    assert sizes == [1 << 20, 1 << 20]


def test_write_bytes_atomic_writes_through_a_hidden_temp_file_beside_the_target(tmp_path, monkeypatch):
    """The half-written file is '.<name>.<random>.tmp': hidden, so no listing or glob of '*.bin' ever sees it."""
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(files.os, "replace", lambda src, dst: (seen.append(os.path.basename(src)),
                                                                real_replace(src, dst)))
    files.write_bytes_atomic(tmp_path / "x.bin", b"1")
    assert len(seen) == 1 and seen[0].startswith(".x.bin.") and seen[0].endswith(".tmp"), seen


def test_write_bytes_atomic_cleans_up_and_keeps_the_original_error(tmp_path, monkeypatch):
    """A failed write removes its temp file and re-raises the real error (not one from the cleanup)."""
    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        files.write_bytes_atomic(tmp_path / "x.bin", b"data")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_right_after_the_rename_is_not_masked(tmp_path, monkeypatch):
    """Ctrl-C landing just after os.replace: the temp file is already gone, cleanup must not raise over it."""
    real_replace = os.replace

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        files.write_bytes_atomic(tmp_path / "x.bin", b"data")
    assert (tmp_path / "x.bin").read_bytes() == b"data"


def test_write_folder_atomic_names_its_leftovers_by_a_time_stamp(tmp_path, monkeypatch):
    """.<name>.tmp-<ns> / .<name>.old-<ns>: recover_folder() orders old copies by that number to pick the newest."""
    files.write_folder_atomic(tmp_path / "art", {MARK: b"{}"}, marker=MARK)
    renamed = []
    real_rename = files.Path.rename
    monkeypatch.setattr(files.Path, "rename", lambda p, t: (renamed.append((p.name, t.name)), real_rename(p, t))[1])
    files.write_folder_atomic(tmp_path / "art", {MARK: b"{}"}, marker=MARK)
    (_, old), (tmp, _) = renamed  # art -> .art.old-<ns>, then .art.tmp-<ns> -> art
    assert old.startswith(".art.old-") and tmp.startswith(".art.tmp-")
    assert files._stamp(tmp_path / old) == files._stamp(tmp_path / tmp) > time.time_ns() - 60 * 10**9


def _racing_rmtree(monkeypatch):
    """shutil.rmtree as seen by the loser of a race: another process deleted the folder a moment before."""
    import shutil

    real = shutil.rmtree

    def rmtree(path, **kw):
        real(path)
        real(path, **kw)

    monkeypatch.setattr(files.shutil, "rmtree", rmtree)


def test_a_failed_folder_write_keeps_its_own_error_when_cleanup_races(tmp_path, monkeypatch):
    """The temp folder vanishing under the cleanup must not replace the real error of the failed write."""
    def crash(path):
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(files, "fsync_dir", crash)
    _racing_rmtree(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        files.write_folder_atomic(tmp_path / "art", {MARK: b"{}"}, marker=MARK)
    assert list(tmp_path.iterdir()) == []


def test_two_recoveries_racing_over_an_old_copy_both_succeed(tmp_path, monkeypatch):
    """Two notebooks loading at once both sweep .art.old-*: the one that finds it gone must not crash."""
    _folder(tmp_path / "art", "current")
    _folder(tmp_path / ".art.old-6", "garbage")
    _racing_rmtree(monkeypatch)
    files.recover_folder(tmp_path / "art", MARK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_a_temp_folder_exactly_stale_s_old_is_kept(tmp_path, monkeypatch):
    """Only a temp folder strictly older than stale_s is swept (the boundary belongs to the live writer)."""
    tmp = tmp_path / ".art.tmp-1"
    tmp.mkdir()
    os.utime(tmp, (1_000_000, 1_000_000))
    monkeypatch.setattr(files, "time", types.SimpleNamespace(time=lambda: 1_000_000 + 50.0))  # a frozen clock
    files.recover_folder(tmp_path / "art", MARK, stale_s=50.0)
    assert tmp.exists()
    files.recover_folder(tmp_path / "art", MARK, stale_s=49.5)
    assert not tmp.exists()


def test_stamp_reads_the_number_after_the_last_dash():
    """Names may hold dashes ('my-art'); a tail that is not a number sorts before every real stamp."""
    from pathlib import Path

    assert files._stamp(Path(".my-art.old-1700000000123")) == 1700000000123
    assert files._stamp(Path(".art.old-x")) == -1
    assert files._stamp(Path("nodash")) == -1


def test_plain_name_error_says_which_name_and_what_is_allowed():
    """The refusal names the offending name and the rule, with a caller-chosen noun ('file' by default)."""
    rule = "is not a plain file name inside its folder (no '/', '\\', '..' or leading '.')"
    with pytest.raises(ValueError) as e:
        files.check_plain_name("a/b")
    assert str(e.value) == f"file name 'a/b' {rule}"
    with pytest.raises(ValueError) as e:
        files.check_plain_name("..", "listed file")
    assert str(e.value) == f"listed file name '..' {rule}"
