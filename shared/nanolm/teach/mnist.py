"""MNIST from the course's data/ folder: an idx-file reader that checks what it reads, and a seeded split.

The mirror holds only the 10,000-image test set (t10k-*), so the course splits it into
8,000 images to train on and 2,000 to test on. The idx format is tiny: a 4-byte magic
number (0x00000801 for labels, 0x00000803 for images), big-endian uint32 sizes, then
raw uint8 bytes.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..core import data

IMAGES = "t10k-images-idx3-ubyte.gz"
LABELS = "t10k-labels-idx1-ubyte.gz"
MAGIC_LABELS = 0x00000801  # 0x08 = unsigned byte, 1 dimension
MAGIC_IMAGES = 0x00000803  # 0x08 = unsigned byte, 3 dimensions


class MnistError(ValueError):
    """An idx file is not what it claims to be (bad magic number, sizes, or length)."""


class Split(NamedTuple):
    """Train and test images (N, 28, 28) uint8 and labels (N,) int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _read_bytes(path: Path) -> bytes:
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic; plain idx files work too
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise MnistError(f"{Path(path).name}: not a readable gzip file ({e})") from e
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx1 (labels) or idx3 (images) file, .gz or plain, as a uint8 array; checks magic and sizes."""
    name = Path(path).name
    raw = _read_bytes(Path(path))
    if len(raw) < 8:
        raise MnistError(f"{name}: only {len(raw)} bytes, too short for an idx header")
    magic = int.from_bytes(raw[:4], "big")
    if magic == MAGIC_LABELS:
        ndim = 1
    elif magic == MAGIC_IMAGES:
        ndim = 3
    else:
        raise MnistError(
            f"{name}: bad magic number 0x{magic:08x}; expected 0x{MAGIC_LABELS:08x} (labels) "
            f"or 0x{MAGIC_IMAGES:08x} (images). The file is corrupted or not an MNIST idx file."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MnistError(f"{name}: header cut short ({len(raw)} bytes, need {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise MnistError(
            f"{name}: header says shape {dims} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header}; it is truncated or corrupted."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def load(data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images (10000, 28, 28) uint8 and labels (10000,) int64, validated."""
    images = read_idx(data.path("mnist", IMAGES, data_dir=data_dir))
    labels = read_idx(data.path("mnist", LABELS, data_dir=data_dir)).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise MnistError(f"{IMAGES}: images have shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise MnistError(f"{len(labels)} labels for {len(images)} images; the two files do not match")
    if labels.max(initial=0) > 9:
        raise MnistError(f"{LABELS}: label {labels.max()} is not a digit 0-9")
    return images, labels


def split(n_train: int = 8000, seed: int = 0, data_dir: Path | None = None) -> Split:
    """Shuffle the 10k images with `seed` and cut them into n_train to train on and the rest to test on."""
    images, labels = load(data_dir)
    if not 0 < n_train < len(images):
        raise ValueError(f"n_train must be between 1 and {len(images) - 1}, got {n_train}")
    order = np.random.default_rng(seed).permutation(len(images))
    tr, te = order[:n_train], order[n_train:]
    return Split(images[tr], labels[tr], images[te], labels[te])
