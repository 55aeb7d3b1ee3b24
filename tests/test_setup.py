"""nanolm.core.notebook.setup and nanolm.core.device.threads: what every notebook's setup cell relies on."""

import random
import warnings

import pytest
import torch

from nanolm.core import device, notebook

SIZES = {"smoke": {"steps": 2}, "cpu": {"steps": 20}, "gpu": {"steps": 200}}


def test_setup_resolves_profile_sizes_seed_and_prints_the_table(capsys):
    before = torch.get_num_threads()
    try:
        profile, cfg, dev = notebook.setup("99_test", "smoke", 7, SIZES, threads=1, use_device=False)
        assert (profile, cfg.steps, dev.type, torch.get_num_threads()) == ("smoke", 2, "cpu", 1)
        first = (random.random(), torch.rand(1).item())
        notebook.setup("99_test", "smoke", 7, SIZES, use_device=False)
        assert (random.random(), torch.rand(1).item()) == first  # seeded the same way twice
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "99_test | profile smoke | seed 7" in out and "smoke*" in out


def test_setup_refuses_unknown_profiles_and_bad_threads():
    with pytest.raises(ValueError, match="Unknown profile"):
        notebook.setup("99_test", "laptop", 0, SIZES)
    with pytest.raises(ValueError, match="threads"):
        notebook.setup("99_test", "smoke", 0, SIZES, threads=0)


def test_threads_is_scoped_and_restored_even_on_error():
    before = torch.get_num_threads()
    with device.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), device.threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with device.threads(None):
        assert torch.get_num_threads() == before


def test_within_prints_the_smallest_tolerance_class_a_difference_falls_under():
    """Classes 1e-12 < 1e-9 < 1e-6 < 1e-3, each bound exclusive; above them the value itself; NaN says so."""
    assert [notebook.within(d) for d in (0.0, 9.9e-13, 1e-12, 5e-10, 1e-9, 2e-7, 1e-6, 9.99e-4)] == [
        "< 1e-12", "< 1e-12", "< 1e-09", "< 1e-09", "< 1e-06", "< 1e-06", "< 1e-03", "< 1e-03"]
    assert notebook.within(-3e-7) == "< 1e-06"  # a signed difference counts by its size
    assert notebook.within(1e-3) == ">= 1e-03 (1.00e-03)" and notebook.within(0.25) == ">= 1e-03 (2.50e-01)"
    assert notebook.within(float("nan")) == "nan"
    leaf = torch.tensor([1.0, 2.0], requires_grad=True)  # a difference that still tracks gradients: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert notebook.within((leaf * 2 - leaf * 2).abs().max()) == "< 1e-12"
