"""Artifacts: what one notebook saves and a later one loads, checked by sha256.

An artifact is a folder checkpoints/<profile>/<name>/ holding
  tensors.safetensors   the tensors (no pickle anywhere),
  <file>.json / .txt    config, vocabularies, anything small and plain,
  manifest.json         producer notebook, profile, git commit, config, metrics,
                        and the sha256 and size of every other file,
                        sealed by manifest_sha256 (the sha256 of the rest of it).
A save writes a fresh folder beside the old one and swaps the two by renames, so a
crash mid-save leaves the previous artifact loadable. A load re-hashes every file
and refuses one that differs from its manifest, a manifest edited by hand (its seal differs: change a
setting such as rope_theta in the notebook and re-run it), and a listed name that is not a plain file
name inside the folder. Big files can be left unread (`lazy`) and are verified when opened (memmap()).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paths, profiles
from .files import (
    check_plain_name,
    read_verified,
    recover_folder,
    sha256_bytes,
    write_folder_atomic,
    write_json_atomic,
)
from .syllabus import producer_of

TENSORS = "tensors.safetensors"
MANIFEST = "manifest.json"
SEAL = "manifest_sha256"

class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete or has been changed since it was saved."""


@dataclass
class Artifact:
    """A verified artifact on disk; read its parts with the methods below."""

    name: str
    profile: str
    path: Path
    manifest: dict
    _blobs: dict[str, bytes]
    _lazy: dict[str, dict] = field(default_factory=dict)  # listed, not read yet: verified when opened

    @property
    def config(self) -> dict:
        return self.manifest.get("config", {})

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})

    def files(self) -> list[str]:
        return sorted({*self._blobs, *self._lazy})

    def bytes(self, filename: str) -> bytes:
        if filename in self._lazy:
            self._blobs[filename] = _read(self.name, self.path, filename, self._lazy.pop(filename))
        if filename not in self._blobs:
            raise ArtifactError(f"artifact {self.name!r} has no file {filename!r}; it has {self.files()}")
        return self._blobs[filename]

    def text(self, filename: str) -> str:
        return self.bytes(filename).decode("utf-8")

    def json(self, filename: str) -> Any:
        return json.loads(self.bytes(filename))

    def tensors(self) -> dict:
        """The tensors, loaded from the verified bytes (safetensors: no code runs on load)."""
        from safetensors.torch import load

        return load(self.bytes(TENSORS))

    def memmap(self, filename: str, dtype: Any = "uint8"):
        """A listed file as a read-only numpy memmap, verified by hashing the very bytes it maps (read once)."""
        import numpy as np

        meta = self.manifest["files"].get(filename)
        if meta is None:
            raise ArtifactError(f"artifact {self.name!r} has no file {filename!r}; it has {self.files()}")
        if meta["bytes"] == 0:  # numpy cannot map an empty file; its size says all there is to say
            if (self.path / filename).stat().st_size or meta["sha256"] != sha256_bytes(b""):
                raise ArtifactError(_changed(self.name, filename))
            return np.zeros(0, dtype=dtype)
        mm = np.memmap(self.path / filename, dtype=np.uint8, mode="r")
        if mm.size != meta["bytes"] or sha256_bytes(mm) != meta["sha256"]:
            raise ArtifactError(_changed(self.name, filename))
        return mm.view(dtype)


def producer(name: str) -> str:
    """The notebook that makes artifact `name` (adapters/<domain> -> 11_lora)."""
    return producer_of(name) or "the notebook that saves it"


def artifact_dir(name: str, profile: str, root: Path | None = None) -> Path:
    """checkpoints/<profile>/<name>; a profile other than smoke/cpu/gpu or a bad name is a ValueError."""
    _check_name(name)
    return Path(root or paths.checkpoints_dir()) / profiles.check(profile) / name


