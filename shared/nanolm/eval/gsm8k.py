"""GSM8K, grade-school maths word problems, scored the way lm-evaluation-harness 0.4.13 does (task `gsm8k`).

Each problem has a `question` and an `answer`: a worked solution (with <<48/2=24>> calculator notes)
that ends in "#### 72". The harness (lm_eval/tasks/gsm8k/gsm8k.yaml, version 3.0) evaluates it as:

    prompt     5 solved train problems, each "Question: {question}\\nAnswer: {answer}", joined by "\\n\\n",
               then "Question: {question}\\nAnswer:"; greedy decoding until "Question:", "</s>" or "<|im_end|>"
    strict     the first  "#### (\\-?[0-9\\.\\,]+)" in the output: the model must copy the answer format
    flexible   the last   "(-?[$0-9.,]{2,})|(-?[0-9]+)": the last number-like run anywhere in the output
    metric     exact match after deleting ",", "$", everything up to "#### ", one trailing "." (in that
               order), ignoring case; the reference is the whole answer text, so it becomes its final number

so strict-match measures following the format, flexible-extract measures getting the number, and a
model can score quite differently on the two.

The shots. The harness draws them with one random.Random(1234) (its `fewshot_random_seed`), calling
rnd.sample(train, 5) once per test question in order, so each question gets its own five. `fewshot`
here draws once, Random(seed).sample(train, n), and the caller uses the same five for every question:
the harness's draw for the first test question, and a prompt prefix that a KV cache can share.
"""

from __future__ import annotations

import random
import re

from ..core import data

SEED = 1234  # lm-evaluation-harness's default fewshot_random_seed
STOP = ("Question:", "</s>", "<|im_end|>")  # generation_kwargs.until
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")  # exact_match regexes_to_ignore, applied in this order


def problems(split: str = "test") -> list[dict]:
    """The problems of a split ("test": 1319, "train": 7473), each {"question", "answer"}."""
    if split not in ("test", "train"):
        raise ValueError(f"GSM8K has splits 'test' and 'train', not {split!r}")
    return data.read_jsonl("gsm8k", f"{split}.jsonl")


def gold(answer_text: str) -> str:
    """The reference number of an answer: what follows "#### ", commas removed ("1,000" -> "1000")."""
    if "#### " not in answer_text:
        raise ValueError(f"no '#### ' in the answer: {answer_text[-80:]!r}")
    return answer_text.split("#### ")[-1].strip().replace(",", "")


def shot(problem: dict) -> str:
    """One solved example as the harness writes it: the question, then the whole worked answer."""
    return f"Question: {problem['question']}\nAnswer: {problem['answer']}"


def prompt(question: str, shots: list[dict]) -> str:
    """The few-shot prompt: the solved shots joined by blank lines, then the question and "Answer:"."""
    return "".join(shot(s) + "\n\n" for s in shots) + f"Question: {question}\nAnswer:"


def fewshot(n: int = 5, seed: int = SEED) -> list[dict]:
    """n solved train problems drawn with Random(seed).sample (the harness's draw for the first test question)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, not {n!r}")
    return random.Random(seed).sample(problems("train"), n)


def _pick(match: str | tuple[str, ...]) -> str | None:
    """A findall() match as the harness's RegexFilter reads it: the first non-empty group, stripped."""
    if isinstance(match, tuple):
        match = next((m for m in match if m), None)
    return match.strip() if match is not None else None


def strict(text: str) -> str | None:
    """strict-match: the number after the first "#### ", or None (the harness's "[invalid]")."""
    found = STRICT.findall(text)
    return _pick(found[0]) if found else None


def flexible(text: str) -> str | None:
    """flexible-extract: the last number-like run in the text (may keep "$", "," or a final "."), or None."""
    found = FLEXIBLE.findall(text)
    return _pick(found[-1]) if found else None


def normalize(s: str) -> str:
    """The exact_match view of an answer: ",", "$", all up to "#### " and a trailing "." deleted, lower case."""
    for pattern in IGNORE:
        s = re.sub(pattern, "", s)
    return s.lower()


def correct(pred: str | None, gold: str) -> bool:
    """Exact match after normalize(); an extraction that found nothing (None) is wrong."""
    return pred is not None and normalize(pred) == normalize(gold)
