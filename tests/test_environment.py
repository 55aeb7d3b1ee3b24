"""The environment files: exact pins, torch first, and environment.yml in step with requirements.txt."""

import re

import yaml

from nanolm.core import paths

ROOT = paths.ROOT
REQUIRED = """torch numpy matplotlib jupyterlab ipykernel ipywidgets papermill nbval nbconvert tiktoken regex
datasets transformers peft bitsandbytes safetensors scikit-learn tqdm tensorboard pytest hypothesis""".split()


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", line)
            assert m, f"requirements.txt: {line!r} is not an exact pin (name==version)"
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _environment() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                name, version = line.split("==")
                pins[name.lower()] = version
        elif dep not in ("pip",) and not dep.startswith("python="):
            name, version = dep.split("=")
            pins[name.lower()] = version
    return pins


def test_requirements_are_exact_pins_with_torch_first():
    lines = [s for s in (ROOT / "requirements.txt").read_text().splitlines() if s and not s.startswith("#")]
    assert lines[0] == "torch==2.13.0"
    pins = _requirements()
    assert not [p for p in REQUIRED if p not in pins], "a required package is missing"


def test_environment_yml_carries_the_same_pins():
    assert _environment() == _requirements()


def test_flash_attn_is_optional():
    assert "flash-attn" not in _requirements()
    assert "flash-attn" in (ROOT / "pyproject.toml").read_text()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    readme = (ROOT / "README.md").read_text()
    assert "make course" in readme and "make test" in readme


def test_makefile_installs_torch_before_the_rest():
    mk = (ROOT / "Makefile").read_text()
    assert mk.index('"$(TORCH)"') < mk.index("-r requirements.txt")


def test_makefile_runs_library_modules_that_exist():
    """Every `python -m nanolm...` the Makefile runs names a real module (modules move between layers)."""
    import importlib.util
    import re

    mods = re.findall(r"-m (nanolm[\w.]*)", (ROOT / "Makefile").read_text())
    assert mods, "the Makefile runs nanolm's data and report modules"
    missing = [m for m in mods if importlib.util.find_spec(m) is None]
    assert not missing, f"the Makefile runs modules that do not exist: {missing}"
