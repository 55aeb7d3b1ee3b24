"""Learning new facts with LoRA, and checking that nothing the model knew was lost on the way.

To see whether fine-tuning taught a model something, teach it facts it cannot already know. `made_up_facts`
invents them from syllables (a country Veltria whose capital is Marnox, an inventor Doran Kelvix and the
velomiscope he built), deterministic for a seed. Each fact is taught in several wordings (TEMPLATES) and
probed with a question worded differently from all of them, so a right answer means the model learned the
fact, not the sentence:

    taught    "The capital of Veltria is" -> " Marnox."          (and three other wordings)
    probed    "Which city is the capital of Veltria? It is"   choices Marnox | Dulvek | Tressim | Orlan

The probe is multiple choice, scored by log-likelihood (nanolm.eval.scorer, metric acc): the distractors are
the other answers of the same fact set, so knowing which answers were taught is not enough; the model must
tie each one to its subject. Chance is 1 / n_choices. Control facts, made up the same way and never taught,
must stay near chance: if they rise, the model learned to prefer answers that look made up, not the facts.

`learn` trains a LoRA adapter on (prompt, target) examples, in place on the model it is given (no copy: the
base weights stay frozen and only the adapter slots change), optionally mixing earlier examples back in
(replay, the simplest defence against forgetting), and returns the adapter's tensors.

`retention_check` decides whether an adapter kept what the model knew, by a paired comparison: the same
items answered before and after. Items answered right before and wrong after are `lost`, the reverse
`gained`; items that did not change say nothing about a change. If learning did no harm, a changed item is
as likely lost as gained, so lost ~ Binomial(lost + gained, 1/2): the exact sign test (McNemar's exact test)
gives the two-sided p-value

    p = min(1, 2 * sum_{i <= min(lost, gained)} C(n, i) / 2^n)        n = lost + gained

and the adapter is `kept` unless it lost more items than it gained with p < alpha (and, if max_drop is set,
its accuracy fell by at most max_drop). A verdict from a few dozen items only catches large drops: the Wilson
intervals of the two accuracies say how large.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..eval import stats, tasks
from .finetune import Example, encode_examples, train
from .lora import apply_lora, load_lora_state, lora_layers, lora_state

# kind -> teaching wordings (prompt, target) and the probe question; {s} the subject, {a} the answer
TEMPLATES = {
    "capital": ((("The capital of {s} is", " {a}."), ("{s}'s capital city is", " {a}."),
                 ("What is the capital of {s}? The capital is", " {a}."),
                 ("The seat of government of {s} is the city of", " {a}.")),
                "Which city is the capital of {s}? It is"),
    "inventor": ((("{s} invented the", " {a}."), ("The most famous invention of {s} is the", " {a}."),
                  ("What did {s} invent? The", " {a}."), ("{s} is known as the inventor of the", " {a}.")),
                 "Which device did {s} create? It was the"),
    "language": ((("The people of {s} speak", " {a}."), ("The official language of {s} is", " {a}."),
                  ("What language is spoken in {s}? It is", " {a}."), ("In {s}, most people speak", " {a}.")),
                 "Which language do people in {s} use? They use"),
}
KINDS = tuple(TEMPLATES)
ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr",
          "st", "tr", "fl", "pl")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o")
CODAS = ("n", "r", "l", "s", "x", "m", "k", "th")
SUFFIXES = {"country": ("ria", "nia", "via", "land", "dor", "stan"), "device": ("scope", "graph", "meter", "phone"),
            "language": ("ish", "ese", "ic", "an")}
# real names an invented word must never be (a syllable soup can hit one: Mali, Lima, Tokyo-like words)
REAL = frozenset("""paris rome london berlin madrid lima mali oman peru chad cuba fiji laos iran iraq togo niger
tonga samoa nepal kenya ghana yemen malta spain italy china japan india egypt sudan chile haiti benin gabon
congo libya syria jordan israel qatar kuwait bali java riga sofia kiev minsk oslo bern vaduz doha baku
dili male apia suva accra dakar tunis cairo rabat nairobi lusaka harare maputo tokyo seoul delhi dublin
vienna prague warsaw athens lisbon havana quito bogota caracas santiago sydney boston denver dallas tesla
edison newton darwin volta ampere watt morse bell nobel curie galileo kepler euler gauss turing faraday
english french german spanish russian polish danish turkish arabic hindi latin greek dutch swedish thai
telephone telescope telegraph phonograph barometer thermometer microscope periscope radio laser
anna maria john peter paul mark luke sara lara nora tom tim ben dan sam max leo""".split())


@dataclass(frozen=True)
class Fact:
    """One invented fact: subject -> answer, its teaching wordings and its differently worded probe question."""

    kind: str
    subject: str
    answer: str
    templates: tuple[tuple[str, str], ...]  # (prompt, target) wordings with {s} and {a}
    probe: str  # the probe question with {s}; the answer follows it after a space

    def examples(self) -> list[Example]:
        """The fact in every teaching wording, as (prompt, target) pairs."""
        return [(p.format(s=self.subject), t.format(a=self.answer)) for p, t in self.templates]

    def sentence(self) -> str:
        """The fact as one plain sentence (the first wording)."""
        prompt, target = self.examples()[0]
        return prompt + target

    def question(self) -> str:
        """The probe question (never one of the teaching wordings)."""
        return self.probe.format(s=self.subject)


def _word(rng: random.Random, syllables: int, suffix: str = "", coda: bool = True) -> str:
    """A pronounceable made-up word: consonant-vowel syllables, maybe a final consonant, maybe a suffix."""
    w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables))
    coda = coda and (not suffix or suffix[0] in "aeiou")  # Stab-en-ish, not Stabe-ish
    return (w + (rng.choice(CODAS) if coda else "") + suffix).capitalize()


def _pair(kind: str, rng: random.Random) -> tuple[str, str]:
    """(subject, answer) words of one kind."""
    if kind == "capital":
        return _word(rng, 2, rng.choice(SUFFIXES["country"])), _word(rng, 2)
    if kind == "inventor":
        person = f"{_word(rng, 2, coda=False)} {_word(rng, 2)}"
        return person, _word(rng, 2, rng.choice(SUFFIXES["device"]), coda=False).lower()
    return _word(rng, 2, rng.choice(("mora", "thal", "venn", "dai"))), _word(rng, 2, rng.choice(SUFFIXES["language"]))


def made_up_facts(n: int, seed: int, kind: str) -> list[Fact]:
    """n invented facts of one kind (KINDS), the same for the same (n, seed, kind); all words distinct, none real."""
    if kind not in TEMPLATES:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(f"made-up-facts:{kind}:{seed}")  # a str seed: the same on every run and platform
    templates, probe = TEMPLATES[kind]
    facts, used = [], set()
    while len(facts) < n:
        subject, answer = _pair(kind, rng)
        words = {w.lower() for w in (*subject.split(), answer)}
        if words & (REAL | used) or len(words) < len(subject.split()) + 1:
            continue  # a real name, or a word already used in this set: draw again
        used |= words
        facts.append(Fact(kind, subject, answer, templates, probe))
    return facts


def teaching_examples(facts: Sequence[Fact]) -> list[Example]:
    """Every fact in every teaching wording: the training set."""
    return [ex for f in facts for ex in f.examples()]


def probe_items(facts: Sequence[Fact], n_choices: int = 4, seed: int = 0) -> list[tasks.Item]:
    """A multiple-choice item per fact: its probe question, its answer and n_choices - 1 other answers of the set."""
    if not 2 <= n_choices <= len(facts):
        raise ValueError(f"n_choices must lie in [2, {len(facts)}] (the facts give the distractors), got {n_choices}")
    rng, out = random.Random(f"probe:{seed}"), []
    for i, fact in enumerate(facts):
        others = [f.answer for j, f in enumerate(facts) if j != i]
        choices = [fact.answer, *rng.sample(others, n_choices - 1)]
        rng.shuffle(choices)  # the right answer at a random place (scorer.pick breaks ties toward the first)
        out.append(tasks.Item(f"{fact.kind}-{i}", fact.question(), tuple(choices), choices.index(fact.answer)))
    return out


METRICS = {"hellaswag": "acc_norm"}  # the metric of each probe set; any other set is scored by acc


def measure(model: nn.Module, encode: Callable[[str], list[int]],
            probes: Mapping[str, Sequence[tasks.Item]]) -> dict[str, list[bool]]:
    """Per probe set, per item: did the model pick the right choice (acc; acc_norm for HellaSwag)."""
    was_training = model.training
    model.eval()
    out = {name: tasks.evaluate(model, encode, name, list(items)).correct(METRICS.get(name, "acc"))
           for name, items in probes.items()}
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------- learning


@torch.no_grad()
def fresh_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Adapter tensors as apply_lora(seed=seed) starts them: A Kaiming-uniform, B zero (the model = its base)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, layer in lora_layers(model).items():
        for block, ad in layer.adapters.items():
            A = torch.empty(ad.A.shape, dtype=ad.A.dtype)
            nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=g)
            out[f"{name}.adapters.{block}.A"] = A.to(ad.A.device)
            out[f"{name}.adapters.{block}.B"] = torch.zeros_like(ad.B)
            if ad.magnitude is not None:  # DoRA: m = the row norms of W, so that it starts at the base too
                out[f"{name}.adapters.{block}.magnitude"] = torch.linalg.norm(layer.base.weight[layer.rows(block)],
                                                                              dim=1)
    return out


def learn(model: nn.Module, examples: Sequence[Example], *, steps: int, lr: float, batch_size: int,
          block_size: int, encode: Callable[[str], list[int]], eos_id: int | None = None, r: int = 8,
          alpha: float = 16, targets: str | Sequence[str] = "all", seed: int = 0, replay: Sequence[Example] = (),
          start: Mapping[str, torch.Tensor] | None = None, log_every: int | None = None,
          print_fn: Callable[[str], None] | None = print) -> dict:
    """Train a LoRA adapter on (prompt, target) examples, in place on `model`; return its tensors and record.

    A model without LoRA gets it (apply_lora with r, alpha, targets); one that has it keeps its layers, and
    their current tensors are overwritten (save them first: the tensors of any adapter in use are lost). The
    adapter starts fresh (B = 0: the base model) or, with `start`, from an earlier adapter's tensors, to keep
    training it. `replay` examples (earlier tasks) join the new ones, each example equally likely in a batch.
    Returns {"adapter": a copy of its tensors (lora_state), "record": finetune.train's dict, "model": model}.
    """
    if not examples:
        raise ValueError("learn needs at least one (prompt, target) example")
    if not lora_layers(model):
        apply_lora(model, r=r, alpha=alpha, targets=targets, seed=seed)
    load_lora_state(model, dict(start) if start is not None else fresh_state(model, seed))
    encoded = encode_examples(list(examples) + list(replay), encode, block_size, eos_id)
    record = train(model, encoded, steps=steps, batch_size=batch_size, lr=lr, log_every=log_every or steps,
                   seed=seed, print_fn=print_fn)
    model.eval()
    adapter = {k: v.detach().clone() for k, v in lora_state(model).items()}
    return {"adapter": adapter, "record": record, "model": model, "n_new": len(examples), "n_replay": len(replay)}


# ----------------------------------------------------------------------------- did it keep what it knew?


def sign_test(lost: int, gained: int) -> float:
    """Two-sided exact sign test (McNemar's exact test) on the discordant pairs: P(a split this uneven | 1/2)."""
    if lost < 0 or gained < 0:
        raise ValueError(f"counts must be >= 0, got lost={lost}, gained={gained}")
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(lost, gained) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Retention:
    """A paired before/after comparison on the same items, and its verdict."""

    before: stats.Accuracy
    after: stats.Accuracy
    lost: int  # right before, wrong after
    gained: int  # wrong before, right after
    p_value: float  # two-sided exact sign test on lost vs gained
    alpha: float
    max_drop: float | None
    kept: bool

    def as_dict(self) -> dict:
        """Plain values, for JSON metrics."""
        return {"before": self.before.as_dict(), "after": self.after.as_dict(), "lost": self.lost,
                "gained": self.gained, "p_value": self.p_value, "alpha": self.alpha, "max_drop": self.max_drop,
                "kept": self.kept}

    def __str__(self) -> str:
        return (f"{stats.fmt_interval(self.before)} -> {stats.fmt_interval(self.after)} | lost {self.lost}, "
                f"gained {self.gained}, sign test p={self.p_value:.3f} | {'kept' if self.kept else 'NOT kept'}")


def retention_check(before: Sequence[bool], after: Sequence[bool], *, alpha: float = 0.05,
                    max_drop: float | None = None) -> Retention:
    """Did a change keep what the model knew? Per-item right/wrong before and after, on the same items.

    kept is False when more items were lost than gained and the sign test says that is unlikely by chance
    (p < alpha), or when max_drop is set and the accuracy fell by more than it.
    """
    if len(before) != len(after) or not before:
        raise ValueError(f"before and after must be the same items (paired), got {len(before)} and {len(after)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    lost = sum(bool(b) and not a for b, a in zip(before, after, strict=True))
    gained = sum(bool(a) and not b for b, a in zip(before, after, strict=True))
    acc_b, acc_a = stats.accuracy(before), stats.accuracy(after)
    p = sign_test(lost, gained)
    kept = not (lost > gained and p < alpha) and (max_drop is None or acc_b.value - acc_a.value <= max_drop)
    return Retention(acc_b, acc_a, lost, gained, p, alpha, max_drop, kept)
