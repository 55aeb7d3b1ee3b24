"""Conversations for supervised fine-tuning: the chat data the course makes or ships, and how it is mixed.

A chat model is trained on conversations, each a list of messages:

    {"role": "system" | "user" | "assistant" | "tool", "content": str}

An assistant message that calls a tool also carries "tool_calls": [{"name": "calculator", "arguments": "48/2"}];
the tool's answer follows as {"role": "tool", "content": "24"}, and then the assistant goes on. The renderer
(nanolm.text.chat) turns a conversation into token ids and a loss mask; this module only makes the data.

The sources, each a function returning a list of conversations:

    gsm8k_tool_conversations     GSM8K word problems solved with calculator calls. Every <<48/2=24>> note in a
                                 worked solution becomes a tool call: the text up to the note, a call with the
                                 expression, the tool's result, then the text goes on ("24 clips in May.").
    fact_conversations           one question -> answer exchange per (question, answer) pair (COURSE_FACTS)
    identity_conversations       greetings and "who are you?", several wordings, deterministic per seed
    selfinstruct_conversations   the 427 hand-written Self-Instruct tasks (175 seed + 252 user-oriented)
    topical_chat_conversations   human-human chats about a topic (Topical-Chat), speaker A -> user, B -> assistant

`mixture` draws a deterministic mix of them by counts or weights and says how many came from each source;
`check_conversation` checks the shape of one conversation (roles, turn order, tool messages).

The calculator is nanolm.core.calculator.calculate (re-exported here): it walks Python's AST and allows only
numbers and arithmetic, with limits on length, depth and magnitude, so it never runs code. GSM8K's notes were written by people:
a note agrees when the calculator's value, rounded to the note's decimals, equals it (<<10/3=3.33>> agrees;
the tool still answers 3.333333). A note that disagrees (a typo) or that the calculator refuses (560//3)
gets its problem skipped, not silently fixed: 12 of 7473 train and 6 of 1319 test problems.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence

from ..core import data
from ..core.calculator import calculate, format_number  # noqa: F401  (re-exported: the data's calculator)
from ..eval import gsm8k
from ..text import corpus

Message = dict  # {"role", "content"} and, on an assistant message that calls tools, "tool_calls"
Conversation = list[Message]

ROLES = ("system", "user", "assistant", "tool")
CALCULATOR = "calculator"
NOTE = re.compile(r"<<([^=<>]*)=([^<>]*)>>")  # GSM8K's calculator note <<expression=result>>
ANSWER = "The answer is {answer}."  # what replaces the final "#### 72" line of a GSM8K solution

# ----------------------------------------------------------------------------- the calculator

def _agrees(value: float | int, written: str) -> bool:
    """Does the calculator's value match the result a person wrote? Equal when rounded to its decimals."""
    try:
        target = float(written.replace(",", "").strip())
    except ValueError:
        return False
    decimals = len(written.strip().partition(".")[2])
    return math.isclose(round(value, decimals), target, rel_tol=1e-9, abs_tol=1e-9)


# ----------------------------------------------------------------------------- GSM8K with tool calls


def solution_messages(answer_text: str) -> list[Message]:
    """A GSM8K worked solution -> assistant and tool messages (no user message); ValueError on a bad note.

    "Natalia sold 48/2 = <<48/2=24>>24 clips.\\n#### 24" becomes
        assistant "Natalia sold 48/2 = "  calling calculator("48/2")
        tool      "24"
        assistant "24 clips.\\nThe answer is 24."
    Texts are kept verbatim, so the assistant contents joined give the solution without its notes.
    """
    body, sep, final = answer_text.rpartition("\n#### ")
    if not sep:
        raise ValueError(f"no final '#### <number>' line in the solution: {answer_text[-80:]!r}")
    out: list[Message] = []
    pos = 0
    for m in NOTE.finditer(body):
        expression, written = m.group(1), m.group(2)
        value = calculate(expression)  # ValueError for an expression the calculator refuses
        if not _agrees(value, written):
            raise ValueError(f"note <<{expression}={written}>>: the calculator gives {format_number(value)}")
        call = {"name": CALCULATOR, "arguments": expression.strip()}
        out.append({"role": "assistant", "content": body[pos:m.start()], "tool_calls": [call]})
        out.append({"role": "tool", "content": format_number(value)})
        pos = m.end()
    if "<<" in body[pos:] or ">>" in body[pos:]:
        raise ValueError("a calculator note that is not of the form <<expression=result>>")
    answer = final.strip().replace(",", "")
    out.append({"role": "assistant", "content": body[pos:] + "\n" + ANSWER.format(answer=answer)})
    return out


