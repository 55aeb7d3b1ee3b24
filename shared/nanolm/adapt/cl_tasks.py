"""A sequence of small tasks with exact answers: the test bench of continual learning.

Forgetting is measured by learning tasks one after another and scoring every task after each step,
so the tasks must be quick to learn and exact to score. Each is a line of text, a prompt that names
the task and the answer after '=', ended by a newline:

    shift   shift:bcde=cdef         each letter moved one on: a rule (held-out inputs test it)
    back    back:bcde=abcd          each letter moved one back: the same inputs, another rule
    mirror  mirror:bcde=ihgf        each letter mirrored in b..i (b<->i, c<->h): a third rule
    fact    fact:zovok=grey         a made-up name and its colour: pure memory (the table is the test)

The three letter tasks share their inputs (four distinct letters of b..i) and disagree on the answer:
the interference that makes a network forget.

Models read bytes (vocabulary 256): no tokenizer stands between the learner and the text. An answer
is right when greedy decoding writes it exactly, newline included. That equals a single teacher-forced
pass in which the argmax at every answer position is the answer's byte (greedy decoding produces the
answer iff each of its steps picks the next answer byte), so `exact_match` scores a whole task in one
batched forward instead of a decoding loop; a test checks it against real greedy decoding.

Shapes: B batch, T tokens, V = 256 byte values.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import nn

from .finetune import IGNORE, Encoded, Example, collate

VOCAB = 256
END = "\n"
TASKS = ("shift", "back", "mirror", "fact")
COLOURS = ("red", "blue", "green", "teal", "gold", "pink", "grey", "plum")
LETTERS = "bcdefghi"  # the letter tasks draw four distinct ones: 8*7*6*5 = 1680 inputs


def encode(text: str) -> list[int]:
    """Text -> byte values (the model's tokens)."""
    return list(text.encode("utf-8"))


def decode(ids: Sequence[int]) -> str:
    """Byte values -> text (bytes that are not UTF-8 become U+FFFD)."""
    return bytes(ids).decode("utf-8", errors="replace")


def _names(n: int, seed: int) -> list[str]:
    """n distinct made-up names of consonant-vowel syllables, e.g. 'zorvik'."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        name = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(2)) + rng.choice("kmnrs")
        if name not in out:
            out.append(name)
    return out


def _inputs(task: str) -> list[str]:
    """Every input of a letter task (all share them), in a fixed order: four distinct letters."""
    return [a + b + c + d for a in LETTERS for b in LETTERS for c in LETTERS for d in LETTERS
            if len({a, b, c, d}) == 4]


def _answer(task: str, x: str) -> str:
    """The rule of a letter task applied to an input."""
    if task == "shift":
        return "".join(chr(ord(c) + 1) for c in x)  # bcde -> cdef
    if task == "back":
        return "".join(chr(ord(c) - 1) for c in x)  # bcde -> abcd
    if task == "mirror":
        return "".join(chr(ord(LETTERS[0]) + ord(LETTERS[-1]) - ord(c)) for c in x)  # b<->i, c<->h: bcde -> ihgf
    raise ValueError(f"unknown task {task!r}; tasks: {TASKS}")


def examples(task: str, n_train: int, n_test: int, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, test) (prompt, target) pairs of one task: prompt 'add:27+15=', target '42\\n'.

    Skill tasks draw disjoint train and test inputs (the test measures the rule, not memory); the fact task's
    test is its table (a made-up fact can only be remembered), n_train facts each seen in training."""
    if task == "fact":
        rng = random.Random(seed)
        facts = [(f"fact:{name}=", f"{rng.choice(COLOURS)}{END}") for name in _names(n_train, seed)]
        return facts, list(facts)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {TASKS}")
    pool = _inputs(task)
    if n_train + n_test > len(pool):
        raise ValueError(f"task {task!r} has {len(pool)} inputs, fewer than {n_train} + {n_test} asked for")
    picked = random.Random(f"{task}-{seed}").sample(pool, n_train + n_test)
    pairs = [(f"{task}:{x}=", f"{_answer(task, x)}{END}") for x in picked]
    return pairs[:n_train], pairs[n_train:]


def encode_pairs(pairs: Sequence[Example], whole_line: bool = False) -> list[Encoded]:
    """(prompt, target) -> (ids, labels) on bytes: the answer's bytes labelled, the prompt's -100.

    whole_line=True labels the prompt's bytes too (all but the first): training then also teaches the
    model to write a task's inputs after its prefix, which self-synthesized rehearsal relies on."""
    out = []
    for prompt, target in pairs:
        p, t = encode(prompt), encode(target)
        seq = p + t
        out.append((seq[:-1], seq[1:] if whole_line else [IGNORE] * (len(p) - 1) + t))
    return out


@torch.no_grad()
def exact_match(model: nn.Module, pairs: Sequence[Example], batch_size: int = 256) -> list[bool]:
    """Per pair: would greedy decoding write the target exactly? One teacher-forced pass per batch."""
    if not pairs:
        raise ValueError("exact_match needs at least one (prompt, target) pair")
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    right = []
    for i in range(0, len(pairs), batch_size):
        x, y = (t.to(device) for t in collate(encode_pairs(pairs[i: i + batch_size])))
        hit = (model(x)[0].argmax(-1) == y) | (y == IGNORE)  # (B, T): every scored position must be the argmax
        right += hit.all(dim=1).tolist()
    model.train(was_training)
    return right


def accuracy(model: nn.Module, pairs: Sequence[Example]) -> float:
    """The share of pairs answered exactly."""
    hits = exact_match(model, pairs)
    return sum(hits) / len(hits)


@torch.no_grad()
def greedy(model: nn.Module, prompt: str, max_new: int = 8) -> str:
    """Greedy decoding until a newline (or max_new bytes): the slow loop exact_match stands in for."""
    ids = encode(prompt)
    for _ in range(max_new):
        nxt = int(model(torch.tensor([ids]))[0][0, -1].argmax())
        ids.append(nxt)
        if nxt == ord(END):
            break
    return decode(ids[len(encode(prompt)):])


def text_windows(text: str, block: int, n: int, seed: int) -> list[Encoded]:
    """n random windows of block+1 bytes of a text as (ids, labels) pairs: plain language modelling."""
    data = encode(text)
    if len(data) <= block + 1:
        raise ValueError(f"the text has {len(data)} bytes, too few for windows of {block + 1}")
    rng = random.Random(seed)
    starts = [rng.randrange(len(data) - block - 1) for _ in range(n)]
    return [(data[s: s + block], data[s + 1: s + block + 1]) for s in starts]


def window(text: str) -> Encoded:
    """A text as one language-modelling pair: (bytes[:-1], bytes[1:])."""
    data = encode(text)
    return data[:-1], data[1:]


@torch.no_grad()
def sample(model: nn.Module, prompts: Sequence[str], n_new: int, generator: torch.Generator,
           temperature: float = 1.0) -> list[str]:
    """n_new bytes after each prompt (all prompts the same length), sampled (temperature 0: greedy)."""
    ids = torch.tensor([encode(p) for p in prompts])  # (B, P): equal lengths, no padding needed
    was_training = model.training
    model.eval()
    for _ in range(n_new):
        logits = model(ids[:, -model.config.block_size:])[0][:, -1].float()  # (B, V)
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)
        ids = torch.cat([ids, nxt], dim=1)
    model.train(was_training)
    return [decode(row[len(encode(prompts[0])):]) for row in ids.tolist()]


def synthesize(model: nn.Module, task: str, n: int, generator: torch.Generator) -> list[Example]:
    """Self-synthesized examples of a task: the model writes inputs after the task's prefix, then answers them.

    Written inputs are cut at '='; kept if well formed (printable ASCII, the commonest length) and distinct;
    the answer is the model's own greedy one, kept if it ends with a newline. Up to n pairs."""
    written = sample(model, [f"{task}:"] * n, 12, generator)
    inputs = [w.split("=")[0] for w in written if "=" in w]
    inputs = [x for x in inputs if x.isascii() and x.isprintable()]  # one byte per character, no newline
    if not inputs:
        return []
    length = max(set(map(len, inputs)), key=[len(x) for x in inputs].count)
    inputs = sorted({x for x in inputs if len(x) == length})  # distinct: a diverse, not repeated, set
    prompts = [f"{task}:{x}=" for x in inputs]
    answers = sample(model, prompts, 10, generator, temperature=0)
    return [(p, a.split(END)[0] + END) for p, a in zip(prompts, answers, strict=True) if END in a]
