"""nanolm.use.agent and tools: the tool loop on a scripted model in both chat formats. The stream it builds
equals the chat format's rendering of the conversation it reports (generated ids kept, forced ids exactly the
tool turns and the next opener, all masked); caps, unknown tools, failing tools and unfinished turns."""

import time

import pytest
import torch
from real_model import smollm2_path
from torch import nn

from nanolm.core.process import run_python
from nanolm.text import bpe_train, chat, gguf_tokenizer
from nanolm.use import agent, tool_tasks, tools

TEXT = ("The user asks and the assistant answers. What is 2+2? It is 4. Let me check with a tool call: "
        '{"name": "calculator", "arguments": "2+2"} The answer is 84. Hello! ') * 20


@pytest.fixture(scope="module", params=["smol", "course"])
def fmt(request):
    if request.param == "smol":
        return chat.smollm2_format(gguf_tokenizer.load_tokenizer(smollm2_path()))
    return chat.course_format(bpe_train.train(TEXT, 400))


class Scripted(nn.Module):
    """A 'model' whose turns are written in advance: generate() appends the next script (cut at a stop id)."""

    def __init__(self, turns):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.turns, self.prompts = list(turns), []

    def generate(self, idx, max_new_tokens, *, stop=None, **_):
        self.prompts.append(idx[0].tolist())
        turn = self.turns.pop(0)[:max_new_tokens]
        return torch.cat([idx, torch.tensor([turn])], dim=1)


def turn_ids(fmt, message):
    """The ids a model would generate for an assistant message: its rendering after the opener, to the end token."""
    before = fmt.render([{"role": "user", "content": "x"}], add_generation_prompt=True).ids
    after = fmt.render([{"role": "user", "content": "x"}, message]).ids
    end = fmt.tokenizer.special(fmt.end)
    return after[len(before): len(after) - after[::-1].index(end)]


def call(expr, name="calculator"):
    return {"role": "assistant", "content": "", "tool_calls": [{"name": name, "arguments": expr}]}


def answer(text):
    return {"role": "assistant", "content": text}


BOX = tools.Toolbox([tools.calculator()])
ASK = [{"role": "user", "content": "What is 12 times 7?"}]


def test_the_stream_is_the_rendered_conversation(fmt):
    model = Scripted([turn_ids(fmt, call("12*7")), turn_ids(fmt, answer("The answer is 84."))])
    res = agent.run(model, fmt, ASK, BOX)
    assert res.answer == "The answer is 84." and res.stopped_by == "answer"
    assert [(c.name, c.arguments, c.output, c.ok) for c in res.calls] == [("calculator", "12*7", "84", True)]
    assert [m["role"] for m in res.messages] == ["user", "assistant", "tool", "assistant"]
    rendered = fmt.render(res.messages)
    cut = len(rendered.ids) - rendered.ids[::-1].index(fmt.tokenizer.special(fmt.end))
    assert res.ids == rendered.ids[:cut]  # prompt + generated + forced + generated, token for token
    assert model.prompts[1] == res.ids[: len(model.prompts[1])]  # the second turn continued the same stream
    forced = agent.forced_ids(fmt, res.messages[:2], res.messages[2:3])
    start = len(model.prompts[0]) + len(turn_ids(fmt, call("12*7")))
    assert res.ids[start: start + len(forced)] == forced
    assert not any(rendered.mask[start: start + len(forced)])  # what the loop forces is never trained
    assert res.generated == len(res.ids) - len(model.prompts[0]) - len(forced)


def test_step_cap_time_cap_and_length(fmt):
    always = [turn_ids(fmt, call(f"{k}+1")) for k in range(5)]
    res = agent.run(Scripted(always), fmt, ASK, BOX, max_steps=2)
    assert res.stopped_by == "step cap" and len(res.calls) == 2
    res = agent.run(Scripted(always), fmt, ASK, BOX, max_steps=0)
    assert res.stopped_by == "step cap" and res.calls == []
    loop = agent.Loop(fmt, BOX, ASK, max_steps=3, time_limit_s=0.01)
    time.sleep(0.02)
    assert loop.after_turn(always[0]) == [] and loop.result.stopped_by == "time cap" and loop.result.calls == []
    unfinished = turn_ids(fmt, answer("The answer is"))[:-1]  # no end token: max_new_tokens ran out
    res = agent.run(Scripted([unfinished]), fmt, ASK, BOX)
    assert res.stopped_by == "length" and res.answer.startswith("The answer")
    with pytest.raises(ValueError, match="max_steps"):
        agent.Loop(fmt, BOX, ASK, max_steps=-1)


def test_unknown_and_failing_tools_answer_with_an_error(fmt):
    model = Scripted([turn_ids(fmt, call("2+2", name="weather")), turn_ids(fmt, call("__import__('os')")),
                      turn_ids(fmt, answer("Sorry."))])
    res = agent.run(model, fmt, ASK, BOX)
    first, second = res.calls
    assert not first.ok and "no tool named 'weather'" in first.output and "calculator" in first.output
    assert not second.ok and second.output.startswith("error: the calculator allows only")
    assert res.messages[2]["content"] == first.output and res.answer == "Sorry."


