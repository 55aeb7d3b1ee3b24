"""ci/run_course.py: selection, and failures reported with notebook, cell and cause."""

import importlib.util
import json

import nbformat
import pytest

from nanolm.core import paths

spec = importlib.util.spec_from_file_location("run_course", paths.ROOT / "ci" / "run_course.py")
run_course = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_course)


def test_select_by_range_and_list(tmp_path):
    names = [tmp_path / f"{n:02d}_x.ipynb" for n in range(17)]
    pick = lambda **kw: [p.name[:2] for p in run_course.select(names, kw.get("start"), kw.get("upto"), kw.get("only"))]
    assert pick(start="03", upto="05") == ["03", "04", "05"]
    assert pick(only=["7", "16"]) == ["07", "16"]
    assert pick(upto="01") == ["00", "01"]
    assert len(pick()) == 17


def _notebook(tmp_path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "nanolm", "display_name": "Python (nanolm)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("PROFILE = 'auto'", metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    path = tmp_path / "50_broken.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_failing_cell_is_named(tmp_path):
    nb = _notebook(tmp_path, "x = 1", "raise ValueError('the loss went up')")
    with pytest.raises(SystemExit) as e:
        run_course.run_one(nb, tmp_path / "out" / nb.name, "smoke", timeout=60)
    msg = str(e.value)
    assert "FAILED 50_broken" in msg and "ValueError: the loss went up" in msg and "cell 3" in msg


@pytest.mark.slow
def test_dead_kernel_is_reported_as_such(tmp_path):
    nb = _notebook(tmp_path, "import os; os._exit(1)")
    with pytest.raises(SystemExit, match="kernel died"):
        run_course.run_one(nb, tmp_path / "out" / nb.name, "smoke", timeout=60)


def test_strip_injected_keeps_the_rest(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("PROFILE='auto'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("PROFILE='cpu'", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_code_cell("print(1)")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    run_course.strip_injected(path)
    cells = json.loads(path.read_text())["cells"]
    assert ["".join(c["source"]) for c in cells] == ["PROFILE='auto'", "print(1)"]
