"""Adapters the server learned, on disk: one verified folder each, written atomically, with an owner.

    <root>/<name>/adapter.safetensors   the LoRA tensors
                  adapter.json          name, owner, base model sha256, LoRA settings, what it was taught
                  sha256.json           size and sha256 of the two files above (written last)

A folder appears complete or not at all (core.files.write_folder_atomic), so a crash while saving keeps
whatever was saved before. Loading verifies every hash and the base model, and skips (with a reason) a
folder that fails, instead of serving a tampered or foreign adapter.

Names are lowercase letters, digits, '-' and '_' (at most 40): nothing that could leave the folder. An
adapter belongs to its owner: "server" (the course's own, usable by everyone) or a user or session id; only
its owner may replace it, and a user's adapter answers only that user's requests.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..core.files import read_verified, recover_folder, sha256_bytes, write_folder_atomic

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
SERVER = "server"  # the owner of adapters everyone may use
TENSORS, INFO, MANIFEST = "adapter.safetensors", "adapter.json", "sha256.json"


class AdapterError(ValueError):
    """A name, owner or folder the store refuses; the message says why and what to do."""


def check_name(name: str, what: str = "adapter name") -> str:
    if not isinstance(name, str) or not NAME.match(name) or name == "base":
        raise AdapterError(f"{what} {name!r}: use 1-40 lowercase letters, digits, '-' and '_', starting with a "
                           "letter or digit (and not 'base')")
    return name


@dataclass
class Stored:
    name: str
    owner: str
    info: dict
    tensors: dict[str, torch.Tensor]


class AdapterStore:
    """The folder of learned adapters, for one base model (its sha256 is checked on every load)."""

    def __init__(self, root: str | Path, base_sha256: str):
        self.root, self.base_sha256 = Path(root), base_sha256
        self.root.mkdir(parents=True, exist_ok=True)

    def owner_of(self, name: str) -> str | None:
        path = self.root / check_name(name) / INFO
        return json.loads(path.read_text())["owner"] if path.exists() else None

    def save(self, name: str, owner: str, tensors: dict[str, torch.Tensor], info: dict) -> Path:
        """Write (or, for its owner, replace) an adapter atomically."""
        check_name(name)
        check_name(owner, "owner")
        current = self.owner_of(name)
        if current is not None and current != owner:
            raise AdapterError(f"adapter {name!r} belongs to {current!r}: choose another name")
        blob = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        meta = json.dumps({**info, "name": name, "owner": owner, "base_sha256": self.base_sha256,
                           "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1).encode()
        manifest = {fn: {"bytes": len(b), "sha256": sha256_bytes(b)} for fn, b in ((TENSORS, blob), (INFO, meta))}
        return write_folder_atomic(self.root / name, {TENSORS: blob, INFO: meta,
                                                      MANIFEST: json.dumps(manifest).encode()}, MANIFEST)

    def load(self, name: str) -> Stored:
        """One adapter, every file verified and its base checked."""
        folder = self.root / check_name(name)
        recover_folder(folder, MANIFEST)
        if not (folder / MANIFEST).exists():
            raise AdapterError(f"no adapter {name!r} in {self.root}")
        manifest = json.loads((folder / MANIFEST).read_text())
        try:
            info = json.loads(read_verified(folder, INFO, manifest[INFO]))
            tensors = load_safetensors(read_verified(folder, TENSORS, manifest[TENSORS]))
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise AdapterError(f"adapter {name!r} is damaged or was changed ({e}): delete its folder and teach "
                               "it again") from None
        if info.get("base_sha256") != self.base_sha256:
            raise AdapterError(f"adapter {name!r} was trained on another base model: it is not loaded")
        return Stored(name, info["owner"], info, tensors)

    def load_all(self) -> tuple[list[Stored], dict[str, str]]:
        """Every loadable adapter, and {name: why} for the folders that were skipped."""
        good, skipped = [], {}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                good.append(self.load(folder.name))
            except AdapterError as e:
                skipped[folder.name] = str(e)
        return good, skipped
