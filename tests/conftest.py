"""Shared fixtures: every test gets its own checkpoints folder, and figures never need a screen."""

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def isolated_checkpoints(tmp_path, monkeypatch):
    """Artifacts written by a test land in a temporary folder, never in checkpoints/."""
    folder = tmp_path / "checkpoints"
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(folder))
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    """Test tensors are tiny: one thread beats several (no synchronization) and a busy machine hurts less."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