def gsm8k_tool_conversations(split: str, n: int | None = None,
                             skipped: list[tuple[int, str]] | None = None) -> list[Conversation]:
    """The first n GSM8K problems of a split as tool-calling conversations: user question, then the solution.

    The final "#### 72" line becomes "The answer is 72." (a sentence a chat model would say; the number keeps
    GSM8K's form, commas removed). Problems with a note the calculator disagrees with are left out; pass a list
    as `skipped` to receive (index in the split, reason) for each.
    """
    _check_n(n)
    out = []
    for k, problem in enumerate(gsm8k.problems(split)):
        try:
            messages = solution_messages(problem["answer"])
        except ValueError as e:
            if skipped is not None:
                skipped.append((k, str(e)))
            continue
        out.append([{"role": "user", "content": problem["question"]}] + messages)
        if n is not None and len(out) == n:
            break
    return out


# ----------------------------------------------------------------------------- facts and identity

COURSE_FACTS = (
    ("What does SFT stand for?", "SFT stands for supervised fine-tuning: training on example conversations."),
    ("What is a token?", "A token is a piece of text, often a word or part of a word, that a model reads "
                         "as one unit."),
    ("What is a tokenizer?", "A tokenizer turns text into token ids and back."),
    ("What does BPE stand for?", "BPE stands for byte-pair encoding, a way to build a tokenizer by merging "
                                 "frequent pairs of symbols."),
    ("What does a language model predict?", "It predicts the next token, given the tokens before it."),
    ("What is a transformer?", "A transformer is a neural network built from attention and MLP layers."),
    ("What is attention?", "Attention lets each token look at earlier tokens and mix in what is relevant."),
    ("What is a context window?", "The context window is the largest number of tokens a model can read at once."),
    ("What is cross-entropy?", "Cross-entropy measures how surprised the model is by the right next token."),
    ("What is perplexity?", "Perplexity is the exponential of the mean cross-entropy: lower is better."),
    ("What is gradient descent?", "Gradient descent changes the weights a little in the direction that "
                                  "lowers the loss."),
    ("What is AdamW?", "AdamW is an optimizer: Adam with weight decay applied separately from the gradient."),
    ("What is a learning rate?", "The learning rate sets how big each step of the optimizer is."),
    ("What is LoRA?", "LoRA fine-tunes a model by training small low-rank matrices added to its frozen weights."),
    ("What is quantization?", "Quantization stores weights with fewer bits, such as 4 or 8, to save memory."),
    ("What is a KV cache?", "A KV cache keeps the keys and values of earlier tokens so generation does not "
                            "recompute them."),
    ("What is RoPE?", "RoPE, rotary position embedding, tells attention where tokens are by rotating queries "
                      "and keys."),
    ("What is RMSNorm?", "RMSNorm scales a vector by the inverse of its root mean square, with a learned gain."),
    ("What is a reward model?", "A reward model scores a response with one number: higher means preferred."),
    ("What is DPO?", "DPO, direct preference optimization, trains a model on preferred and rejected answers "
                     "without a separate reward model."),
    ("What is overfitting?", "Overfitting is learning the training data so closely that new data gets worse."),
    ("What is a validation set?", "A validation set is data kept out of training to measure how well a model "
                                  "generalizes."),
    ("What is temperature in sampling?", "Temperature divides the logits before sampling: lower is more "
                                         "predictable, higher is more varied."),
    ("What is a tool call?", "A tool call is when the model asks a tool, such as a calculator, and uses its "
                             "answer."),
    ("What is 2 to the power of 10?", "2 to the power of 10 is 1024."),
    ("How many bytes are in a kilobyte?", "A kilobyte is 1000 bytes; a kibibyte is 1024 bytes."),
)


def fact_conversations(facts: Sequence[tuple[str, str]] = COURSE_FACTS) -> list[Conversation]:
    """One user question -> assistant answer conversation per (question, answer) pair."""
    if not facts:
        raise ValueError("fact_conversations needs at least one (question, answer) pair")
    out = []
    for k, pair in enumerate(facts):
        if len(pair) != 2 or not all(isinstance(s, str) and s.strip() for s in pair):
            raise ValueError(f"fact {k} must be a (question, answer) pair of non-empty strings, got {pair!r}")
        out.append([{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}])
    return out


