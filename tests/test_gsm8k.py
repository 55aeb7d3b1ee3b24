"""GSM8K scored as lm-evaluation-harness does: extraction on every gold answer, normalization, prompt, shots."""

import random

import pytest

from nanolm.eval import gsm8k

COMMA_GOLDS = 14  # test answers whose "#### " line has a thousands comma ("#### 2,125"); gold() drops it


@pytest.fixture(scope="module")
def test_split():
    return gsm8k.problems("test")


def test_splits():
    assert len(gsm8k.problems("test")) == 1319 and len(gsm8k.problems("train")) == 7473
    with pytest.raises(ValueError):
        gsm8k.problems("validation")


def test_gold():
    assert gsm8k.gold("She pays 2*3=<<2*3=6>>6 dollars.\n#### 6") == "6"
    assert gsm8k.gold("so 1,000 + 125 = 1,125\n#### 1,125") == "1125"
    assert gsm8k.gold("#### -3") == "-3"
    with pytest.raises(ValueError):
        gsm8k.gold("no marker here")


def test_strict_extracts_every_gold_answer(test_split):
    answers = [p["answer"] for p in test_split]
    assert all(gsm8k.gold(a).lstrip("-").isdigit() for a in answers)  # every reference is an integer
    raw = [a for a in answers if gsm8k.strict(a) != gsm8k.gold(a)]
    assert len(raw) == COMMA_GOLDS and all("," in gsm8k.strict(a) for a in raw)  # "2,125" vs "2125"
    assert all(gsm8k.correct(gsm8k.strict(a), a) for a in answers)  # after normalization: all 1319


def test_flexible_extracts_every_gold_answer(test_split):
    answers = [p["answer"] for p in test_split]
    raw = [a for a in answers if gsm8k.flexible(a) != gsm8k.gold(a)]
    assert len(raw) == COMMA_GOLDS and all("," in gsm8k.flexible(a) for a in raw)
    assert all(gsm8k.correct(gsm8k.flexible(a), gsm8k.gold(a)) for a in answers)


def test_flexible_on_the_worked_solution_alone(test_split):
    """Without its "#### " line, the last number of a worked solution is the answer 1248 times in 1319.

    The misses are solutions that end on another number ("15 liters ... out of the 24 liters") or write
    the answer as "16.00", which exact match does not equate with "16".
    """
    bodies = [(p["answer"].split("####")[0], p["answer"]) for p in test_split]
    assert sum(not gsm8k.correct(gsm8k.flexible(b), a) for b, a in bodies) == 71


def test_no_number_gives_none():
    for text in ["", "I do not know.", "The answer is forty-two.", "#### ", "Answer: - . ,"]:
        assert gsm8k.strict(text) is None
    for text in ["", "I do not know.", "The answer is forty-two."]:
        assert gsm8k.flexible(text) is None


@pytest.mark.parametrize("output, strict, flexible, normalized", [
    ("The answer is 42.", None, "42.", "42"),
    ("3 + 4 = 7 apples, so 7 * 6 = 42\n#### 42", "42", "42", "42"),
    ("She has $1,000. She spends $250, so $750 is left.\n#### $750", None, "$750", "750"),
    ("#### 18\n#### 20", "18", "20", "20"),  # strict takes the first match, flexible the last
    ("It drops 5 degrees: -5", None, "-5", "-5"),
    ("The total is 1,234,567 dollars.", None, "1,234,567", "1234567"),
    ("Only 7", None, "7", "7"),  # a single digit is caught by the second group
    ("#### 12.50", "12.50", "12.50", "12.50"),
])
def test_hand_made_model_outputs(output, strict, flexible, normalized):
    assert gsm8k.strict(output) == strict
    assert gsm8k.flexible(output) == flexible
    assert gsm8k.normalize(gsm8k.flexible(output)) == normalized


