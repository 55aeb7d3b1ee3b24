"""The leaderboard: every model the course evaluates, side by side, saved as the `eval-report` artifact.

A row is one model's measurements (a flat dict: parameters, bits per byte, each task's accuracy with its
interval, generation quality, speed). Notebook 10 writes the first rows; later notebooks `add` theirs,
so one table follows the course's models from the first character model to the last fine-tune.
`make report` prints the same table (leaderboard.md) for every profile that has one.

A missing measurement is a reason, not a zero: a row may say "n/a: 65-character vocabulary" for a task
its model cannot read, and the table shows that text.
"""

from __future__ import annotations

from ..core import artifacts

NAME = "eval-report"
COLUMNS = (  # (row key, table header); a row may hold more keys than the table shows
    ("params", "params"), ("bpb_wikitext", "WikiText-2 bpb"), ("bpb_mix", "mix bpb"),
    ("hellaswag", "HellaSwag"), ("arc_easy", "ARC-E Dev"), ("arc_challenge", "ARC-C Dev"),
    ("core", "CORE-style"), ("gsm8k", "GSM8K"), ("humaneval", "HumanEval p@1"),
    ("distinct_2", "distinct-2"), ("rep_4", "rep-4"), ("tok_per_s", "tok/s"),
)


def _cell(value) -> str:
    """One table cell: an accuracy dict as 'value [lo, hi]', a float to 3 decimals, text as it is."""
    if value is None:
        return "—"
    if isinstance(value, dict):
        return f"{100 * value['value']:.1f} [{100 * value['lo']:.1f}, {100 * value['hi']:.1f}]"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value:,}"
    return str(value)


def table(rows: dict[str, dict]) -> str:
    """The leaderboard as a markdown table (accuracies in % with their 95% interval)."""
    head = "| model | " + " | ".join(h for _, h in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    body = [f"| {name} | " + " | ".join(_cell(row.get(k)) for k, _ in COLUMNS) + " |" for name, row in rows.items()]
    return "\n".join([head, rule, *body]) + "\n"


def save(name: str, rows: dict[str, dict], *, notebook: str, profile: str,
         details: dict | None = None) -> artifacts.Artifact:
    """Save the leaderboard (rows in order, the markdown table, any details) as the artifact `name`."""
    files = {"leaderboard.json": [{"model": model, **row} for model, row in rows.items()],  # a list keeps the order
             "leaderboard.md": table(rows)}
    if details:
        files["details.json"] = details
    return artifacts.save(name, notebook=notebook, profile=profile, config={"columns": [k for k, _ in COLUMNS]},
                          metrics={"models": list(rows)}, files=files)


def load(name: str = NAME, *, profile: str) -> dict[str, dict]:
    """The saved rows, in order (verified); a missing report names the notebook to run."""
    return _rows(artifacts.load(name, profile=profile))


def _rows(art: artifacts.Artifact) -> dict[str, dict]:
    """{model: row} from an artifact's leaderboard.json list."""
    return {r["model"]: {k: v for k, v in r.items() if k != "model"} for r in art.json("leaderboard.json")}


def add(model: str, row: dict, *, notebook: str, profile: str, name: str = NAME) -> dict[str, dict]:
    """Add (or replace) one model's row and save the report again; returns every row."""
    art = artifacts.load(name, profile=profile)
    rows = {**_rows(art), model: row}
    details = art.json("details.json") if "details.json" in art.files() else None
    save(name, rows, notebook=notebook, profile=profile, details=details)
    return rows