GREETINGS = ("Hi!", "Hello!", "Hey there.", "Good morning!", "hi", "Hello, how are you?", "Hey, what's up?")
GREETING_REPLIES = ("Hello! How can I help you today?", "Hi! What can I do for you?",
                    "Hey! I'm {name}. What would you like to talk about?", "Hello! Nice to meet you. "
                    "How can I help?")
WHO = ("Who are you?", "What are you?", "What is your name?", "Are you a person?", "Who made you?",
       "Tell me about yourself.", "What should I call you?")
WHO_REPLIES = ("I'm {name}, a small language model trained in {maker}.",
               "My name is {name}. I'm a language model, not a person, made in {maker}.",
               "I am {name}, a small chat model. I was trained from scratch in {maker}.",
               "You can call me {name}. I'm an AI language model built in {maker}, so I can make mistakes.")


def identity_conversations(name: str = "nanochat", n: int = 100, seed: int = 0,
                           maker: str = "the Zero to NanoChat course") -> list[Conversation]:
    """n short conversations: a greeting, a "who are you?", or both, in wordings drawn with Random(seed)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not name.strip() or not maker.strip():
        raise ValueError("name and maker must be non-empty")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        greet = [{"role": "user", "content": rng.choice(GREETINGS)},
                 {"role": "assistant", "content": rng.choice(GREETING_REPLIES).format(name=name)}]
        who = [{"role": "user", "content": rng.choice(WHO)},
               {"role": "assistant", "content": rng.choice(WHO_REPLIES).format(name=name, maker=maker)}]
        kind = rng.randrange(3)  # 0: greeting only, 1: identity only, 2: greeting then identity
        out.append(greet if kind == 0 else who if kind == 1 else greet + who)
    return out


# ----------------------------------------------------------------------------- shipped datasets


def selfinstruct_conversations(n: int | None = None) -> list[Conversation]:
    """Self-Instruct's hand-written tasks (seed_tasks, then user_oriented_instructions) as one exchange each.

    Fields: "instruction", "instances": [{"input", "output"}] (one instance each). The user message is the
    instruction, followed by a blank line and the input when there is one; the assistant answers with the output.
    """
    _check_n(n)
    out = []
    for filename in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        for task in data.read_jsonl("selfinstruct", filename):
            for inst in task["instances"]:
                prompt = task["instruction"].strip()
                if inst["input"].strip():
                    prompt += "\n\n" + inst["input"].strip()
                if inst["output"].strip():
                    out.append([{"role": "user", "content": prompt},
                                {"role": "assistant", "content": inst["output"].strip()}])
    return out[:n]


def _check_n(n: int | None) -> None:
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive number of conversations or None (all), got {n}")


def topical_chat_conversations(n: int | None = None, max_turns: int | None = 8) -> list[Conversation]:
    """Topical-Chat conversations (2156, about 22 turns each): speaker A is the user, B the assistant.

    Read through the course corpus's "dialogue" reader (one turn per line, "A: ..." / "B: ...", whitespace
    normalised). Each is cut to its first max_turns turns and, if it then ends on the user, one turn shorter.
    Note that notebook 08's pretraining mix holds the first 2 MB of these same dialogues.
    """
    _check_n(n)
    if max_turns is not None and max_turns < 2:
        raise ValueError(f"max_turns must be >= 2 (a user turn and a reply) or None, got {max_turns}")
    out = []
    for doc in corpus.documents("dialogue", cap_bytes=None):
        messages = []
        for line in doc.split("\n")[:max_turns]:
            speaker, _, text = line.partition(": ")
            if not text.strip():
                break  # an empty turn ends the conversation here
            messages.append({"role": "user" if speaker == "A" else "assistant", "content": text.strip()})
        if messages and messages[-1]["role"] == "user":
            messages.pop()
        if len(messages) >= 2:
            out.append(messages)
    return out[:n]


# ----------------------------------------------------------------------------- mixing and checking


def _counts_from_weights(sizes: Mapping[str, int], weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Split total among sources in proportion to weights (largest remainders get the leftover)."""
    if set(weights) != set(sizes):
        raise ValueError(f"weights name {sorted(weights)} but the parts are {sorted(sizes)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {dict(weights)}")
    s = sum(weights.values())
    exact = {k: total * w / s for k, w in weights.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def mixture(parts: Mapping[str, Sequence[Conversation]], counts: Mapping[str, int] | None = None,
            weights: Mapping[str, float] | None = None, total: int | None = None,
            seed: int = 0) -> tuple[list[Conversation], dict[str, int]]:
    """A shuffled mix of conversations and {source: how many it gave}; deterministic for a seed.

    Give either `counts` (conversations per source) or `weights` with a `total`. A count up to a source's size
    draws without replacement; a larger count repeats the whole source and draws the rest (upsampling a small
    source, such as identity conversations, is the usual reason).
    """
    if (counts is None) == (weights is None):
        raise ValueError("give exactly one of counts or weights (weights also need total)")
    if weights is not None:
        if total is None or total < 1:
            raise ValueError(f"weights need a total number of conversations >= 1, got {total}")
        counts = _counts_from_weights({k: len(v) for k, v in parts.items()}, weights, total)
    unknown = set(counts) - set(parts)
    if unknown:
        raise ValueError(f"counts name sources {sorted(unknown)} that are not among the parts {sorted(parts)}")
    rng = random.Random(seed)
    out: list[Conversation] = []
    for name in sorted(counts):  # a fixed order, so the mix does not depend on dict order
        k, source = counts[name], parts[name]
        if k < 0 or (k > 0 and not source):
            raise ValueError(f"source {name!r}: cannot take {k} conversations from {len(source)}")
        whole, rest = divmod(k, len(source)) if source else (0, 0)
        out += list(source) * whole + rng.sample(list(source), rest)
    rng.shuffle(out)
    return out, {name: counts[name] for name in sorted(counts)}


def _check_message(k: int, m: Message) -> None:
    """One message's fields: a known role, str content, tool_calls only on the assistant, well formed."""
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise ValueError(f"message {k}: needs a role among {ROLES}, got {m!r:.80}")
    if not isinstance(m.get("content"), str):
        raise ValueError(f"message {k} ({m['role']}): content must be a str, got {type(m.get('content')).__name__}")
    calls = m.get("tool_calls")
    if calls is not None:
        if m["role"] != "assistant" or not isinstance(calls, list) or not calls:
            raise ValueError(f"message {k}: tool_calls must be a non-empty list on an assistant message")
        for c in calls:
            if not (isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("arguments"), str)
                    and c["name"]):
                raise ValueError(f"message {k}: each tool call needs a str name and str arguments, got {c!r:.80}")
    elif m["role"] != "tool" and not m["content"].strip():
        raise ValueError(f"message {k} ({m['role']}): empty content (only a tool-calling assistant may be empty)")