def save(
    name: str,
    *,
    notebook: str,
    profile: str,
    tensors: dict | None = None,
    config: dict | None = None,
    metrics: dict | None = None,
    files: dict[str, str | bytes | dict | list] | None = None,
    root: Path | None = None,
) -> Artifact:
    """Save an artifact atomically and return it, verified. `files` maps names to text, bytes or JSON data."""
    final = artifact_dir(name, profile, root)
    blobs = _encode_files(files or {})
    if tensors:
        from safetensors.torch import save as st_save

        blobs[TENSORS] = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    manifest = seal({
        "name": name,
        "notebook": notebook,
        "profile": profile,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": _git_commit(),
        "config": config or {},
        "metrics": metrics or {},
        "files": {fn: {"sha256": sha256_bytes(b), "bytes": len(b)} for fn, b in sorted(blobs.items())},
    })  # seal() fails here, before touching disk, if config/metrics are not JSON
    write_folder_atomic(final, {**blobs, MANIFEST: _json_bytes(manifest)}, marker=MANIFEST)
    return Artifact(name, profile, final, manifest, blobs)


def load(name: str, *, profile: str, root: Path | None = None,
         lazy: Callable[[str], bool] | None = None) -> Artifact:
    """Load and verify an artifact; a missing one names the notebook to run, a changed one is refused.

    Files for which lazy(filename) is true are not read now (only their presence and size are checked);
    Artifact.memmap() or .bytes() verifies them when they are opened.
    """
    folder = artifact_dir(name, profile, root)
    _recover(folder)
    manifest = _read_manifest(name, profile, folder)
    blobs, later = {}, {}
    for fn, meta in manifest["files"].items():
        if lazy is not None and lazy(fn):
            if not (folder / fn).is_file() or (folder / fn).stat().st_size != meta["bytes"]:
                raise ArtifactError(_changed(name, fn) if (folder / fn).is_file() else _incomplete(name, fn))
            later[fn] = meta
        else:
            blobs[fn] = _read(name, folder, fn, meta)
    return Artifact(name, profile, folder, manifest, blobs, later)


def exists(name: str, *, profile: str, root: Path | None = None) -> bool:
    """True when the artifact's manifest is present (load() still verifies its files)."""
    folder = artifact_dir(name, profile, root)
    _recover(folder)
    return (folder / MANIFEST).exists()


def update_metrics(name: str, *, profile: str, metrics: dict, root: Path | None = None) -> None:
    """Merge `metrics` into a saved artifact's manifest and seal it again (an edited manifest is refused)."""
    folder = artifact_dir(name, profile, root)
    _recover(folder)
    if not (folder / MANIFEST).exists():
        raise ArtifactError(f"cannot record metrics: artifact {name!r} ({profile}) has not been saved yet")
    manifest = _read_manifest(name, profile, folder)  # checks the seal, so a hand edit is never re-sealed
    manifest["metrics"] = {**manifest.get("metrics", {}), **metrics}
    write_json_atomic(folder / MANIFEST, seal(manifest))


def seal(manifest: dict) -> dict:
    """The manifest with manifest_sha256: the sha256 of its canonical JSON without that key."""
    body = {k: v for k, v in manifest.items() if k != SEAL}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {**body, SEAL: sha256_bytes(canonical.encode("utf-8"))}


def save_model(name: str, model, kind: str, *, notebook: str, profile: str, metrics: dict | None = None,
               files: dict | None = None) -> Artifact:
    """Save a model that has .tensors() and .config.to_dict(); the config records its kind ("gpt", "llama")."""
    return save(name, notebook=notebook, profile=profile, tensors=model.tensors(),
                config={"model": kind, **model.config.to_dict()}, metrics=metrics, files=files)


def load_model(name: str, kind: str, model_cls, config_cls, *, profile: str, device="cpu"):
    """Load a model saved by save_model (sha256-verified) -> (model in eval mode on device, the artifact).

    An artifact of another kind is refused: a GPT's weights do not fit a Llama, and the message says which it is."""
    art = load(name, profile=profile)
    cfg = dict(art.config)
    found = cfg.pop("model", None)
    if found != kind:
        raise ValueError(f"artifact {name!r} does not hold a {model_cls.__name__} (it holds {found!r}; "
                         f"config: {art.config})")
    model = model_cls.from_tensors(config_cls.from_dict(cfg), art.tensors())
    return model.to(device).eval(), art


