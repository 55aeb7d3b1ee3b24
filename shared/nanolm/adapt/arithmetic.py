"""Arithmetic with exact answers: notebook 13's verifiable task (SFT data, preference pairs, GRPO rewards).

A problem is two whole numbers and an operator, so its answer is one integer and a checker can grade any
reply without a judge: `reward` reads the last number the reply writes and compares. The same problem can
be asked two ways, and a chat model learns to tell them apart:

    tool     "What is 23 + 45?"                        -> a calculator call, its result, "The answer is 68."
    direct   "Without a calculator, what is 23 + 45?"  -> "23 + 45 = 68."

`problems` draws distinct problems, deterministic per seed; `exclude` keeps a held-out set apart. The
conversations are in the message format of nanolm.adapt.sft_data (tool calls named "calculator", whose
arguments nanolm.adapt.sft_data.calculate evaluates).
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from .sft_data import CALCULATOR, Conversation

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
TOOL_QUESTION = "What is {expression}?"
DIRECT_QUESTION = "Without a calculator, what is {expression}?"
_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def answer(self) -> int:
        return OPS[self.op](self.a, self.b)


def problems(n: int, *, seed: int, digits: tuple[int, int] = (2, 2), ops: str = "+",
             exclude: Collection[Problem] = ()) -> list[Problem]:
    """n distinct problems a op b, a with digits[0] digits and b with digits[1], none of them in exclude."""
    if n < 0 or min(digits) < 1 or not ops or set(ops) - set(OPS):
        raise ValueError(f"need n >= 0, digits >= 1 and ops drawn from {''.join(OPS)!r}; got {n}, {digits}, {ops!r}")
    lo = [10 ** (d - 1) if d > 1 else 0 for d in digits]
    hi = [10 ** d - 1 for d in digits]
    space = (hi[0] - lo[0] + 1) * (hi[1] - lo[1] + 1) * len(ops)
    if n + len(exclude) > space:
        raise ValueError(f"asked for {n} problems besides {len(exclude)} excluded, but only {space} exist")
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        p = Problem(rng.randint(lo[0], hi[0]), rng.choice(ops), rng.randint(lo[1], hi[1]))
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def question(p: Problem, *, tool: bool) -> str:
    return (TOOL_QUESTION if tool else DIRECT_QUESTION).format(expression=p.expression)


def tool_conversation(p: Problem) -> Conversation:
    """The question, a calculator call, the calculator's result, and the answer in words."""
    return [{"role": "user", "content": question(p, tool=True)},
            {"role": "assistant", "content": "",
             "tool_calls": [{"name": CALCULATOR, "arguments": f"{p.a}{p.op}{p.b}"}]},
            {"role": "tool", "content": str(p.answer)},
            {"role": "assistant", "content": f"The answer is {p.answer}."}]


def direct_answer(p: Problem, answer: int | None = None) -> str:
    """The reply a direct question expects (with another answer, for a wrong reply of the same form)."""
    return f"{p.expression} = {p.answer if answer is None else answer}."


def direct_conversation(p: Problem) -> Conversation:
    return [{"role": "user", "content": question(p, tool=False)},
            {"role": "assistant", "content": direct_answer(p)}]


def final_number(text: str) -> int | None:
    """The last integer written in text (a leading minus counts), or None if there is none."""
    found = _NUMBER.findall(text)
    return int(found[-1]) if found else None


def reward(text: str, p: Problem) -> float:
    """1.0 if the reply's last number is the answer, else 0.0: the verifiable reward."""
    return float(final_number(text) == p.answer)


def accuracy(replies: Sequence[str], probs: Sequence[Problem]) -> float:
    if len(replies) != len(probs) or not probs:
        raise ValueError(f"need one reply per problem and at least one, got {len(replies)} and {len(probs)}")
    return sum(reward(r, p) for r, p in zip(replies, probs, strict=True)) / len(probs)