@pytest.mark.parametrize("a, b, same", [
    ("$1,000.", "1000", True),
    ("1,000", "1000", True),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72", True),  # the reference: everything to "#### " goes
    ("72.", "72", True),
    ("16.00", "16", False),  # exact match, not numeric equality: the harness marks this wrong
    ("72..", "72", False),  # only one trailing "." is removed
    ("-5", "5", False),
])
def test_normalize_and_correct(a, b, same):
    assert (gsm8k.normalize(a) == gsm8k.normalize(b)) is same
    assert gsm8k.correct(a, b) is same


def test_normalize_exact_strings():
    assert gsm8k.normalize("$1,000.") == "1000"
    assert gsm8k.normalize("ABC") == "abc"  # ignore_case
    assert not gsm8k.correct(None, "5")


def test_prompt_with_two_shots():
    shots = [{"question": "What is 1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"},
             {"question": "Tom has 3 pens and buys 2. How many?", "answer": "3+2=<<3+2=5>>5\n#### 5"}]
    assert gsm8k.prompt("What is 2*3?", shots) == (
        "Question: What is 1+1?\nAnswer: 1+1=<<1+1=2>>2\n#### 2\n\n"
        "Question: Tom has 3 pens and buys 2. How many?\nAnswer: 3+2=<<3+2=5>>5\n#### 5\n\n"
        "Question: What is 2*3?\nAnswer:")
    assert gsm8k.prompt("Q?", []) == "Question: Q?\nAnswer:"


def test_fewshot_is_the_harness_draw_for_the_first_question():
    train = gsm8k.problems("train")
    shots = gsm8k.fewshot()
    assert len(shots) == 5 and all(s in train for s in shots)
    assert shots == random.Random(1234).sample(train, 5) == gsm8k.fewshot(5, seed=1234)
    assert gsm8k.fewshot(5, seed=1) != shots and gsm8k.fewshot(0) == []
    with pytest.raises(ValueError):
        gsm8k.fewshot(-1)


def test_stop_sequences():
    assert gsm8k.STOP == ("Question:", "</s>", "<|im_end|>")


def test_agrees_with_the_harness_itself(test_split):
    """The harness's own filters and metric (imported here only; the library never imports lm_eval)."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    texts = [p["answer"] for p in test_split] + [p["answer"].split("####")[0] for p in test_split]
    texts += ["The answer is 42.", "#### 18\n#### 20", "I do not know.", "#### $750", "Only 7", "16.00"]
    harness = {"strict": RegexFilter(r"#### (\-?[0-9\.\,]+)"),
               "flexible": RegexFilter(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)}
    for name, ours in (("strict", gsm8k.strict), ("flexible", gsm8k.flexible)):
        theirs = [r[0] for r in harness[name].apply([[t] for t in texts], [{}] * len(texts))]
        assert [ours(t) or "[invalid]" for t in texts] == theirs, name
        refs = [p["answer"] for p in test_split] * 2 + ["42"] * 6
        for pred, ref in zip(theirs, refs, strict=True):
            em = exact_match_hf_evaluate([pred], [ref], regexes_to_ignore=list(gsm8k.IGNORE), ignore_case=True)
            assert gsm8k.correct(None if pred == "[invalid]" else pred, ref) == bool(em["exact_match"]), (pred, ref)


def test_prompt_matches_the_harness_context_for_the_first_question(test_split):
    """The harness's own ConfigurableTask, built from its gsm8k.yaml on our local data."""
    from pathlib import Path

    import datasets
    import lm_eval
    import yaml
    from lm_eval.api.task import ConfigurableTask

    config = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    config.pop("tag", None)
    splits = {"test": datasets.Dataset.from_list(test_split[:2]), "train": datasets.Dataset.from_list(gsm8k.problems("train"))}
    config.update(custom_dataset=lambda **_: datasets.DatasetDict(splits), metadata={})
    task = ConfigurableTask(config=config)
    task.set_fewshot_seed(gsm8k.SEED)
    first = task.fewshot_context(test_split[0], num_fewshot=5)
    assert first == gsm8k.prompt(test_split[0]["question"], gsm8k.fewshot())
    second = task.fewshot_context(test_split[1], num_fewshot=5)  # the harness draws again for each question
    assert second != gsm8k.prompt(test_split[1]["question"], gsm8k.fewshot())
