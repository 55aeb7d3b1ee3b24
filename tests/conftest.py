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


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """End every run with the number of skipped tests and why: a skip must be visible, never silent.

    Only truly missing hardware (CUDA, flash-attn) is a reason to skip; anything else is a bug to fix.
    """
    skipped = terminalreporter.stats.get("skipped", [])
    terminalreporter.write_sep("=", f"{len(skipped)} skipped")
    reasons: dict[str, int] = {}
    for rep in skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"  {n:3d} x {reason}")
