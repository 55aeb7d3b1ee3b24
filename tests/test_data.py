"""nanolm.core.data: the manifest, copying from a mirror, and real downloads from a local HTTP server."""

import gzip
import http.server
import io
import json
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from nanolm.core import data, paths
from nanolm.core.data import DataError
from nanolm.core.files import sha256_bytes

MIRROR = paths.ROOT.parent / "shared" / "datasets"
needs_mirror = pytest.mark.skipif(not MIRROR.exists(), reason="dataset mirror ../shared/datasets not present")


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
            assert sha256_bytes((MIRROR / name / fn).read_bytes()) == meta["sha256"], f"{name}/{fn}"


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
