"""Headline metrics: `record()` for a notebook's results cell, and the course report card."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from . import artifacts, paths, profiles
from .files import check_plain_name, write_bytes_atomic, write_json_atomic

RESULTS_TAG = "results"


def record(notebook: str, profile: str, *, saves: tuple[str, ...] = (), **metrics) -> None:
    """Print the notebook's headline metrics as one JSON line and store them.

    They go to checkpoints/<profile>/results/<notebook>.json and into the manifest of
    each artifact named in `saves` (so `make report` and later notebooks see them).
    """
    profiles.check(profile)  # both name folders: check them before anything is printed or written
    check_plain_name(f"{notebook}.json", "notebook")
    for k, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"metric {k!r} is {v}; record finite numbers only")
    row = {"notebook": notebook, "profile": profile, **metrics}
    text = json.dumps(row, sort_keys=False)  # raises on values that are not JSON
    print(text)
    write_json_atomic(paths.checkpoints_dir() / profile / "results" / f"{notebook}.json", row)
    for name in saves:
        artifacts.update_metrics(name, profile=profile, metrics=metrics)


def results_of(nb: dict) -> dict | None:
    """The metrics a notebook's `results` cell printed, from an executed notebook's JSON."""
    for cell in nb.get("cells", []):
        if RESULTS_TAG not in cell.get("metadata", {}).get("tags", []):
            continue
        for out in cell.get("outputs", []):
            text = out.get("text") if out.get("output_type") == "stream" else None
            text = "".join(text) if isinstance(text, list) else text
            for line in (text or "").splitlines():
                if line.startswith("{") and '"notebook"' in line:
                    return json.loads(line)
    return None


def runtime_of(nb: dict) -> float | None:
    """Seconds the whole notebook took under papermill, from its metadata."""
    return nb.get("metadata", {}).get("papermill", {}).get("duration")


def profile_of(nb: dict) -> str | None:
    """The profile papermill passed to the notebook."""
    return nb.get("metadata", {}).get("papermill", {}).get("parameters", {}).get("PROFILE")


def collect(folders: dict[str, Path]) -> dict[str, dict[str, dict]]:
    """{notebook stem: {profile: {"seconds": s, "metrics": {...}}}} from executed notebooks per profile."""
    table: dict[str, dict[str, dict]] = {}
    for profile, folder in folders.items():
        profiles.check(profile)
        for path in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb")):
            nb = json.loads(path.read_text("utf-8"))
            if profile_of(nb) != profile:
                continue  # e.g. a stored notebook that was never executed for this profile
            res = results_of(nb) or {}
            metrics = {k: v for k, v in res.items() if k not in ("notebook", "profile")}
            table.setdefault(path.stem, {})[profile] = {"seconds": runtime_of(nb), "metrics": metrics}
    return table


def fmt_seconds(s: float | None) -> str:
    """'42 s' or '3.5 min'; an em dash when unknown."""
    if s is None:
        return "—"
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def report_card(table: dict[str, dict[str, dict]], out_dir: Path) -> Path:
    """Write out_dir/report.md (runtime per profile and headline metrics) with a runtime plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(profiles.PROFILES)
    lines = [
        "# Course report card",
        "",
        "Runtime of each notebook per profile (papermill) and the headline metrics its `results` cell recorded.",
        "",
        "| notebook | " + " | ".join(columns) + " | headline metrics (cpu, else the largest run) |",
        "|---|" + "---|" * len(columns) + "---|",
    ]
    for stem, per in sorted(table.items()):
        best = next((per[p] for p in ("cpu", "gpu", "smoke") if p in per), {})
        metrics = ", ".join(f"{k}={_short(v)}" for k, v in best.get("metrics", {}).items())
        secs = [fmt_seconds(per.get(p, {}).get("seconds")) for p in columns]
        lines.append(f"| {stem} | " + " | ".join(secs) + f" | {metrics} |")
    totals = {p: sum(per[p]["seconds"] or 0 for per in table.values() if p in per) for p in columns}
    lines += ["", "Total: " + ", ".join(f"{p} {fmt_seconds(t)}" for p, t in totals.items() if t), ""]
    if table:
        _runtime_plot(table, columns, out_dir / "runtimes.png")
        lines += ["![seconds per notebook and profile](runtimes.png)", ""]
    return write_bytes_atomic(out_dir / "report.md", "\n".join(lines).encode("utf-8"))


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _runtime_plot(table, columns, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import subplots

    stems = sorted(table)
    fig, ax = subplots(width=max(6.0, 0.7 * len(stems) + 2))
    width = 0.8 / len(columns)
    for i, p in enumerate(columns):
        ys = [table[s].get(p, {}).get("seconds") or 0 for s in stems]
        ax.bar([j + i * width for j in range(len(stems))], ys, width, label=p)
    ax.set_xticks([j + width for j in range(len(stems))], [s[:2] for s in stems])
    ax.set_xlabel("notebook")
    ax.set_ylabel("seconds")
    ax.set_title("Runtime per notebook and profile")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


README_START, README_END = "<!-- syllabus:start -->", "<!-- syllabus:end -->"


def syllabus_table(stored: Path, smoke: Path, previous: str = "") -> str:
    """The README's syllabus: cpu runtimes from the stored notebooks, smoke from the last chain run."""
    from .syllabus import SYLLABUS

    old = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
           for line in previous.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()}
    rows = ["| # | notebook | what you build | smoke | cpu (2-core laptop) | gpu |", "|---|---|---|---:|---:|---:|"]
    for phase in SYLLABUS:
        num, nb_path = phase.stem[:2], stored / f"{phase.stem}.ipynb"
        prev = old.get(num, [""] * 6)
        if nb_path.exists():
            nb = json.loads(nb_path.read_text("utf-8"))
            cpu = fmt_seconds(runtime_of(nb)) if profile_of(nb) == "cpu" else "—"
            smoke_nb = smoke / nb_path.name
            smoke_s = fmt_seconds(runtime_of(json.loads(smoke_nb.read_text("utf-8")))) if smoke_nb.exists() else prev[3] or "—"
            name = f"[{phase.stem}](notebooks/{phase.stem}.ipynb)"
            gpu = prev[5] if prev[5] not in ("", "planned") else "—"  # filled in by hand, with the GPU named
            rows.append(f"| {num} | {name} | {phase.builds} | {smoke_s} | {cpu} | {gpu} |")
        else:
            rows.append(f"| {num} | {phase.stem} | {phase.builds} | planned | planned | planned |")
    return "\n".join(rows)


RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"


def results_table(stored: Path) -> str:
    """Headline metrics of each stored (cpu) notebook, as its results cell recorded them."""
    rows = ["| notebook | headline metrics (cpu run) |", "|---|---|"]
    for path in sorted(stored.glob("[0-9][0-9]_*.ipynb")):
        res = results_of(json.loads(path.read_text("utf-8"))) or {}
        metrics = ", ".join(f"`{k}` {_short(v)}" for k, v in res.items()
                            if k not in ("notebook", "profile") and not isinstance(v, dict | list))
        rows.append(f"| {path.stem} | {metrics} |")
    return "\n".join(rows)


def _replace_block(text: str, start: str, end: str, body: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def update_readme(readme: Path) -> None:
    """Rewrite the syllabus runtimes and the headline results between the README's markers."""
    text = readme.read_text("utf-8")
    previous = text.split(README_START, 1)[1].split(README_END, 1)[0]
    stored = paths.ROOT / "notebooks"
    text = _replace_block(text, README_START, README_END,
                          syllabus_table(stored, paths.ROOT / "build" / "executed" / "smoke", previous))
    if RESULTS_START in text:
        text = _replace_block(text, RESULTS_START, RESULTS_END, results_table(stored))
    write_bytes_atomic(readme, text.encode("utf-8"))


def main(argv: list[str] | None = None) -> None:
    """`python -m nanolm.core.report`: build build/report.md from stored and executed notebooks."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--out", default=str(paths.ROOT / "build"))
    ap.add_argument("--readme", action="store_true", help="also refresh the README's syllabus runtimes")
    args = ap.parse_args(argv)
    if args.readme:
        update_readme(paths.ROOT / "README.md")
        print("README.md: syllabus runtimes refreshed")
    build = paths.ROOT / "build" / "executed"
    folders = {"cpu": paths.ROOT / "notebooks"}
    for p in ("smoke", "gpu"):
        folders[p] = build / p
    path = report_card(collect(folders), Path(args.out))
    for profile in ("smoke", "cpu", "gpu"):  # the leaderboard notebook 10 saved (and 11-16 extended)
        if (paths.checkpoints_dir() / profile / "eval-report").exists():
            board = artifacts.load("eval-report", profile=profile).text("leaderboard.md")  # verified: a change is refused
            print(f"\nleaderboard ({profile} profile, checkpoints/{profile}/eval-report):\n{board}")
    print(f"report card: {path.relative_to(paths.ROOT) if path.is_relative_to(paths.ROOT) else path}")


if __name__ == "__main__":
    main()
