"""nanolm.core.report: the results cell and the report card."""

import json

import nbformat
import pytest
import torch

from nanolm.core import artifacts, report


def test_record_prints_one_json_line_and_stores_it(capsys, isolated_checkpoints):
    artifacts.save("gpt-char", notebook="07_gpt", profile="smoke", tensors={"w": torch.zeros(1)})
    report.record("07_gpt", "smoke", saves=("gpt-char",), val_loss=1.5, steps=10)
    line = capsys.readouterr().out.strip()
    assert json.loads(line) == {"notebook": "07_gpt", "profile": "smoke", "val_loss": 1.5, "steps": 10}
    stored = json.loads((isolated_checkpoints / "smoke" / "results" / "07_gpt.json").read_text())
    assert stored["val_loss"] == 1.5
    assert artifacts.load("gpt-char", profile="smoke").metrics == {"val_loss": 1.5, "steps": 10}


def test_record_refuses_non_finite_and_non_json():
    with pytest.raises(ValueError, match="finite"):
        report.record("00_math", "smoke", loss=float("nan"))
    with pytest.raises(TypeError):
        report.record("00_math", "smoke", thing=object())


def _executed(tmp_path, stem, profile, seconds, metrics):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("report.record(...)", metadata={"tags": ["results"]})
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                           text=json.dumps({"notebook": stem, "profile": profile, **metrics}) + "\n")]
    nb.cells = [cell]
    nb.metadata["papermill"] = {"duration": seconds, "parameters": {"PROFILE": profile}}
    path = tmp_path / profile / f"{stem}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_report_card_collects_metrics_and_runtimes(tmp_path):
    _executed(tmp_path, "00_math", "cpu", 42.0, {"adamw_max_diff": 1e-9})
    _executed(tmp_path, "00_math", "smoke", 7.0, {"adamw_max_diff": 1e-9})
    _executed(tmp_path, "01_autograd", "cpu", 200.0, {"train_accuracy": 1.0})
    table = report.collect({p: tmp_path / p for p in ("smoke", "cpu", "gpu")})
    assert table["00_math"]["cpu"] == {"seconds": 42.0, "metrics": {"adamw_max_diff": 1e-9}}
    assert "gpu" not in table["00_math"]
    card = report.report_card(table, tmp_path / "out")
    text = card.read_text()
    assert "| 00_math | 7 s | 42 s | — | adamw_max_diff=1e-09 |" in text
    assert "| 01_autograd | — | 3.3 min | — | train_accuracy=1 |" in text
    assert (tmp_path / "out" / "runtimes.png").stat().st_size > 1000


@pytest.mark.parametrize("bad", ["../../etc", "auto", ""])
def test_record_checks_the_profile_before_writing(bad, isolated_checkpoints, capsys):
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        report.record("07_gpt", bad, val_loss=1.0)
    assert not isolated_checkpoints.exists() or not any(isolated_checkpoints.rglob("*.json"))
    assert capsys.readouterr().out == "", "nothing is printed for a refused record"


def test_record_checks_the_notebook_name(isolated_checkpoints):
    with pytest.raises(ValueError, match="plain file name"):
        report.record("../../07_gpt", "smoke", val_loss=1.0)
    assert not isolated_checkpoints.exists() or not any(isolated_checkpoints.rglob("*.json"))


def test_report_card_checks_its_profiles(tmp_path):
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        report.collect({"../../etc": tmp_path})


def test_report_and_readme_are_written_atomically(tmp_path, monkeypatch):
    """Outputs go through write_bytes_atomic: a crash mid-write never leaves half a report or README."""
    from pathlib import Path

    _executed(tmp_path, "00_math", "cpu", 42.0, {"adamw_max_diff": 1e-9})
    table = report.collect({"cpu": tmp_path / "cpu"})
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold\n{report.README_END}\n"
                      f"{report.RESULTS_START}\nold\n{report.RESULTS_END}\nend\n")
    monkeypatch.setattr(Path, "write_text", lambda *a, **k: pytest.fail("a bare write_text for an output"))
    report.report_card(table, tmp_path / "out")
    report.update_readme(readme)
    assert "| 00_math |" in (tmp_path / "out" / "report.md").read_text()
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "| 00 |" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.md", "runtimes.png"]
