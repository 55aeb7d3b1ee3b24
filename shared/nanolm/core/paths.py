"""Where the course keeps its things: repository root, data/ and checkpoints/."""

from __future__ import annotations

import os
from pathlib import Path

# shared/nanolm/core/paths.py -> the repository root is three folders up from core/.
ROOT = Path(__file__).resolve().parents[3]


def data_dir() -> Path:
    """Folder that `make data` fills (override with NANOLM_DATA_DIR)."""
    return Path(os.environ.get("NANOLM_DATA_DIR", ROOT / "data"))


def checkpoints_dir() -> Path:
    """Folder that holds one subfolder of artifacts per profile (override with NANOLM_CHECKPOINTS)."""
    return Path(os.environ.get("NANOLM_CHECKPOINTS", ROOT / "checkpoints"))
