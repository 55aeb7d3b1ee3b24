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
