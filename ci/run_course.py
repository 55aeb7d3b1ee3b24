"""Run the course's notebooks in order with papermill, headless, on the course kernel.

    python ci/run_course.py --profile smoke              # the CI chain
    python ci/run_course.py --profile cpu --from 03 --upto 07
    python ci/run_course.py --profile cpu --inplace --only 00   # `make execute`: refresh stored outputs

Executed notebooks go to build/executed/<profile>/. The run stops at the first failing
cell, naming notebook, cell and error, and exits non-zero. With --inplace a notebook
is copied over notebooks/ only after it ran to the end, so a failure loses nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "nanolm"
CELL_TIMEOUT = {"smoke": 600, "cpu": 1200, "gpu": 1800}  # seconds for one cell


def select(names: list[Path], start: str | None, upto: str | None, only: list[str] | None) -> list[Path]:
    """Notebooks whose two-digit number is within [start, upto], or listed in `only`."""
    picked = []
    for nb in names:
        num = nb.name[:2]
        if only and num not in {o[:2].zfill(2) for o in only}:
            continue
        if start and num < start[:2].zfill(2):
            continue
        if upto and num > upto[:2].zfill(2):
            continue
        picked.append(nb)
    return picked


def check_kernel() -> None:
    """Refuse to run unless the `nanolm` kernel starts this very Python (never another install)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        sys.exit(f"The Jupyter kernel '{KERNEL}' is not installed. Run `make setup`.")
    runs = os.path.abspath(spec.argv[0])
    if runs != os.path.abspath(sys.executable):
        sys.exit(
            f"The Jupyter kernel '{KERNEL}' starts {runs}, not this environment's Python "
            f"({sys.executable}). Run `make setup` to reinstall it, or remove the other kernelspec "
            f"found at {spec.resource_dir}."
        )


def shown(path: Path) -> str:
    """A path relative to the repository when inside it (no machine paths in logs or metadata)."""
    return os.path.relpath(path, ROOT) if Path(path).resolve().is_relative_to(ROOT) else str(path)


def run_one(nb: Path, out: Path, profile: str, timeout: int) -> float:
    """Execute one notebook; return seconds; raise SystemExit with a clear message on failure."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            shown(nb), shown(out),
            parameters={"PROFILE": profile}, kernel_name=KERNEL, cwd=str(NOTEBOOKS),
            execution_timeout=timeout, progress_bar=False, log_output=False,
        )
    except PapermillExecutionError as e:
        lines = [s.strip() for s in (e.evalue or "").splitlines() if s.strip()] or [""]
        detail = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
        raise SystemExit(
            f"\nFAILED {nb.stem}: cell {e.cell_index} (execution count {e.exec_count}) raised "
            f"{e.ename}: {detail[:300]}\n  see the executed notebook: {shown(out)}"
        ) from None
    except DeadKernelError:
        raise SystemExit(
            f"\nFAILED {nb.stem}: the kernel died (most often out of memory). "
            f"Try a smaller profile, or close other programs. Partial output: {shown(out)}"
        ) from None
    except CellTimeoutError:
        raise SystemExit(f"\nFAILED {nb.stem}: a cell ran longer than {timeout} s (the per-cell timeout).") from None
    return time.perf_counter() - t0


def strip_injected(path: Path) -> None:
    """Drop papermill's injected-parameters cell so the stored notebook reads PROFILE from the environment.

    The profile it ran with stays in metadata.papermill.parameters.
    """
    nb = json.loads(path.read_text("utf-8"))
    nb["cells"] = [c for c in nb["cells"] if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def artifacts_of(profile: str) -> list[str]:
    root = Path(os.environ.get("NANOLM_CHECKPOINTS", ROOT / "checkpoints")) / profile
    return sorted(str(m.parent.relative_to(root)) for m in root.glob("**/manifest.json")) if root.exists() else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="auto", help="auto | smoke | cpu | gpu")
    ap.add_argument("--from", dest="start", help="first notebook number, e.g. 03")
    ap.add_argument("--upto", help="last notebook number, e.g. 07")
    ap.add_argument("--only", nargs="*", help="just these notebook numbers")
    ap.add_argument("--inplace", action="store_true", help="store the outputs back into notebooks/")
    ap.add_argument("--cell-timeout", type=int, help="seconds a single cell may run")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "shared"))
    from nanolm.core.profiles import resolve

    profile = resolve(args.profile)
    check_kernel()
    notebooks = select(sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")), args.start, args.upto, args.only)
    if not notebooks:
        print("no notebooks selected", file=sys.stderr)
        return 2
    timeout = args.cell_timeout or CELL_TIMEOUT[profile]
    out_dir = ROOT / "build" / "executed" / profile
    print(f"course chain: profile {profile}, {len(notebooks)} notebook(s), kernel '{KERNEL}', "
          f"cell timeout {timeout} s -> {shown(out_dir)}/", flush=True)
    times: dict[str, float] = {}
    for nb in notebooks:
        print(f"  {nb.stem} ...", end=" ", flush=True)
        secs = run_one(nb, out_dir / nb.name, profile, timeout)
        times[nb.stem] = secs
        print(f"{secs:6.1f} s", flush=True)
        if args.inplace:
            strip_injected(out_dir / nb.name)
            shutil.copyfile(out_dir / nb.name, nb)
    timings = out_dir / "timings.json"
    old = json.loads(timings.read_text()) if timings.exists() else {}
    timings.write_text(json.dumps({**old, **{k: round(v, 1) for k, v in times.items()}}, indent=2) + "\n")
    print("\n| notebook | seconds |\n|---|---:|")
    for stem, secs in times.items():
        print(f"| {stem} | {secs:.1f} |")
    print(f"| total | {sum(times.values()):.1f} |")
    made = artifacts_of(profile)
    print(f"\nartifacts in checkpoints/{profile}/: {', '.join(made) if made else '(none yet)'}")
    if args.inplace:
        print("stored outputs refreshed in notebooks/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
