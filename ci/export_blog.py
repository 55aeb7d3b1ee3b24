"""Turn executed notebooks into blog posts: build/blog/<NN-slug>/index.md plus its images.

    python ci/export_blog.py [notebooks/00_math.ipynb ...] [--out build/blog]

The first cell is the front matter, written in Markdown so it reads well in Jupyter:
    # 00 · The math under deep learning
    > one-line summary
    Tags: math, numpy, gradients
It becomes YAML front matter. Cells tagged remove-cell are dropped, inputs tagged
remove-input and outputs tagged remove-output are hidden, and papermill's
injected-parameters cell never appears.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter
from nbconvert.preprocessors import TagRemovePreprocessor
from traitlets.config import Config

ROOT = Path(__file__).resolve().parents[1]


def front_matter(cell_source: str) -> dict:
    """title / summary / tags from the first cell's Markdown."""
    title = re.search(r"^#\s+(.+)$", cell_source, re.M)
    summary = re.search(r"^>\s*(.+)$", cell_source, re.M)
    tags = re.search(r"^Tags:\s*(.+)$", cell_source, re.M | re.I)
    if not title or not summary or not tags:
        raise ValueError("the first cell must hold '# Title', '> summary' and 'Tags: a, b' lines")
    return {
        "title": title.group(1).strip(),
        "summary": summary.group(1).strip(),
        "tags": [t.strip() for t in tags.group(1).split(",") if t.strip()],
    }


def _yaml(meta: dict) -> str:
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return (
        "---\n"
        f"title: {q(meta['title'])}\n"
        f"summary: {q(meta['summary'])}\n"
        f"tags: [{', '.join(q(t) for t in meta['tags'])}]\n"
        f"notebook: {q(meta['notebook'])}\n"
        "---\n\n"
    )


def slug(stem: str) -> str:
    """00_math -> 00-math."""
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")


def export(nb_path: Path, out_root: Path) -> Path:
    """Export one notebook; return the path of its index.md."""
    nb = nbformat.read(nb_path, as_version=4)
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        raise ValueError(f"{nb_path.name}: the first cell must be the Markdown front matter")
    meta = front_matter(nb.cells[0].source) | {"notebook": nb_path.name}
    nb.cells = nb.cells[1:]  # the front matter becomes YAML, not a heading in the body
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_cell_tags = {"remove-cell", "injected-parameters"}
    c.TagRemovePreprocessor.remove_input_tags = {"remove-input"}
    c.TagRemovePreprocessor.remove_all_outputs_tags = {"remove-output"}
    exporter = MarkdownExporter(config=c)
    exporter.register_preprocessor(TagRemovePreprocessor(config=c), enabled=True)
    name = slug(nb_path.stem)
    out_dir = out_root / name
    out_dir.mkdir(parents=True, exist_ok=True)
    body, resources = exporter.from_notebook_node(nb, resources={"output_files_dir": "images", "unique_key": name})
    for rel, data in resources.get("outputs", {}).items():
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    index = out_dir / "index.md"
    index.write_text(_yaml(meta) + body, encoding="utf-8")
    return index


def image_links(markdown: str) -> list[str]:
    """Relative image paths referenced by a Markdown document."""
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", markdown)
    links += re.findall(r"<img[^>]+src=\"([^\"]+)\"", markdown)
    return [link for link in links if not link.startswith(("http://", "https://", "data:"))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "blog")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = 0
    for p in paths:
        index = export(p, args.out)
        broken = [i for i in image_links(index.read_text("utf-8")) if not (index.parent / i).exists()]
        missing += len(broken)
        shown = index.relative_to(ROOT) if index.is_relative_to(ROOT) else index
        print(f"  {p.name} -> {shown}" + (f"  MISSING IMAGES: {broken}" if broken else ""))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