def check_conversation(messages: Sequence[Message]) -> None:
    """Raise ValueError unless the conversation is well formed; return None when it is.

    A system message may come first; then the user starts, user and assistant alternate, an assistant message
    with tool_calls is followed by exactly one tool message per call and then the assistant again, and the
    conversation ends on an assistant message that calls no tool.
    """
    if not messages:
        raise ValueError("a conversation needs at least one user message and one assistant reply")
    pending = 0  # tool answers still owed to the last assistant's calls
    prev = None
    for k, m in enumerate(messages):
        _check_message(k, m)
        role = m["role"]
        if role == "system" and k != 0:
            raise ValueError(f"message {k}: a system message may only come first")
        if role == "tool" and pending == 0:
            raise ValueError(f"message {k}: a tool message must answer a tool call of the assistant message before")
        if role != "tool" and pending:
            raise ValueError(f"message {k}: {pending} tool call(s) of the assistant are still unanswered")
        expected = {None: ("system", "user"), "system": ("user",), "user": ("assistant",),
                    "assistant": ("user",), "tool": ("assistant", "tool")}[prev]
        if role not in expected and role != "tool":
            raise ValueError(f"message {k}: {role} cannot follow {prev or 'the start'} (expected {expected})")
        pending = len(m["tool_calls"]) if m.get("tool_calls") else pending - (role == "tool")
        prev = role
    if prev != "assistant" or pending:
        raise ValueError(f"a conversation must end with an assistant reply, not {prev}"
                         + (" with unanswered tool calls" if pending else ""))
