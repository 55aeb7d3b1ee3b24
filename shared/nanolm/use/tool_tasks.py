"""Tasks that need a tool, and tasks that need none: the data notebook 14 trains and measures tool use with.

Each `Task` is a question, the tool that answers it (or None), the reference call's arguments and the
expected answer. Every family comes in two sets whose wordings AND inputs differ, so a held-out score
measures tool use, not memory of the training questions:

    family       train (taught)                                   test (held out)
    calculator   "What is 23 times 45?"  two-digit numbers         "How much is 312 times 47?"  three digits
    python       "Reverse the string 'garden'."  words, n <= 20   "What is 'harbour' spelled backwards?"  others
    search       "What is the capital of Bakador?"  facts 0..n-1  "Which city is the capital of Pestonia?"  others
    none         identity, the course's facts (nanolm.adapt)       small talk and general questions (NO_TOOL)

Search questions are about made-up facts (nanolm.adapt.learn.made_up_facts, a seed of their own), so a model
cannot know the answer unless it retrieves the passage: `fact_passages` puts them into the document store.

`conversation(task, toolbox)` writes the training conversation: the question, an assistant turn with the
reference call, the tool's real output (from the same toolbox the model will use, so training sees what
testing shows), and the answer. `check_answer` decides whether a final answer is right; `check_call`
whether a call used the right tool with the right arguments (for search: the gold passage came back).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..adapt import learn
from ..core.calculator import calculate, format_number
from ..eval import stats
from . import agent
from .rag import Passage

FACT_SEED = 14  # the made-up facts of the store: not the seeds notebook 12's adapters were taught with


@dataclass(frozen=True)
class Task:
    question: str
    tool: str | None  # "calculator", "python", "search" or None
    arguments: str  # the reference call ("" for None)
    answer: str  # what the final answer must contain
    reply: str  # the final answer as the training data writes it
    kind: str  # the generator that made it (for breakdowns)
    passage: str = ""  # search tasks: the id of the store passage that answers (fact_passages' ids)


# ----------------------------------------------------------------------------- calculator

OPS = {"+": ("plus", "added to"), "-": ("minus", "take away"), "*": ("times", "multiplied by"),
       "/": ("divided by", "over")}
CALC_TRAIN = ("What is {a} {sym} {b}?", "What is {a} {word} {b}?", "Compute {a} {sym} {b}.", "Work out {a} {word} {b}.")
CALC_TEST = ("How much is {a} {word} {b}?", "Calculate {a} {word2} {b}, please.", "Quick question: {a} {sym} {b} = ?")


def calculator_tasks(n: int, seed: int, split: str) -> list[Task]:
    """n arithmetic questions: two-digit operands for train, three-digit (times two-digit) for test."""
    rng, out = random.Random(f"calc:{split}:{seed}"), []
    wordings = CALC_TRAIN if split == "train" else CALC_TEST
    for i in range(n):
        sym = "+-*/"[i % 4]
        a, b = (rng.randint(10, 99), rng.randint(10, 99)) if split == "train" else (rng.randint(100, 999),
                                                                                     rng.randint(11, 99))
        if sym == "/":
            a = a * b if split == "train" else (a // b + 1) * b  # whole quotients: an answer a person would check
        word, word2 = OPS[sym]
        q = wordings[(i // 4) % len(wordings)].format(a=a, b=b, sym=sym, word=word, word2=word2)
        answer = format_number(calculate(f"{a}{sym}{b}"))
        out.append(Task(q, "calculator", f"{a}{sym}{b}", answer, f"The answer is {answer}.", f"calc {sym}"))
    return out


# ----------------------------------------------------------------------------- python

WORDS = {"train": ("garden", "pepper", "balloon", "committee", "letter", "river", "assessment", "coffee",
                   "parallel", "success", "bookkeeper", "address", "possess", "cinnamon", "tomorrow", "happiness"),
         "test": ("harbour", "mississippi", "strawberry", "banana", "referee", "tattoo", "occurrence",
                  "accommodate", "millennium", "broccoli", "embarrass", "questionnaire")}
PY_TRAIN = {"count": ("How many times does the letter '{c}' appear in '{w}'?", "How many '{c}'s are in '{w}'?"),
            "reverse": ("Reverse the string '{w}'.", "Write '{w}' backwards."),
            "fib": ("What is Fibonacci number {n}? (F(0) = 0, F(1) = 1)", "Compute the Fibonacci number F({n})."),
            "sum": ("What is the sum of the whole numbers from 1 to {n}?", "Sum the integers 1 to {n}."),
            "primes": ("How many prime numbers are there below {n}?", "How many primes are less than {n}?")}
PY_TEST = {"count": "Count the letter '{c}' in the word '{w}'.",
           "reverse": "What is '{w}' spelled backwards?",
           "fib": "Give me F({n}) in the Fibonacci sequence that starts F(0) = 0, F(1) = 1.",
           "sum": "Add up every integer from 1 through {n}. What total do you get?",
           "primes": "Count the primes smaller than {n}."}
PY_CODE = {"count": "print({w!r}.count({c!r}))",
           "reverse": "print({w!r}[::-1])",
           "fib": "a, b = 0, 1\nfor _ in range({n}):\n    a, b = b, a + b\nprint(a)",
           "sum": "print(sum(range(1, {n} + 1)))",
           "primes": "print(sum(all(k % d for d in range(2, int(k ** 0.5) + 1)) for k in range(2, {n})))"}


def _py_answer(kind: str, w: str, c: str, n: int) -> str:
    """The answer, computed here by our own code (the model's program runs in the sandbox)."""
    if kind == "count":
        return str(w.count(c))
    if kind == "reverse":
        return w[::-1]
    if kind == "fib":
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        return str(a)
    if kind == "sum":
        return str(n * (n + 1) // 2)
    return str(sum(all(k % d for d in range(2, int(k**0.5) + 1)) for k in range(2, n)))


def python_tasks(n: int, seed: int, split: str) -> list[Task]:
    """n small programming questions: other words and number ranges for test than for train."""
    rng, out, kinds = random.Random(f"python:{split}:{seed}"), [], tuple(PY_TRAIN)
    lo, hi = (5, 20) if split == "train" else (21, 40)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        w = rng.choice(WORDS[split])
        c = rng.choice(sorted(set(w)))
        k = rng.randint(lo, hi) if kind == "fib" else rng.randint(10 * lo, 10 * hi) if kind != "count" else 0
        wording = PY_TRAIN[kind][(i // len(kinds)) % 2] if split == "train" else PY_TEST[kind]
        q = wording.format(w=w, c=c, n=k)
        answer = _py_answer(kind, w, c, k)
        out.append(Task(q, "python", PY_CODE[kind].format(w=w, c=c, n=k), answer, f"The answer is {answer}.",
                        f"python {kind}"))
    return out


# ----------------------------------------------------------------------------- search

SEARCH_TRAIN = {"capital": "What is the capital of {s}?", "inventor": "What did {s} invent?",
                "language": "What language is spoken in {s}?"}
SEARCH_TEST = {"capital": "Which city is the capital of {s}?", "inventor": "Which device did {s} create?",
               "language": "Which language do people in {s} use?"}
QUERY = {"capital": "capital of {s}", "inventor": "{s} invented", "language": "language of {s}"}


def made_up_facts(n_per_kind: int) -> list[learn.Fact]:
    """The store's invented facts: n_per_kind of each kind, the first half taught, the second half held out."""
    return [f for kind in learn.KINDS for f in learn.made_up_facts(n_per_kind, FACT_SEED, kind)]


def fact_passages(facts: Sequence[learn.Fact]) -> list[Passage]:
    """One store passage per made-up fact (source "made-up"), in two of its wordings: what search finds."""
    out = []
    for k, f in enumerate(facts):
        (p1, t1), (p2, t2) = f.examples()[:2]
        out.append(Passage(f"made-up/{k:03d}", "made-up", f.subject, f"{p1}{t1} {p2}{t2}"))
    return out


def search_tasks(facts: Sequence[learn.Fact], split: str) -> list[Task]:
    """A question per fact: the first half of each kind for train, the second half for test."""
    out = []
    for kind in learn.KINDS:
        of_kind = [(k, f) for k, f in enumerate(facts) if f.kind == kind]
        half = len(of_kind) // 2
        for k, f in of_kind[:half] if split == "train" else of_kind[half:]:
            q = (SEARCH_TRAIN if split == "train" else SEARCH_TEST)[kind].format(s=f.subject)
            out.append(Task(q, "search", QUERY[kind].format(s=f.subject), f.answer, f.sentence(),
                            f"search {kind}", passage=f"made-up/{k:03d}"))
    return out


# ----------------------------------------------------------------------------- no tool

NO_TOOL = (
    "Hello! How are you today?", "What is the capital of France?", "Write a haiku about the sea.",
    "Give me three tips for sleeping better.", "What colour is the sky on a clear day?",
    "Translate 'good morning' into Spanish.", "What is a synonym for 'happy'?", "Tell me a short joke.",
    "Who wrote Romeo and Juliet?", "What is the opposite of 'cold'?", "Name a fruit that is yellow.",
    "How many legs does a spider have?", "What do bees make?", "Say something nice about Mondays.",
    "What is the boiling point of water in Celsius?", "Suggest a name for a pet cat.",
    "What is photosynthesis, in one sentence?", "Which planet is closest to the Sun?",
    "Thank you for your help!", "What language is spoken in Brazil?")


# Taught: questions answered from memory, no call (written for the course; none of them in NO_TOOL).
NO_TOOL_TRAIN = (
    ("Hi there!", "Hello! How can I help you today?"),
    ("Good morning!", "Good morning! What can I do for you?"),
    ("Thanks a lot.", "You're welcome!"),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What gas do plants take in?", "Plants take in carbon dioxide."),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 degrees Celsius."),
    ("Which animal is known as the king of the jungle?", "The lion is called the king of the jungle."),
    ("What language is spoken in Germany?", "German is spoken in Germany."),
    ("Write a short poem about rain.", "Soft rain on the roof,\na quiet song for the night,\nthe garden drinks deep."),
    ("Give me two tips for studying.", "1. Study in short sessions with breaks. 2. Test yourself instead of rereading."),
    ("What is a good name for a dog?", "How about Biscuit? It is friendly and easy to call."),
    ("Tell me a fun fact.", "Octopuses have three hearts."),
    ("What is the opposite of 'up'?", "The opposite of 'up' is 'down'."),
    ("Give me a synonym for 'big'.", "A synonym for 'big' is 'large'."),
    ("Translate 'thank you' into French.", "'Thank you' in French is 'merci'."),
    ("What colour is grass?", "Grass is green."),
    ("How many continents are there?", "There are seven continents."),
    ("What do cows drink?", "Cows drink water."),
    ("Describe the moon in one sentence.", "The moon is Earth's rocky companion, shining with reflected sunlight."),
    ("What is gravity, in one sentence?", "Gravity is the force that pulls masses toward each other."),
    ("Who was the first person to walk on the moon?", "Neil Armstrong was the first person to walk on the moon."),
    ("Suggest a healthy breakfast.", "Oatmeal with fruit and a glass of milk is a healthy breakfast."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("How are you?", "I'm doing well, thank you! How can I help?"),
    ("Can you recommend a book?", "Try 'The Hobbit' by J.R.R. Tolkien: a short, warm adventure."),
    ("What season comes after winter?", "Spring comes after winter."),
)


# Real facts a model knows, asked in the very wordings of the search questions: known -> answer, made up -> search.
# (France and Brazil stay out: NO_TOOL asks about them.)
REAL_FACTS = {
    "capital": (("Italy", "Rome"), ("Japan", "Tokyo"), ("Germany", "Berlin"), ("Spain", "Madrid"),
                ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Russia", "Moscow"), ("China", "Beijing"),
                ("Greece", "Athens"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Mexico", "Mexico City")),
    "inventor": (("Alexander Graham Bell", "telephone"), ("Thomas Edison", "phonograph"),
                 ("Johannes Gutenberg", "printing press"), ("the Wright brothers", "airplane"),
                 ("James Watt", "improved steam engine"), ("Tim Berners-Lee", "World Wide Web")),
    "language": (("Germany", "German"), ("Japan", "Japanese"), ("Italy", "Italian"), ("Mexico", "Spanish"),
                 ("Russia", "Russian"), ("China", "Mandarin Chinese")),
}
REAL_REPLY = {"capital": "The capital of {s} is {a}.", "inventor": "{S} invented the {a}.",
              "language": "{a} is spoken in {s}."}


def real_fact_questions() -> list[tuple[str, str, str]]:
    """(question, direct answer, the search query a needless call would send) for every REAL_FACTS entry."""
    out = []
    for kind, facts in REAL_FACTS.items():
        for s, a in facts:
            out.append((SEARCH_TRAIN[kind].format(s=s), REAL_REPLY[kind].format(s=s, S=s[0].upper() + s[1:], a=a),
                        QUERY[kind].format(s=s)))
    return out


def no_tool_conversations(real_facts: bool = False) -> list[list[dict]]:
    """The taught no-call conversations: NO_TOOL_TRAIN (and REAL_FACTS asked as the search questions are)."""
    pairs = list(NO_TOOL_TRAIN) + ([(q, a) for q, a, _ in real_fact_questions()] if real_facts else [])
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs]


def call_preferences(tool_tasks: Sequence[Task]) -> list[tuple[list[dict], dict, dict]]:
    """(messages, chosen, rejected) assistant turns that teach when a call helps, for DPO (nanolm.adapt.dpo):

    a tool task          chosen: the reference call          rejected: a direct answer that is wrong
    a question it knows  chosen: the direct answer           rejected: a search call it does not need
    (NO_TOOL_TRAIN and REAL_FACTS, the latter in the search questions' own wordings)
    """
    def user(q):
        return [{"role": "user", "content": q}]

    out = []
    for k, t in enumerate(tool_tasks):
        others = [o for o in [*tool_tasks[k + 1:], *tool_tasks[:k]] if o.tool == t.tool and o.answer != t.answer]
        other = next((o for o in others if o.kind == t.kind), others[0] if others else None)
        if other is None:
            raise ValueError(f"a wrong answer for {t.question!r} is taken from another {t.tool} task: give two or more")
        call = {"role": "assistant", "content": "", "tool_calls": [{"name": t.tool, "arguments": t.arguments}]}
        wrong = t.reply.replace(t.answer, other.answer)  # a fluent, confident, wrong answer
        out.append((user(t.question), call, {"role": "assistant", "content": wrong}))
    real = real_fact_questions()
    known = [(q, a, q.rstrip("?.!")) for q, a in NO_TOOL_TRAIN if q not in {r[0] for r in real}] + real
    for q, a, query in known:
        needless = {"role": "assistant", "content": "", "tool_calls": [{"name": "search", "arguments": query}]}
        out.append((user(q), {"role": "assistant", "content": a}, needless))
    return out


def no_tool_tasks() -> list[Task]:
    """Held-out questions a model should answer without calling anything (the false-call rate)."""
    return [Task(q, None, "", "", "", "none") for q in NO_TOOL]


# ----------------------------------------------------------------------------- conversations and checks

def conversation(task: Task, toolbox) -> list[dict]:
    """The training conversation for a task: question, reference call, the tool's real output, answer."""
    user = {"role": "user", "content": task.question}
    if task.tool is None:
        raise ValueError("a task without a tool has no reference reply; train on nanolm.adapt's chat data")
    call = toolbox.call(task.tool, task.arguments)
    if not call.ok:
        raise ValueError(f"the reference call failed: {task.tool}({task.arguments!r}) -> {call.output}")
    return [user, {"role": "assistant", "content": "", "tool_calls": [{"name": task.tool, "arguments": task.arguments}]},
            {"role": "tool", "content": call.output}, {"role": "assistant", "content": task.reply}]


@dataclass(frozen=True)
class Outcome:
    """One task answered through the tool loop: was the answer right, was the first call right, and cost."""

    task: Task
    answer_ok: bool  # for a no-tool task: no call was made
    call_ok: bool  # the first call used the right tool with the right arguments (False when none was made)
    called: bool
    answer: str
    calls: tuple  # nanolm.use.tools.Call of every call made
    seconds: float  # the whole loop: generation, tools, generation again


def evaluate(model, fmt, items: Sequence[Task], toolbox, *, max_new_tokens: int = 80, **loop) -> list[Outcome]:
    """Run every task's question through nanolm.use.agent.run with the toolbox and score it."""
    out = []
    for t in items:
        r = agent.run(model, fmt, [{"role": "user", "content": t.question}], toolbox, max_new_tokens=max_new_tokens, **loop)
        first = r.calls[0] if r.calls else None
        call_ok = first is not None and check_call(t, first.name, first.arguments, first.output)
        answer_ok = check_answer(t, r.answer) if t.tool else not r.calls
        out.append(Outcome(t, answer_ok, call_ok, bool(r.calls), r.answer, tuple(r.calls), r.seconds))
    return out


def breakdown(outcomes: Sequence[Outcome]) -> dict[str, dict[str, stats.Accuracy]]:
    """Per tool ("none" for no-tool tasks): accuracy of the answer and of the first call, with Wilson intervals."""
    out = {}
    for tool in dict.fromkeys(o.task.tool or "none" for o in outcomes):
        mine = [o for o in outcomes if (o.task.tool or "none") == tool]
        out[tool] = {"answer": stats.accuracy([o.answer_ok for o in mine]),
                     "call": stats.accuracy([o.call_ok for o in mine]),
                     "called": stats.accuracy([o.called for o in mine])}
    return out


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def check_answer(task: Task, text: str) -> bool:
    """Is the expected answer in the final text? Numbers compared as numbers (1,134 = 1134 = 1134.0)."""
    if re.fullmatch(r"-?\d+(\.\d+)?", task.answer):
        want = float(task.answer)
        return any(abs(float(x.replace(",", "")) - want) < 1e-6 for x in _NUMBER.findall(text))
    return task.answer.lower() in text.lower()


def check_call(task: Task, name: str, arguments: str, output: str) -> bool:
    """Right tool with right arguments: the calculator's value, the program's printout, the gold passage."""
    if name != task.tool:
        return False
    if name == "calculator":
        try:
            return format_number(calculate(arguments)) == task.answer
        except ValueError:
            return False
    if name == "python":
        return output.strip() == task.answer
    return task.answer.lower() in output.lower()  # search: the retrieved passage holds the answer
