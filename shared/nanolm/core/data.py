"""The course's datasets: a registry (data/manifest.json), `make data`, and loading by name.

Every file has a sha256 in the manifest. `fetch()` fills data/ either by copying from
a local mirror folder (same layout: <dataset>/<file>) or by downloading from the
public source; a file reaches its final name only after its hash checks out, so an
interrupted or corrupted download never looks complete.

    python -m nanolm.data fetch [--mirror DIR] [--only NAME ...]
    python -m nanolm.data verify
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import io
import json
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from . import paths
from .files import sha256_bytes, write_bytes_atomic

MANIFEST = paths.ROOT / "data" / "manifest.json"


class DataError(RuntimeError):
    """A dataset is missing, incomplete, or does not match its recorded sha256."""


def registry(manifest: Path = MANIFEST) -> dict[str, dict]:
    """All datasets by name, as recorded in data/manifest.json."""
    return json.loads(Path(manifest).read_text("utf-8"))["datasets"]


def path(name: str, filename: str | None = None, data_dir: Path | None = None) -> Path:
    """Path to a dataset file (or its folder); a clear error that says `make data` if it is missing."""
    reg = registry()
    if name not in reg:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(reg))}")
    folder = Path(data_dir or paths.data_dir()) / name
    wanted = [filename] if filename else list(reg[name]["files"])
    for fn in wanted:
        meta = reg[name]["files"].get(fn)
        if meta is None:
            raise DataError(f"dataset {name!r} has no file {fn!r}; it has {sorted(reg[name]['files'])}")
        f = folder / fn
        if not f.exists() or f.stat().st_size != meta["bytes"]:
            raise DataError(
                f"dataset {name!r} is not in {folder} ({fn} is missing or incomplete). "
                "Run `make data` (online) or `make data MIRROR=/path/to/mirror` to fetch it."
            )
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
    """True when the bytes (or file) have the manifest's sha256; .gz files may instead match by content."""
    data = data_or_path.read_bytes() if isinstance(data_or_path, Path) else data_or_path
    if sha256_bytes(data) == meta["sha256"]:
        return True
    # gzip headers hold a timestamp and a name, so two faithful copies can differ in bytes.
    want = meta.get("gunzip_sha256")
    if want:
        try:
            return sha256_bytes(gzip.decompress(data)) == want
        except (OSError, EOFError):
            return False
    return False


def verify(names: list[str] | None = None, data_dir: Path | None = None) -> dict[str, list[str]]:
    """{dataset: [problem, ...]} for every missing or mismatched file; empty when all is well."""
    problems: dict[str, list[str]] = {}
    root = Path(data_dir or paths.data_dir())
    for name, ds in _select(names).items():
        for fn, meta in ds["files"].items():
            f = root / name / fn
            if not f.exists():
                problems.setdefault(name, []).append(f"{fn}: missing")
            elif not matches(f, meta):
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
    failures = []
    for name, ds in _select(names).items():
        for fn, meta in ds["files"].items():
            dest = root / name / fn
            if dest.exists() and matches(dest, meta):
                continue
            try:
                data = _obtain(name, fn, meta, mirror=mirror, base_url=base_url)
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


def _obtain(name: str, fn: str, meta: dict, *, mirror: Path | None, base_url: str | None) -> bytes:
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
    sources = []
    for src in recipe["sources"]:
        blob = download(src["url"])
        if "sha256" in src and sha256_bytes(blob) != src["sha256"]:
            raise DataError(f"{name}/{fn}: source {src['url']} does not match its recorded sha256")
        sources.append(blob)
    return RECIPES[recipe["recipe"]](sources, **recipe.get("args", {}))


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
    """`python -m nanolm.data fetch|verify`."""
    ap = argparse.ArgumentParser(prog="python -m nanolm.data", description=__doc__,
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
