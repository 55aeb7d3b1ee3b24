"""The course's pretraining mix: six domains of real text (about 10 MB), deterministic, with a held-out tail.

    tinystories  short children's stories (TinyStories)
    shakespeare  Tiny Shakespeare
    wikitext     Wikipedia articles (WikiText-2, raw test set)
    arxiv        titles and abstracts of arXiv CS/ML papers
    code         Python source of the standard library of the running interpreter
    dialogue     two-person conversations (Topical-Chat), one turn per line as "A: ..." / "B: ..."

Every domain is a list of documents cut at a byte cap; `pretraining_mix` joins them with blank
lines, and `split` holds out the last few percent of each domain for validation (notebook 08).
"""

from __future__ import annotations

import csv
import io
import re
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from ..core import data

DOMAINS = ("tinystories", "shakespeare", "wikitext", "arxiv", "code", "dialogue")
DEFAULT_CAP = 2_000_000  # bytes per domain: six domains make about 10 MB
DOC_SEP = "\n\n"
_CODE_SKIP = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "ensurepip"}


def _tinystories() -> list[str]:
    docs = [r["text"] for r in data.read_jsonl("tinystories", "tinystories_v2_valid_1727.jsonl")]
    raw = data.read_text("tinystories", "raw_train_prefix_smallGPT.txt")
    # paragraphs are separated by blank lines, stories by a single line break
    for part in re.split(r"(?<=[^\n])\n(?=[^\n])", raw.replace("<|endoftext|>", "\n")):
        if part.strip():
            docs.append(part.strip())
    return docs


def _shakespeare() -> list[str]:
    return [data.read_text("tinyshakespeare", "input.txt").strip()]


def _wikitext() -> list[str]:
    text = data.read_text("wikitext2", "wiki.test.raw")
    docs, cur = [], []
    for line in text.split("\n"):
        s = line.strip()
        if s.startswith("= ") and s.endswith(" =") and not s.startswith("= ="):  # a new article
            if cur:
                docs.append("\n".join(cur).strip())
            cur = []
        if s:
            cur.append(s)
    if cur:
        docs.append("\n".join(cur).strip())
    return [d for d in docs if d]


def _arxiv() -> list[str]:
    raw = data.read_text("arxiv", "arxiv_data_subset.csv")
    docs = []
    for row in csv.DictReader(io.StringIO(raw)):
        title = " ".join(row["titles"].split())
        abstract = " ".join(row["summaries"].split())  # the CSV wraps abstracts at ~80 columns
        docs.append(f"{title}\n\n{abstract}")
    return docs


def stdlib_files() -> list[Path]:
    """Sorted .py files of this interpreter's standard library (no tests, no site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for f in root.rglob("*.py"):
        rel = f.relative_to(root)
        if _CODE_SKIP & set(rel.parts) or rel.name.startswith("_sysconfigdata"):
            continue
        files.append(f)
    return sorted(files, key=lambda f: f.relative_to(root).as_posix())


def _code() -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for f in stdlib_files():
        try:
            text = f.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield f"# file: {f.relative_to(root).as_posix()}\n{text.strip()}"


def _dialogue() -> list[str]:
    docs = []
    for conv in data.read_jsonl("topical_chat", "topical_chat_compact.jsonl"):
        first = conv["turns"][0]["speaker"] if conv["turns"] else None
        lines = [f"{'A' if t['speaker'] == first else 'B'}: {' '.join(t['text'].split())}"
                 for t in conv["turns"]]
        if lines:
            docs.append("\n".join(lines))
    return docs


_SOURCES = {"tinystories": _tinystories, "shakespeare": _shakespeare, "wikitext": _wikitext,
            "arxiv": _arxiv, "code": _code, "dialogue": _dialogue}


@lru_cache(maxsize=16)
def _documents(domain: str, cap_bytes: int | None) -> tuple[str, ...]:
    out, used = [], 0
    for doc in _SOURCES[domain]():
        size = len(doc.encode("utf-8")) + len(DOC_SEP)
        if cap_bytes is not None and used + size > cap_bytes:
            room = cap_bytes - used
            # keep the head of the document that overflows, ending at a line break when one is near
            piece = doc.encode("utf-8")[:max(room, 0)].decode("utf-8", "ignore")
            if piece.rfind("\n") > len(piece) // 2:
                piece = piece[: piece.rfind("\n")]
            if piece.strip():
                out.append(piece.rstrip())
            break
        out.append(doc)
        used += size
    return tuple(out)


def documents(domain: str, cap_bytes: int | None = DEFAULT_CAP) -> list[str]:
    """The documents of one domain, in a fixed order, up to cap_bytes of UTF-8 (the last one cut at a line)."""
    if domain not in _SOURCES:
        raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
    return list(_documents(domain, cap_bytes))


def pretraining_mix(cap_bytes: int | None = DEFAULT_CAP, domains: tuple[str, ...] = DOMAINS) -> dict[str, str]:
    """{domain: text} of the course's pretraining mix: at most cap_bytes per domain, deterministic."""
    return {d: DOC_SEP.join(documents(d, cap_bytes)) for d in domains}


def split(text: str, val_fraction: float = 0.05) -> tuple[str, str]:
    """(train, val): the last val_fraction of the text held out, cut at the line break nearest the mark."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    mark = int(len(text) * (1 - val_fraction))
    cut = text.rfind("\n", 0, mark)
    cut = mark if cut <= 0 or mark - cut > 2000 else cut + 1
    return text[:cut], text[cut:]


def pretraining_splits(cap_bytes: int | None = DEFAULT_CAP, val_fraction: float = 0.05,
                       domains: tuple[str, ...] = DOMAINS) -> dict[str, dict[str, str]]:
    """{"train": {domain: text}, "val": {domain: text}}: each domain's last val_fraction held out."""
    out: dict[str, dict[str, str]] = {"train": {}, "val": {}}
    for d, text in pretraining_mix(cap_bytes, domains).items():
        out["train"][d], out["val"][d] = split(text, val_fraction)
    return out


def sample(mix: dict[str, str], bytes_per_domain: int) -> dict[str, str]:
    """The first ~bytes_per_domain of every domain (cut at a line break): a small, deterministic mix."""
    out = {}
    for d, text in mix.items():
        head = text.encode("utf-8")[:bytes_per_domain].decode("utf-8", "ignore")
        cut = head.rfind("\n")
        out[d] = head[:cut] if cut > len(head) // 2 else head
    return out
