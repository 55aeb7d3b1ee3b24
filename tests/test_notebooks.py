"""Hygiene of the stored notebooks and their blog export (`make test` runs these after the chain)."""

import ast
import importlib.util
import json
import re
import tempfile
from pathlib import Path

import pytest

from nanolm.core import paths, report, syllabus

pytestmark = pytest.mark.notebooks
ROOT = paths.ROOT
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

SYLLABUS = {p.stem: (p.saves, p.loads) for p in syllabus.SYLLABUS}
MACHINE_PATH = re.compile("|".join(re.escape(p) for p in {
    str(ROOT.parent) + "/", tempfile.gettempdir() + "/", str(Path.home()) + "/"}) + r"|/home/\w+/|/Users/\w+/|[A-Z]:\\\\Users")

export_blog = importlib.util.module_from_spec(s := importlib.util.spec_from_file_location(
    "export_blog", ROOT / "ci" / "export_blog.py"))
s.loader.exec_module(export_blog)


def _load(path):
    return json.loads(path.read_text("utf-8"))


def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def _src(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no NN_*.ipynb"
    assert [p.stem for p in NOTEBOOKS if p.stem not in SYLLABUS] == [], "every notebook has a syllabus row"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_holds_plain_assignments(path):
    cells = [c for c in _load(path)["cells"] if c["cell_type"] == "code"]
    params = [c for c in cells if "parameters" in _tags(c)]
    assert len(params) == 1, "exactly one cell tagged `parameters`"
    for node in ast.parse(_src(params[0])).body:
        assert isinstance(node, ast.Import | ast.Assign), f"parameters cell: only imports and assignments ({ast.dump(node)[:60]})"
    assert "PROFILE" in _src(params[0]) and "NANOLM_PROFILE" in _src(params[0])
    assert not any("injected-parameters" in _tags(c) for c in cells), "papermill's injected cell must not be stored"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_come_from_a_full_cpu_run(path):
    nb = _load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "nanolm"
    assert report.profile_of(nb) == "cpu", "store outputs of a cpu run: `make execute NB=..`"
    assert report.runtime_of(nb), "papermill recorded no duration"
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and _src(c).strip()]
    unrun = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not unrun, f"code cells without stored execution: {unrun[:5]}"
    errors = [i for i, c in enumerate(code) if any(o["output_type"] == "error" for o in c.get("outputs", []))]
    assert not errors, f"error outputs in cells {errors[:5]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_machine_paths_in_outputs(path):
    text = json.dumps([c.get("outputs", []) for c in _load(path)["cells"] if c["cell_type"] == "code"])
    m = MACHINE_PATH.search(text)
    assert not m, f"machine-specific path in outputs: {m.group(0)!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_front_matter_results_and_checked_cells(path):
    nb = _load(path)
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown"
    meta = export_blog.front_matter(_src(first))
    assert meta["title"].startswith(path.stem[:2]) and meta["tags"]
    assert report.results_of(nb), "a cell tagged `results` that printed its metrics (report.record)"
    assert any("nbval-check-output" in _tags(c) for c in nb["cells"]), "some facts are checked by nbval"
    assert re.search(r"smoke.*cpu", _src(nb["cells"][1]), re.S | re.I), "second cell states runtimes per profile"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_artifacts_of_the_syllabus_row(path):
    saves, loads = SYLLABUS[path.stem]
    source = "\n".join(_src(c) for c in _load(path)["cells"] if c["cell_type"] == "code")
    for name in saves:
        # every save takes the artifact's name first: bpe.save("name", tok, ...), artifacts.save("name", ...),
        # artifacts.save_model("name", model, ...)
        # or, for an imported model, its own save: models.save_smollm2(...)
        saved = rf"""\.save(?:_model)?\(\s*(?:#[^\n]*\n\s*)?f?["']{re.escape(name)}["']|\.save_{re.escape(name.replace('-', '_'))}\("""
        if name == "adapters/":  # a family: adapters.save("x", ...) writes the artifact adapters/x
            saved = r"""adapters\.save\(\s*["'][\w.-]+["']"""
        elif name.startswith("adapters/"):  # one member of the family
            saved = rf"""adapters\.save\(\s*["']{re.escape(name.removeprefix('adapters/'))}["']"""
        assert re.search(saved, source), f"{path.stem} must save {name!r}"
    for name in loads:
        assert f'"{name}' in source or f"'{name}" in source, f"{path.stem} must load {name!r}"


MAX_CELL_LINES = 40  # a longer code cell is a wall of code: split it into why -> code -> check steps
LONG_CELL_TAG = "long-cell"  # the explicit allow-list: a cell that is one idea (a class, a loop) says so
LONG_CELL_CAP = 60  # even one idea stops here


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_cells_are_short(path):
    code = [(i, len(_src(c).splitlines()), LONG_CELL_TAG in _tags(c)) for i, c in enumerate(_load(path)["cells"])
            if c["cell_type"] == "code"]
    long = [(i, n) for i, n, tagged in code if n > (LONG_CELL_CAP if tagged else MAX_CELL_LINES)]
    assert not long, (f"code cells over {MAX_CELL_LINES} lines (index, lines): {long}; split them, or tag a cell that "
                      f"is one idea {LONG_CELL_TAG!r} (at most {LONG_CELL_CAP} lines)")
    stale = [i for i, n, tagged in code if tagged and n <= MAX_CELL_LINES]
    assert not stale, f"cells tagged {LONG_CELL_TAG!r} but not long (index): {stale}; remove the tag"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_pickle_loading(path):
    source = "\n".join(_src(c) for c in _load(path)["cells"] if c["cell_type"] == "code")
    assert "pickle.load" not in source
    assert not re.search(r"torch\.load\((?![^)]*weights_only=True)", source)


def test_blog_export_of_every_notebook(tmp_path):
    for path in NOTEBOOKS:
        index = export_blog.export(path, tmp_path)
        text = index.read_text()
        assert text.startswith("---\ntitle: ")
        assert "injected-parameters" not in text
        links = export_blog.image_links(text)
        assert all((index.parent / link).exists() for link in links), f"{path.stem}: missing images"
        if '"image/png"' in path.read_text():
            assert links, f"{path.stem} has figures but its post shows none"


def test_readme_syllabus_shows_the_stored_cpu_runtimes():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        seconds = report.runtime_of(_load(path))
        row = next((line for line in readme.splitlines() if line.startswith(f"| {path.stem[:2]} ")), None)
        assert row, f"README syllabus has no row for {path.stem}"
        assert report.fmt_seconds(seconds) in row, f"README's cpu runtime for {path.stem} is stale: `make readme`"
