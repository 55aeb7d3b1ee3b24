"""ci/export_blog.py on a small notebook: front matter, removed cells, images."""

import base64
import importlib.util

import nbformat
import pytest

from nanolm.core import paths

spec = importlib.util.spec_from_file_location("export_blog", paths.ROOT / "ci" / "export_blog.py")
export_blog = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export_blog)

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def _nb(tmp_path):
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell
    nb.cells = [
        nbformat.v4.new_markdown_cell('# 42 · A "test" post\n> Says what it does.\nTags: a, b'),
        code("PROFILE = 'cpu'", metadata={"tags": ["injected-parameters"]}),
        code("secret_setup()", metadata={"tags": ["remove-cell"]}),
        code("hidden_input()", metadata={"tags": ["remove-input"]}, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="shown output\n")]),
        code("plot()", outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"})]),
        code("noisy()", metadata={"tags": ["remove-output"]}, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="noise\n")]),
    ]
    path = tmp_path / "42_test_post.ipynb"
    nbformat.write(nb, path)
    return path


def test_export_applies_tags_and_writes_images(tmp_path):
    index = export_blog.export(_nb(tmp_path), tmp_path / "blog")
    text = index.read_text()
    assert index.parent.name == "42-test-post"
    assert text.startswith('---\ntitle: "42 · A \\"test\\" post"\nsummary: "Says what it does."\ntags: ["a", "b"]')
    assert "secret_setup" not in text and "PROFILE = 'cpu'" not in text
    assert "hidden_input" not in text and "shown output" in text
    assert "noisy()" in text and "noise" not in text
    links = export_blog.image_links(text)
    assert len(links) == 1 and (index.parent / links[0]).read_bytes() == PNG


def test_front_matter_is_required(tmp_path):
    path = _nb(tmp_path)
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source = "Just text"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="first cell"):
        export_blog.export(path, tmp_path / "blog")
