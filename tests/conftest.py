"""Shared fixtures: every test gets its own checkpoints folder, and figures never need a screen."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def isolated_checkpoints(tmp_path, monkeypatch):
    """Artifacts written by a test land in a temporary folder, never in checkpoints/."""
    folder = tmp_path / "checkpoints"
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(folder))
    return folder
