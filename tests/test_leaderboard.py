"""The leaderboard: a markdown table of model rows, saved as the verified `eval-report` artifact, extended by add."""

import pytest

from nanolm.core import artifacts
from nanolm.core.report import main as report_main
from nanolm.eval import leaderboard, stats

ROWS = {
    "tiny": {"params": 136_960, "bpb_wikitext": 4.2984, "hellaswag": "n/a: 65-character vocabulary",
             "core": -0.1667, "tok_per_s": 2537.5},
    "real": {"params": 134_515_008, "hellaswag": stats.accuracy([True] * 41 + [False] * 59).as_dict(),
             "gsm8k": None, "tok_per_s": 31.7},
}


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(tmp_path))
    return tmp_path


def test_table_formats_every_kind_of_cell():
    lines = leaderboard.table(ROWS).splitlines()
    assert lines[0].startswith("| model | params | WikiText-2 bpb |") and len(lines) == 4
    tiny, real = lines[2], lines[3]
    assert "| 136,960 | 4.298 |" in tiny and "n/a: 65-character vocabulary" in tiny and "-0.167" in tiny
    assert "2,537.5" in tiny
    lo, hi = stats.wilson(41, 100)
    assert f"41.0 [{100 * lo:.1f}, {100 * hi:.1f}]" in real and "134.5M" in real and "31.7" in real
    assert real.count("—") == len(leaderboard.COLUMNS) - 3  # params, HellaSwag, tok/s shown; the rest missing


def test_save_load_add_round_trip(root):
    leaderboard.save("eval-report", ROWS, notebook="10_evaluation", profile="smoke", details={"x": 1})
    assert leaderboard.load(profile="smoke") == ROWS
    rows = leaderboard.add("tuned", {"params": 5, "core": 0.1}, notebook="11_lora", profile="smoke")
    assert list(rows) == ["tiny", "real", "tuned"] and leaderboard.load(profile="smoke") == rows
    art = artifacts.load(leaderboard.NAME, profile="smoke")
    assert art.json("details.json") == {"x": 1} and "| tuned |" in art.text("leaderboard.md")


def test_make_report_prints_the_leaderboard_and_refuses_a_changed_one(root, tmp_path, capsys):
    leaderboard.save("eval-report", ROWS, notebook="10_evaluation", profile="smoke")
    report_main(["--out", str(tmp_path / "build")])
    assert "leaderboard (smoke profile" in capsys.readouterr().out
    md = root / "smoke" / leaderboard.NAME / "leaderboard.md"
    md.write_text(md.read_text() + "| fake | 1 |\n")
    with pytest.raises(artifacts.ArtifactError):
        report_main(["--out", str(tmp_path / "build")])


def test_a_missing_report_names_notebook_10(root):
    with pytest.raises(artifacts.ArtifactError, match="10_evaluation"):
        leaderboard.load(profile="smoke")
