"""nanolm.adapt.sft_data: the calculator, GSM8K solutions as tool calls, the sources, mixing and checking."""

import re

import pytest

from nanolm.adapt import sft_data as sd

SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


def test_calculate_allows_arithmetic_only():
    assert sd.calculate("48/2") == 24
    assert sd.calculate("(3 + 4) * -2 ** 3") == -56
    assert sd.calculate("+5 - 1.5") == 3.5
    for bad in ("__import__('os')", "2 // 3", "abs(-1)", "x + 1", "1/0", "2 ** 1000", "3 % 2", "", "1 if 1 else 2"):
        with pytest.raises(ValueError):
            sd.calculate(bad)
    assert [sd.format_number(x) for x in (24.0, 7, 2.5, 1 / 3, -0.125)] == ["24", "7", "2.5", "0.333333", "-0.125"]


def test_solution_becomes_tool_calls_exactly():
    assert sd.solution_messages(SOLUTION) == [
        {"role": "assistant", "content": "Natalia sold 48/2 = ", "tool_calls": [{"name": "calculator",
                                                                               "arguments": "48/2"}]},
        {"role": "tool", "content": "24"},
        {"role": "assistant", "content": "24 clips in May.\nNatalia sold 48+24 = ",
         "tool_calls": [{"name": "calculator", "arguments": "48+24"}]},
        {"role": "tool", "content": "72"},
        {"role": "assistant", "content": "72 clips altogether in April and May.\nThe answer is 72."},
    ]
    # the assistant's words, joined, are the solution without its notes (and "#### 72" -> "The answer is 72.")
    said = "".join(m["content"] for m in sd.solution_messages(SOLUTION) if m["role"] == "assistant")
    assert said == re.sub(r"<<[^>]*>>", "", SOLUTION).replace("#### 72", "The answer is 72.")


def test_solution_notes_are_checked():
    rounded = sd.solution_messages("It is <<10/3=3.33>>3.33 each.\n#### 1,000")  # a rounded note agrees
    assert rounded[1] == {"role": "tool", "content": "3.333333"}  # the tool says what it computed
    assert rounded[2]["content"] == "3.33 each.\nThe answer is 1000."  # commas leave the answer
    with pytest.raises(ValueError, match="calculator gives 25"):
        sd.solution_messages("So 5*5 = <<5*5=24>>24.\n#### 24")
    with pytest.raises(ValueError, match="####"):
        sd.solution_messages("No final line <<1+1=2>>2")


def test_gsm8k_tool_conversations_real():
    skipped = []
    convs = sd.gsm8k_tool_conversations("test", skipped=skipped)
    assert len(convs) + len(skipped) == 1319 and len(skipped) < 20
    for c in convs:
        sd.check_conversation(c)
    assert sum(1 for m in convs[0] if m.get("tool_calls")) == 2
    assert convs[0][-1]["content"].endswith("The answer is 18.")
    assert len(sd.gsm8k_tool_conversations("train", n=5)) == 5


def test_facts_and_identity():
    facts = sd.fact_conversations()
    assert len(facts) >= 24 and facts[0][0]["role"] == "user"
    for c in facts:
        sd.check_conversation(c)
    with pytest.raises(ValueError):
        sd.fact_conversations([("a question", "")])
    a = sd.identity_conversations("nanochat", n=50, seed=3)
    assert a == sd.identity_conversations("nanochat", n=50, seed=3) != sd.identity_conversations(n=50, seed=4)
    assert len({c[0]["content"] for c in a}) >= 8  # several wordings
    assert any("nanochat" in m["content"] for c in a for m in c)
    for c in a:
        sd.check_conversation(c)


def test_shipped_sources():
    si = sd.selfinstruct_conversations()
    assert len(si) == 427
    assert si[1][0]["content"] == "What is the relation between the given pairs?\n\nNight : Day :: Right : Left"
    tc = sd.topical_chat_conversations(max_turns=6)
    assert len(tc) == 2156 and all(2 <= len(c) <= 6 for c in tc)
    assert tc[0][1] == {"role": "assistant", "content": "yes, I'm. a football fan."}
    assert len(sd.topical_chat_conversations(n=3, max_turns=None)[0]) > 6
    for c in si + tc:
        sd.check_conversation(c)


def test_mixture_counts_weights_and_determinism():
    parts = {"a": [[{"role": "user", "content": f"a{i}"}] for i in range(10)],
             "b": [[{"role": "user", "content": f"b{i}"}] for i in range(3)]}
    mix, counts = sd.mixture(parts, counts={"a": 4, "b": 7}, seed=1)
    assert counts == {"a": 4, "b": 7} and len(mix) == 11
    assert len({m[0]["content"] for m in mix if m[0]["content"][0] == "a"}) == 4  # without replacement
    assert {m[0]["content"] for m in mix if m[0]["content"][0] == "b"} == {"b0", "b1", "b2"}  # upsampled
    assert mix == sd.mixture(parts, counts={"b": 7, "a": 4}, seed=1)[0]
    assert mix != sd.mixture(parts, counts={"a": 4, "b": 7}, seed=2)[0]
    assert sd.mixture(parts, weights={"a": 2, "b": 1}, total=10)[1] == {"a": 7, "b": 3}
    with pytest.raises(ValueError):
        sd.mixture(parts, counts={"c": 1})
    with pytest.raises(ValueError):
        sd.mixture(parts, weights={"a": 1, "b": 1})


U, A = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
CALL = {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": "1+1"}]}
TOOL = {"role": "tool", "content": "2"}


@pytest.mark.parametrize("conv, ok", [
    ([U, A], True),
    ([{"role": "system", "content": "be brief"}, U, A, U, A], True),
    ([U, CALL, TOOL, A], True),
    ([U, CALL, TOOL, CALL, TOOL, A], True),
    ([U], False),                      # must end on the assistant
    ([A, U, A], False),                # the user starts
    ([U, U, A], False),                # no alternation
    ([U, TOOL, A], False),             # a tool message without a call
    ([U, A, TOOL, A], False),          # the assistant before called no tool
    ([U, CALL, A], False),             # the call is never answered
    ([U, CALL, TOOL], False),          # ends on the tool
    ([U, A, {"role": "system", "content": "x"}, U, A], False),
    ([U, {"role": "assistant", "content": ""}], False),
    ([{"role": "user", "content": "x", "tool_calls": [{"name": "c", "arguments": ""}]}, A], False),
    ([U, {"role": "bot", "content": "x"}], False),
])
def test_check_conversation(conv, ok):
    if ok:
        sd.check_conversation(conv)
    else:
        with pytest.raises(ValueError):
            sd.check_conversation(conv)
