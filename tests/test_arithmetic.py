"""The verifiable arithmetic task: problems, conversations, the checker."""

import pytest

from nanolm.adapt import arithmetic as ar
from nanolm.adapt import sft_data


def test_problems_are_distinct_deterministic_and_respect_digits_and_exclude():
    a = ar.problems(50, seed=3, digits=(2, 1), ops="+-")
    assert a == ar.problems(50, seed=3, digits=(2, 1), ops="+-") and len(set(a)) == 50
    assert all(10 <= p.a <= 99 and 0 <= p.b <= 9 and p.op in "+-" for p in a)
    b = ar.problems(40, seed=3, digits=(2, 1), ops="+-", exclude=a)
    assert not set(a) & set(b)
    assert ar.problems(50, seed=4, digits=(2, 1), ops="+-") != a


def test_answers_by_hand():
    assert ar.Problem(48, "*", 7).answer == 336 and ar.Problem(3, "-", 9).answer == -6
    assert ar.Problem(12, "+", 30).expression == "12 + 30"


def test_a_space_too_small_is_refused():
    assert len(ar.problems(100, seed=0, digits=(1, 1))) == 100  # every one of 0..9 + 0..9
    with pytest.raises(ValueError, match="only 100 exist"):
        ar.problems(101, seed=0, digits=(1, 1), ops="+", exclude=[])
    with pytest.raises(ValueError, match="only 100 exist"):
        ar.problems(60, seed=0, digits=(1, 1), exclude=ar.problems(50, seed=1, digits=(1, 1)))
    with pytest.raises(ValueError, match="ops"):
        ar.problems(1, seed=0, ops="/")


def test_conversations_are_well_formed_and_the_call_computes_the_answer():
    p = ar.Problem(59, "*", 15)
    conv = ar.tool_conversation(p)
    sft_data.check_conversation(conv)
    assert conv[0]["content"] == "What is 59 * 15?"
    assert sft_data.calculate(conv[1]["tool_calls"][0]["arguments"]) == 885 == int(conv[2]["content"])
    assert conv[3]["content"] == "The answer is 885."
    direct = ar.direct_conversation(p)
    sft_data.check_conversation(direct)
    assert direct[0]["content"].startswith("Without a calculator") and direct[1]["content"] == "59 * 15 = 885."
    assert ar.direct_answer(p, 7) == "59 * 15 = 7."


def test_the_checker_reads_the_last_number():
    p = ar.Problem(43, "+", 61)
    assert ar.reward("43 + 61 = 104.", p) == 1.0
    assert ar.reward("104, or is it 105", p) == 0.0  # the last number counts
    assert ar.reward("I think 1040", p) == 0.0 and ar.reward("no idea", p) == 0.0
    assert ar.final_number("it is -6.") == -6 and ar.final_number("none") is None
    assert ar.accuracy(["104", "x"], [p, p]) == 0.5
    with pytest.raises(ValueError):
        ar.accuracy(["104"], [p, p])
