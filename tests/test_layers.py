"""The library's shape: layers that import only downwards (import-linter), no circles, small modules and functions.

The contracts live in pyproject.toml ([tool.importlinter]). These tests run them on the real package and
on a copy with one planted wrong import each, to show that a wrong import really fails.
"""

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "shared" / "nanolm"
LINT = Path(sys.executable).with_name("lint-imports")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    """Run lint-imports with the project's contracts on the nanolm found in package_parent."""
    env = {**os.environ, "PYTHONPATH": str(package_parent), "NO_COLOR": "1"}
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          capture_output=True, text=True, env=env, cwd=package_parent, timeout=120)


def test_import_contracts_hold():
    result = _lint(PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("core/files.py", "from ..model import gpt", "layers"),  # core may import nothing above it
    ("model/gpt.py", "from ..text import bpe", "layers"),  # text and model are independent
    ("model/kvcache.py", "from ..train import loop", "layers"),  # a model never knows how it is trained
    ("train/loop.py", "from ..eval import models", "layers"),  # eval stands on train, never the reverse
    ("eval/scorer.py", "from .. import adapt", "layers"),  # adapt measures with eval, never the reverse
    ("teach/rnn.py", "from .. import adapt", "teach stands on core and model only"),
    ("teach/value.py", "from ..text import bpe", "teach stands on core and model only"),
    ("teach/optim.py", "from ..eval import models", "teach stands on core and model only"),
    ("model/mla.py", "from . import llama", "no circles inside a layer"),  # llama already imports mla
])
def test_a_wrong_import_breaks_a_contract(tmp_path, module, line, broken):
    copy = tmp_path / "nanolm"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / module
    path.write_text(path.read_text() + f"\n{line}  # planted by the test\n")
    result = _lint(tmp_path)
    assert result.returncode != 0, f"planting {line!r} in {module} broke no contract:\n{result.stdout}"
    broken_lines = [ln for ln in result.stdout.splitlines() if ln.endswith(" BROKEN")]
    assert any(ln.startswith(broken) for ln in broken_lines), result.stdout


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_modules_stay_small():
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by idea): {long}"


def test_functions_stay_short():
    long = {}
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(PACKAGE)}:{node.lineno} {node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_module_sits_in_a_layer():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    stack = next(c for c in contracts if c["type"] == "layers")["layers"]  # "nanolm.text | nanolm.model", ...
    layers = {name.strip().removeprefix("nanolm.") for entry in stack for name in entry.split("|")}
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules outside a layer: {loose} (move each into one of {sorted(layers)})"
    found = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert found <= layers, f"unknown sub-packages {sorted(found - layers)}: add them to the contracts"
