"""nanolm.core.profiles: resolving 'auto' and reading size tables."""

import pytest
import torch

from nanolm.core import profiles

TABLE = {"smoke": {"steps": 2, "width": 8}, "cpu": {"steps": 200, "width": 64}, "gpu": {"steps": 5000, "width": 512}}


def test_auto_is_cpu_without_cuda(monkeypatch):
    monkeypatch.delenv("NANOLM_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profiles.resolve("auto") == "cpu"
    assert profiles.resolve(None) == "cpu"


def test_auto_is_gpu_with_cuda(monkeypatch):
    monkeypatch.delenv("NANOLM_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert profiles.resolve("auto") == "gpu"


def test_environment_variable_fills_in_auto(monkeypatch):
    monkeypatch.setenv("NANOLM_PROFILE", "smoke")
    assert profiles.resolve("auto") == "smoke"
    assert profiles.resolve("cpu") == "cpu", "an explicit profile wins over the environment"


def test_unknown_profile_says_what_to_use():
    with pytest.raises(ValueError, match="auto, smoke, cpu, gpu"):
        profiles.resolve("fast")


def test_sizes_reads_one_row():
    cfg = profiles.sizes(TABLE, "cpu")
    assert (cfg.steps, cfg.width) == (200, 64)


def test_sizes_rejects_incomplete_tables():
    with pytest.raises(ValueError, match="lacks"):
        profiles.sizes({"cpu": {"a": 1}}, "cpu")
    with pytest.raises(ValueError, match="expected"):
        profiles.sizes({**TABLE, "gpu": {"steps": 1}}, "cpu")


def test_show_marks_the_active_profile():
    text = profiles.show(TABLE, "cpu")
    assert "cpu*" in text and "smoke " in text
    assert text.splitlines()[2].split() == ["steps", "2", "200", "5000"]


def test_check_passes_the_three_profiles_only():
    for p in profiles.PROFILES:
        assert profiles.check(p) == p
    for bad in ["../../etc", "auto", "", "CPU", "cpu/../gpu", None, 1]:
        with pytest.raises(ValueError, match="smoke, cpu, gpu"):
            profiles.check(bad)


def test_within_names_the_tolerance_class():
    from nanolm.core.notebook import within

    assert [within(x) for x in (0.0, 3e-16, -2e-10, 5e-8, 4e-4)] == ["< 1e-12", "< 1e-12", "< 1e-09", "< 1e-06", "< 1e-03"]
    assert within(0.5) == ">= 1e-03 (5.00e-01)" and within(float("nan")) == "nan"
