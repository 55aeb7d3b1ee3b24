"""Multiple-choice benchmarks from data/, prepared as lm-evaluation-harness prepares them, and scored.

    hellaswag      HellaSwag validation, the course's 1,000-item sample: which ending continues a
                   short activity description (4 endings; the harness's preprocessing below)
    arc_easy       ARC-Easy, the Dev split (AI2's name for the harness's "validation"): grade-school
    arc_challenge  ARC-Challenge, Dev: the questions simple retrieval and co-occurrence methods missed

Each item becomes a context, its choices and the gold index, with the harness's prompts:
HellaSwag's context is "<activity label>: <ctx_a> <Ctx_b>", bracketed WikiHow artifacts removed,
and its choices are the endings; ARC's context is "Question: <stem>\nAnswer:" and its choices the
answer texts. A choice is scored as " " + choice (the harness's target delimiter).

Subsets are the first n items in file order, so the harness and this code score the same items.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..core import data
from . import scorer

TASKS = ("hellaswag", "arc_easy", "arc_challenge")
FILES = {"hellaswag": ("hellaswag", "hellaswag_val_1000_sample.jsonl"),
          "arc_easy": ("arc", "ARC-Easy-Dev.jsonl"), "arc_challenge": ("arc", "ARC-Challenge-Dev.jsonl")}


@dataclass(frozen=True)
class Item:
    """One multiple-choice question: a context, its choices and the index of the right one."""

    id: str
    context: str
    choices: tuple[str, ...]
    gold: int


def _hellaswag_text(text: str) -> str:
    """The harness's HellaSwag cleanup: WikiHow's ' [title]' becomes '. ', other [tags] go, double spaces go."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_item(doc: dict) -> Item:
    """One HellaSwag record as the harness prepares it."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return Item(str(doc["ind"]), _hellaswag_text(doc["activity_label"] + ": " + ctx),
                tuple(_hellaswag_text(e) for e in doc["endings"]), int(doc["label"]))


def arc_item(doc: dict) -> Item:
    """One ARC record (AI2's layout) as the harness prepares it."""
    q = doc["question"]
    labels = [c["label"] for c in q["choices"]]
    return Item(doc["id"], f"Question: {q['stem']}\nAnswer:", tuple(c["text"] for c in q["choices"]),
                labels.index(doc["answerKey"]))


def items(task: str, n: int | None = None) -> list[Item]:
    """The first n items of a task (all by default), prepared as the harness prepares them."""
    if task not in FILES:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    docs = data.read_jsonl(*FILES[task])
    prepare = hellaswag_item if task == "hellaswag" else arc_item
    return [prepare(d) for d in docs[:n]]


def raw_docs(task: str, n: int | None = None) -> list[dict]:
    """The first n records of a task's file as stored (what lm-evaluation-harness reads)."""
    return data.read_jsonl(*FILES[task])[:n]


@dataclass
class Result:
    """Every item's choice scores, and what each metric picks."""

    task: str
    items: list[Item]
    scores: list[list[scorer.Choice]]
    seconds: float
    picks: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self):
        self.picks = {m: [scorer.pick(s, m) for s in self.scores] for m in scorer.METRICS}

    def correct(self, metric: str = "acc_norm") -> list[bool]:
        """Per item: did the metric's pick equal the gold answer."""
        return [p == it.gold for p, it in zip(self.picks[metric], self.items, strict=True)]

    def accuracy(self, metric: str = "acc_norm") -> float:
        """Fraction of items answered right under a metric."""
        right = self.correct(metric)
        return sum(right) / len(right)

    def chance(self) -> float:
        """Expected accuracy of guessing: the mean of 1 / (number of choices) over the items."""
        return sum(1 / len(it.choices) for it in self.items) / len(self.items)

    def disagreements(self) -> list[int]:
        """Indices of items where the metrics do not all pick the same choice."""
        return [i for i in range(len(self.items)) if len({self.picks[m][i] for m in scorer.METRICS}) > 1]


def evaluate(model: nn.Module, encode: scorer.Encode, task: str, items_: list[Item],
             score: Callable = scorer.score, log_every: int = 0) -> Result:
    """Score every item of a task; log_every > 0 prints a progress line every that many items."""
    t0, scores = time.perf_counter(), []
    for i, item in enumerate(items_, 1):
        scores.append(score(model, encode, item.context, item.choices))
        if log_every and (i % log_every == 0 or i == len(items_)):
            dt = time.perf_counter() - t0
            print(f"{task} {i}/{len(items_)} | {i / dt:.1f} items/s | {dt:.1f} s")
    return Result(task, items_, scores, time.perf_counter() - t0)