# ----------------------------------------------------------------------------- helpers


def _check_name(name: str) -> None:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ValueError(f"bad artifact name {name!r}: use words like 'base' or 'adapters/code'")


def _encode_files(files: dict) -> dict[str, bytes]:
    blobs = {}
    for fn, content in files.items():
        if fn in (MANIFEST, TENSORS):
            raise ValueError(f"bad file name {fn!r} in artifact: {MANIFEST} and {TENSORS} are written by save()")
        check_plain_name(fn, "artifact file")
        if isinstance(content, bytes):
            blobs[fn] = content
        elif isinstance(content, str):
            blobs[fn] = content.encode("utf-8")
        else:
            blobs[fn] = (json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    return blobs


def _read_manifest(name: str, profile: str, folder: Path) -> dict:
    """manifest.json, checked: present, sealed, saved for this profile, plain file names with sha256 and size."""
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise ArtifactError(
            f"Artifact {name!r} for profile {profile!r} is missing (looked in {folder}). "
            f"Run {'notebook ' if producer_of(name) else ''}{producer(name)} with PROFILE={profile!r} first"
            + (f" (e.g. `make course PROFILE={profile} UPTO={producer_of(name)[:2]}`)." if producer_of(name) else ".")
        )
    try:
        manifest = json.loads(mpath.read_text("utf-8"))
        sealed = manifest.get(SEAL) == seal(manifest)[SEAL]
        listed = manifest["files"]
        bad = [fn for fn, m in listed.items() if not (isinstance(m["sha256"], str) and isinstance(m["bytes"], int))]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"Artifact {name!r}: manifest.json is unreadable ({e!r}). Re-run {producer(name)}.") from e
    if not sealed:
        raise ArtifactError(
            f"Artifact {name!r}: manifest.json was edited after the artifact was saved (its config, metrics or "
            f"file list no longer match its {SEAL}). Refusing to load it. Change settings such as rope_theta "
            f"in the notebook, not in the manifest, and re-run {producer(name)}.")
    if bad:
        raise ArtifactError(f"Artifact {name!r}: manifest.json is unreadable ({bad} lack a sha256 or size). "
                            f"Re-run {producer(name)}.")
    if manifest.get("profile") != profile:
        raise ArtifactError(f"Artifact {name!r} in {folder} was saved for profile {manifest.get('profile')!r}, "
                            f"not {profile!r}. Re-run {producer(name)} with PROFILE={profile!r}.")
    if manifest.get("name") != name:  # a folder copied or renamed: the files are another artifact's
        raise ArtifactError(f"Artifact {name!r} in {folder} holds the artifact {manifest.get('name')!r} (copied or "
                            f"renamed?). Refusing to load it. Re-run {producer(name)}.")
    for fn in listed:
        try:
            check_plain_name(fn, "listed file")
        except ValueError as e:
            raise ArtifactError(f"Artifact {name!r}: {e}. Refusing to load it. Re-run {producer(name)}.") from e
    return manifest


def _read(name: str, folder: Path, fn: str, meta: dict) -> bytes:
    """One listed file's bytes, verified against its manifest entry."""
    try:
        return read_verified(folder, fn, meta)
    except FileNotFoundError as e:
        raise ArtifactError(_incomplete(name, fn)) from e
    except ValueError as e:
        raise ArtifactError(_changed(name, fn)) from e


def _incomplete(name: str, fn: str) -> str:
    return f"Artifact {name!r} is incomplete: {fn} is missing. Re-run {producer(name)}."


def _changed(name: str, fn: str) -> str:
    return (f"Artifact {name!r}: {fn} does not match its manifest (sha256 differs); the file was "
            f"changed or corrupted after it was saved. Refusing to load it. Re-run {producer(name)}.")


def _recover(folder: Path) -> None:
    recover_folder(folder, MANIFEST)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(paths.ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5,
        )
        commit = out.stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(paths.ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
