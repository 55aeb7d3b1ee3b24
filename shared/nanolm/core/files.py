"""Small file helpers: sha256, atomic writes (temp file + rename), the one atomic folder swap, verified reads."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
STALE_S = 3600.0  # a temp folder untouched this long belongs to a writer that died, not one at work


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows within one filesystem
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write `obj` as indented, key-sorted JSON (stable diffs)."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames inside `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_folder_atomic(final: str | os.PathLike, files: dict[str, bytes], marker: str) -> Path:
    """Replace folder `final` by one holding `files`, so readers see the old folder or the new one.

    The files go into a temp folder beside it (each fsynced; `marker`, e.g. the manifest, last, so its
    presence means complete), the temp folder is fsynced, then two renames swap it in. A crash between
    the renames leaves the old folder under a hidden name, which recover_folder() puts back.
    """
    final = Path(final)
    if marker not in files:
        raise ValueError(f"the marker file {marker!r} must be among the files written")
    final.parent.mkdir(parents=True, exist_ok=True)
    stamp = f"{time.time_ns()}"
    tmp = final.parent / f".{final.name}.tmp-{stamp}"
    tmp.mkdir()
    try:
        for name in [n for n in files if n != marker] + [marker]:
            write_bytes_atomic(tmp / name, files[name])
        fsync_dir(tmp)
        old = final.parent / f".{final.name}.old-{stamp}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)  # a crash between the two renames is mended by recover_folder()
        fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def recover_folder(final: str | os.PathLike, marker: str, stale_s: float = STALE_S) -> None:
    """Mend what a crashed write_folder_atomic left: the old copy back if it died between its renames, no debris.

    Old copies (.<name>.old-*) are garbage once `final` exists; temp folders (.<name>.tmp-*) only when
    older than `stale_s`, since a fresh one may belong to a writer still at work.
    """
    final = Path(final)
    if not final.parent.exists():
        return
    olds = sorted(_leftovers(final, "old"), key=_stamp)
    complete = [o for o in olds if (o / marker).exists()]
    if not final.exists() and complete:
        complete[-1].rename(final)
        fsync_dir(final.parent)
        olds.remove(complete[-1])
    if final.exists():
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)
    now = time.time()
    for tmp in _leftovers(final, "tmp"):
        try:
            if now - tmp.stat().st_mtime > stale_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # another process swept it first
            pass


def _leftovers(final: Path, kind: str) -> list[Path]:
    """The hidden .<name>.<kind>-<stamp> folders that write_folder_atomic makes beside `final`."""
    return [p for p in final.parent.glob(f".{glob.escape(final.name)}.{kind}-*") if p.is_dir()]


def _stamp(folder: Path) -> int:
    tail = folder.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def check_plain_name(name: str, what: str = "file") -> str:
    """`name` if it is a plain file name that stays inside its folder (no '/', '\\', '..', leading '.')."""
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise ValueError(f"{what} name {name!r} is not a plain file name inside its folder "
                         "(no '/', '\\', '..' or leading '.')")
    return name


def read_verified(folder: str | os.PathLike, name: str, meta: dict) -> bytes:
    """The bytes of folder/name, checked against meta's size and sha256.

    FileNotFoundError when it is missing, ValueError for a name that leaves the folder or bytes that differ.
    """
    path = Path(folder) / check_plain_name(name)
    if not path.is_file():
        raise FileNotFoundError(f"{name} is missing")
    data = path.read_bytes()
    if len(data) != meta["bytes"] or sha256_bytes(data) != meta["sha256"]:
        raise ValueError(f"{name} does not match its manifest (sha256 differs)")
    return data