def test_toolbox_cuts_output_and_refuses_duplicate_names():
    box = tools.Toolbox([tools.Tool("echo", "repeats", lambda s: s * 1000)])
    out = box.call("echo", "ab")
    assert len(out.output) == tools.MAX_OUTPUT and out.output.endswith("...") and out.ok
    with pytest.raises(ValueError, match="share a name"):
        tools.Toolbox([tools.calculator(), tools.calculator()])
    assert "- calculator: evaluates" in tools.Toolbox([tools.calculator()]).describe()


def test_tool_tasks_are_right_by_construction():
    """Every reference call gives the expected answer (calculator here; python against our own computation)."""
    train, test = tool_tasks.calculator_tasks(40, 0, "train"), tool_tasks.calculator_tasks(40, 0, "test")
    assert not {t.question for t in train} & {t.question for t in test}
    for t in train + test:
        assert tool_tasks.check_call(t, "calculator", t.arguments, "") and tool_tasks.check_answer(t, t.reply)
    assert all(max(abs(int(x)) for x in t.arguments.replace("*", "+").replace("/", "+").replace("-", "+")
                   .split("+") if x) >= 100 for t in test)  # the held-out numbers are larger
    py = tool_tasks.python_tasks(20, 0, "test")
    assert {t.kind for t in py} == {f"python {k}" for k in tool_tasks.PY_CODE}
    for t in py[:5] + tool_tasks.python_tasks(5, 0, "train"):  # the program prints what our own code computed
        assert run_python(t.arguments).stdout.strip() == t.answer, t.question
    facts = tool_tasks.made_up_facts(4)
    s_train, s_test = tool_tasks.search_tasks(facts, "train"), tool_tasks.search_tasks(facts, "test")
    assert len(s_train) == len(s_test) == 6 and not {t.answer for t in s_train} & {t.answer for t in s_test}
    t = s_test[0]
    assert tool_tasks.check_answer(t, f"It is {t.answer.upper()}.") and not tool_tasks.check_answer(t, "No idea.")
    assert tool_tasks.check_answer(tool_tasks.Task("q", "calculator", "", "1134", "", ""), "It is 1,134.")
    assert not tool_tasks.check_answer(tool_tasks.Task("q", "calculator", "", "113", "", ""), "It is 1134.")


def test_search_tasks_point_at_the_passage_that_answers():
    facts = tool_tasks.made_up_facts(6)
    passages = {p.id: p for p in tool_tasks.fact_passages(facts)}
    for t in tool_tasks.search_tasks(facts, "train") + tool_tasks.search_tasks(facts, "test"):
        assert t.answer in passages[t.passage].text and t.answer in t.reply and t.answer not in t.question


def test_evaluate_and_breakdown_score_calls_and_answers(fmt):
    right, wrong = tool_tasks.calculator_tasks(2, 0, "test")
    none = tool_tasks.no_tool_tasks()[0]
    model = Scripted([turn_ids(fmt, call(right.arguments)), turn_ids(fmt, answer(f"It is {right.answer}.")),
                      turn_ids(fmt, call("1+1")), turn_ids(fmt, answer(f"It is {wrong.answer}.")),
                      turn_ids(fmt, call("2+2")), turn_ids(fmt, answer("Hello."))])
    out = tool_tasks.evaluate(model, fmt, [right, wrong, none], BOX)
    assert [(o.answer_ok, o.call_ok, o.called) for o in out] == [(True, True, True), (True, False, True),
                                                                  (False, False, True)]
    table = tool_tasks.breakdown(out)
    assert table["calculator"]["answer"].value == 1.0 and table["calculator"]["call"].value == 0.5
    assert table["none"]["called"].value == 1.0  # a call on a no-tool question: a false call


def test_call_preferences_prefer_a_call_only_where_one_helps(fmt):
    facts = tool_tasks.made_up_facts(4)
    train = tool_tasks.calculator_tasks(4, 0, "train") + tool_tasks.search_tasks(facts, "train")
    prefs = tool_tasks.call_preferences(train)
    known = {q for q, _ in tool_tasks.NO_TOOL_TRAIN} | {q for q, _, _ in tool_tasks.real_fact_questions()}
    assert len(prefs) == len(train) + len(known)  # a question in both lists makes one pair
    assert {m[0]["content"] for m, _, _ in prefs[len(train):]} == known
    for (_, chosen, rejected), t in zip(prefs, train, strict=False):
        assert chosen["tool_calls"] == [{"name": t.tool, "arguments": t.arguments}] and "tool_calls" not in rejected
        assert not tool_tasks.check_answer(t, rejected["content"])  # the direct answer it must not prefer is wrong
    for msgs, chosen, rejected in prefs[len(train):]:
        assert "tool_calls" not in chosen and rejected["tool_calls"][0]["name"] == "search"
        assert msgs[0]["content"] not in tool_tasks.NO_TOOL  # held-out questions are never trained on
    from nanolm.adapt import dpo
    ids, labels = dpo.chat_example(fmt, prefs[0][0], prefs[0][1])  # a whole message with a call as the reply
    scored = fmt.tokenizer.decode([y for y in labels if y != -100 and y != fmt.tokenizer.special(fmt.end)])
    assert '"calculator"' in scored and prefs[0][0][0]["content"] not in scored  # the call scored, the question not
