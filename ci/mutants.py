"""`make mutants`: mutation testing of key library modules with mutmut (not part of `make test`).

mutmut plants small bugs (an operator, a constant, a dropped argument) one at a time and runs the tests
that cover each; a mutant that no test kills is a bug the suite would let through. mutmut names modules
relative to a src/ folder, so this script runs it in build/mutants/ with src/nanolm -> shared/nanolm.

    python ci/mutants.py                         # the default modules and their tests
    python ci/mutants.py --modules train/schedules.py core/files.py --tests tests/test_train.py
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutants"
DEFAULT = {  # module under shared/nanolm -> the test files that cover it
    "core/files.py": ["tests/test_files.py", "tests/test_artifacts.py", "tests/test_checkpoint.py"],
    "core/artifacts.py": ["tests/test_artifacts.py", "tests/test_artifacts_tamper.py"],
    "text/bpe_train.py": ["tests/test_bpe.py"],
    "text/bpe.py": ["tests/test_bpe.py"],
    "model/attend.py": ["tests/test_flash.py", "tests/test_llama.py"],
    "model/layers.py": ["tests/test_llama.py"],
    "train/optimizer.py": ["tests/test_train.py"],
    "train/schedules.py": ["tests/test_train.py"],
    "train/loop.py": ["tests/test_train.py"],
}


def workspace(modules: list[str], tests: list[str]) -> None:
    """build/mutants/ with src/nanolm (a copy of the library), tests/ and a pyproject naming what to mutate."""
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "src").mkdir(parents=True)
    shutil.copytree(ROOT / "shared" / "nanolm", WORK / "src" / "nanolm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", WORK / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    only = ", ".join(f'"src/nanolm/{m}"' for m in modules)
    selection = ", ".join(f'"{t}"' for t in tests)
    pyproject = (ROOT / "pyproject.toml").read_text()
    (WORK / "mutants").mkdir()  # mutmut's copy; its paths.ROOT is here, so data/ must be found here too
    (WORK / "mutants" / "data").symlink_to(ROOT / "data", target_is_directory=True)
    (WORK / "pyproject.toml").write_text(
        pyproject + f'\n[tool.mutmut]\nsource_paths = ["src/nanolm"]\nonly_mutate = [{only}]\n'
        f"pytest_add_cli_args_test_selection = [{selection}]\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", nargs="+", default=list(DEFAULT))
    ap.add_argument("--tests", nargs="+", default=sorted({t for ts in DEFAULT.values() for t in ts}))
    ap.add_argument("--children", type=int, default=2)
    args = ap.parse_args()
    workspace(args.modules, args.tests)
    # mutmut puts mutants/src first on sys.path itself; the copy's paths.ROOT is build/mutants/mutants
    env = {**os.environ, "NANOLM_DATA_DIR": str(ROOT / "data")}
    env.pop("PYTHONPATH", None)
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    subprocess.run([mutmut, "run", "--max-children", str(args.children)], cwd=WORK, env=env, check=False)
    results = subprocess.run([mutmut, "results", "--all", "true"], cwd=WORK, env=env, capture_output=True, text=True)
    return summarize(results.stdout)


def summarize(text: str) -> int:
    """Print killed / total per module from `mutmut results --all true` lines ('<mutant>: <status>')."""
    per: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if "__mutmut_" not in name:
            continue
        module = re.split(r"\.x[_\u01c1]", name)[0]  # mutmut names functions x_<name>, methods x\u01c1Class\u01c1<name>
        row = per.setdefault(module, {})
        row[status] = row.get(status, 0) + 1
    for module, row in sorted(per.items()):
        total = sum(row.values())
        killed = row.get("killed", 0)
        detail = ", ".join(f"{k} {v}" for k, v in sorted(row.items()))
        print(f"{module:36s} killed {killed:4d} / {total:4d} ({100 * killed / max(total, 1):5.1f}%)  [{detail}]")
    return 0 if per else 1


if __name__ == "__main__":
    sys.exit(main())
