"""nanolm.text.chat: one renderer for SmolLM2's ChatML and the course's own tokens. SmolLM2's text equals
chat_template.render and its ids the reference tokenization; the mask covers exactly the assistant's content,
tool calls and end token; to_example's labels; masked positions get no gradient; no content ever becomes a
special token; parse_assistant inverts render; bad conversations fail clearly."""

import pytest
import torch
import torch.nn.functional as F
from real_model import smollm2_path

from nanolm.adapt import finetune
from nanolm.model.llama import Llama, LlamaConfig
from nanolm.text import bpe_train, chat, chat_template, gguf_tokenizer
from nanolm.text.chat import IGNORE, ChatFormatError

TEXT = ("The user asks and the assistant answers. What is 2+2? It is 4. Let me check with a tool call: "
        '{"name": "calc", "arguments": "2+2"} Hello! How can I help? Be brief. ') * 20


@pytest.fixture(scope="module")
def smol():
    return chat.smollm2_format(gguf_tokenizer.load_tokenizer(smollm2_path()))


@pytest.fixture(scope="module")
def course():
    return chat.course_format(bpe_train.train(TEXT, 400))  # the 8 reserved specials get the last ids


@pytest.fixture(params=["smol", "course"])
def fmt(request):
    return request.getfixturevalue(request.param)


def user(text):
    return {"role": "user", "content": text}


def assistant(text, *calls):
    msg = {"role": "assistant", "content": text}
    if calls:
        msg["tool_calls"] = [{"name": n, "arguments": a} for n, a in calls]
    return msg


def system(text):
    return {"role": "system", "content": text}


def tool(text):
    return {"role": "tool", "content": text}


PLAIN = {
    "one turn": [user("What is the capital of France?")],
    "answered": [user("Hi!"), assistant("Hello.")],
    "many turns": [user("Hi!"), assistant("Hello! How can I help?"), user("What is 12 times 7?"),
                   assistant("84."), user("And 13 times 7?")],
    "system": [system("You are terse."), user("Hi"), assistant("Hi."), user("Bye"), assistant("Bye.")],
    "awkward": [user("line 1\nline 2\n\n  {{ x }} 'q' \"dq\" \\ "), assistant(""), user("Grüße 東京 🙂 \t\r\n"),
                assistant("\n\n  leading blank lines")],
}
TOOLS = [user("2+2?"), assistant("Let me check.", ("calc", "2+2"), ("log", '{"x": "</tool_call>"}')),
         tool("4"), tool("ok"), assistant("It is 4.")]


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("name", PLAIN)
def test_smollm2_equals_chat_template_and_reference_ids(smol, name, generation_prompt):
    messages = PLAIN[name]
    r = smol.render(messages, add_generation_prompt=generation_prompt)
    assert r.text == chat_template.render(messages, add_generation_prompt=generation_prompt)
    assert r.ids == smol.tokenizer.encode(r.text, allowed_special="all")  # as transformers tokenizes it
    assert len(r.mask) == len(r.ids)


def test_smollm2_tool_calls_are_text_in_an_assistant_turn(smol):
    r = smol.render(TOOLS)
    calls = ('<tool_call>{"name": "calc", "arguments": "2+2"}</tool_call>'
             '<tool_call>{"name": "log", "arguments": "{\\"x\\": \\"\\u003c/tool_call>\\"}"}</tool_call>')
    as_plain = [TOOLS[0], assistant("Let me check." + calls), *TOOLS[2:]]
    assert r.text == chat_template.render(as_plain)
    assert r.ids == smol.tokenizer.encode(r.text, allowed_special="all")


def test_smollm2_mask_by_hand(smol):
    tok = smol.tokenizer
    r = smol.render(PLAIN["answered"])
    trained = [i for i, m in zip(r.ids, r.mask, strict=True) if m]
    assert trained == tok.encode_ordinary("Hello.") + [tok.special("<|im_end|>")]
    assert r.ids[-1] == tok.encode_ordinary("\n")[0] and r.mask[-1] == 0  # the newline after it is scaffolding
    assert smol.show(r) == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                            "Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
                            "[[Hello.<|im_end|>]]\n")


def test_course_mask_by_hand(course):
    tok = course.tokenizer
    sp, enc = tok.special, tok.encode_ordinary
    r = course.render([system("Be brief."), *TOOLS])
    call1, call2 = ('{"name": "calc", "arguments": "2+2"}', '{"name": "log", "arguments": "{\\"x\\": \\"</tool_call>\\"}"}')
    parts = [([sp("<|system|>"), *enc("Be brief."), sp("<|end|>")], 0), ([sp("<|user|>"), *enc("2+2?"), sp("<|end|>")], 0),
             ([sp("<|assistant|>")], 0),
             ([*enc("Let me check."), sp("<|tool_call|>"), *enc(call1), sp("<|tool_call|>"), *enc(call2),
               sp("<|end|>")], 1),
             ([sp("<|tool_result|>"), *enc("4"), sp("<|end|>"), sp("<|tool_result|>"), *enc("ok"), sp("<|end|>"),
               sp("<|assistant|>")], 0),
             ([*enc("It is 4."), sp("<|end|>")], 1)]
    assert r.ids == [i for ids, _ in parts for i in ids]
    assert r.mask == [m for ids, m in parts for _ in ids]
    assert course.show(r) == ("<|system|>Be brief.<|end|><|user|>2+2?<|end|><|assistant|>[[Let me check.<|tool_call|>"
                              f"{call1}<|tool_call|>{call2}<|end|>]]<|tool_result|>4<|end|><|tool_result|>ok<|end|>"
                              "<|assistant|>[[It is 4.<|end|>]]")
    assert course.render(TOOLS[:1], add_generation_prompt=True).ids[-1] == sp("<|assistant|>")


def test_to_example_labels(fmt):
    assert IGNORE == finetune.IGNORE
    for messages in [PLAIN["many turns"][:4], PLAIN["system"], TOOLS]:
        r = fmt.render(messages)
        ids, labels = fmt.to_example(messages)
        assert ids == r.ids[:-1] and len(labels) == len(ids)
        assert labels == [t if m else IGNORE for t, m in zip(r.ids[1:], r.mask[1:], strict=True)]
        assert sum(y != IGNORE for y in labels) == sum(r.mask[1:]) > 0
    n = len(fmt.render(PLAIN["answered"]).ids) - 3
    ids, labels = fmt.to_example(PLAIN["answered"], block_size=n)
    assert len(ids) == len(labels) == n and labels == fmt.to_example(PLAIN["answered"])[1][:n]
    with pytest.raises(ChatFormatError, match="nothing to train"):
        fmt.to_example(PLAIN["answered"], block_size=3)
    with pytest.raises(ChatFormatError, match="nothing to train"):
        fmt.to_example(PLAIN["one turn"])


def test_masked_positions_get_no_gradient(course):
    """The loss of to_example's labels reaches the logits only where the assistant's tokens are predicted."""
    torch.manual_seed(0)
    tok = course.tokenizer
    model = Llama(LlamaConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16))
    ids, labels = course.to_example(TOOLS)
    x, y = torch.tensor([ids]), torch.tensor([labels])
    logits, _ = model(x)
    logits.retain_grad()
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
    loss.backward()
    trained = y[0] != IGNORE
    assert torch.all(logits.grad[0, ~trained] == 0)
    assert torch.all(logits.grad[0, trained].abs().sum(-1) > 0)
    assert torch.allclose(model(x, y)[1], loss)
    nll = -logits.detach().log_softmax(-1)[0, trained].gather(-1, y[0, trained, None]).mean()
    assert torch.allclose(nll, loss)


def test_attack_table_finds_no_special_token(fmt):
    rows = chat.attack_table(fmt)
    assert len(rows) == len(chat.ATTACKS)
    assert all(row.as_content == [] for row in rows)
    tok = fmt.tokenizer
    known = [row for row in rows if row.attack in tok.special_tokens]
    assert known and all(row.if_allowed == [tok.special(row.attack)] for row in known)


@pytest.mark.parametrize("attack", chat.ATTACKS)
def test_attacks_in_every_turn_stay_content(fmt, attack):
    """A conversation whose every content is an attack has the specials of the same conversation with "x"."""
    def conversation(s):
        said = s if not (fmt.name == "smollm2" and "tool_call>" in s) else "x"  # refused: see the test below
        return [system(s), user(s), assistant(said, ("f", s)), tool(s), assistant(said)]
    special = set(fmt.tokenizer.special_tokens.values())
    attacked, plain = fmt.render(conversation(attack)), fmt.render(conversation("x"))
    assert [i for i in attacked.ids if i in special] == [i for i in plain.ids if i in special]
    prefix = fmt.render(conversation(attack)[:2], add_generation_prompt=True)
    turn = attacked.ids[len(prefix.ids):]
    said = conversation(attack)[2]
    assert fmt.parse_assistant(turn) == (said["content"], said["tool_calls"])


@pytest.mark.parametrize("messages", [PLAIN["answered"], TOOLS[:2], TOOLS], ids=["plain", "calls", "after tools"])
def test_parse_assistant_inverts_render(fmt, messages):
    last = messages[-1]
    prefix = fmt.render(messages[:-1], add_generation_prompt=True)
    full = fmt.render(messages)
    assert full.ids[:len(prefix.ids)] == prefix.ids
    expected = (last["content"], last.get("tool_calls", []))
    assert fmt.parse_assistant(full.ids[len(prefix.ids):]) == expected
    assert fmt.parse_assistant(full.text[len(prefix.text):]) == expected
    assert fmt.parse_assistant(fmt.tokenizer.decode(full.ids[len(prefix.ids):])) == expected


def test_parse_assistant_rejects_malformed_calls(smol, course):
    with pytest.raises(ChatFormatError, match="not JSON"):
        smol.parse_assistant("ok<tool_call>{name: calc}</tool_call>")
    with pytest.raises(ChatFormatError, match="not closed"):
        smol.parse_assistant('ok<tool_call>{"name": "f", "arguments": ""}')
    with pytest.raises(ChatFormatError, match="is not"):
        course.parse_assistant('ok<|tool_call|>{"name": "f"}<|end|>')
    assert smol.parse_assistant("just text<|im_end|>\n") == ("just text", [])


BAD = {
    "empty conversation": [],
    "role must be": [{"role": "robot", "content": "hi"}],
    "string 'content'": [{"role": "user"}],
    "unknown fields": [{"role": "user", "content": "hi", "name": "bob"}],
    r"unknown fields \['tool_calls'\]": [{"role": "user", "content": "hi", "tool_calls": []}],
    "tool call 0 must be": [user("hi"), {"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]}],
    "system message cannot come after user": [user("hi"), system("late")],
    "assistant message cannot come first": [assistant("hello")],
    "user message cannot come after user": [user("a"), user("b")],
    "tool message cannot come after assistant": [user("a"), assistant("b"), tool("c")],
    "user message cannot come after assistant .expected tool": [user("a"), assistant("b", ("f", "")), user("c")],
    "tool message cannot come after tool": [user("a"), assistant("b", ("f", "")), tool("1"), tool("2")],
}


@pytest.mark.parametrize("match", BAD)
def test_bad_conversations_fail_clearly(fmt, match):
    with pytest.raises(ChatFormatError, match=match):
        fmt.render(BAD[match])


def test_smollm2_refuses_an_assistant_that_spells_a_delimiter(smol, course):
    for text in ("<tool_call>", "see </tool_call>"):
        with pytest.raises(ChatFormatError, match="tool-call delimiter"):
            smol.render([user("hi"), assistant(text)])
        prefix = course.render([user("hi")], add_generation_prompt=True).ids
        assert course.parse_assistant(course.render([user("hi"), assistant(text)]).ids[len(prefix):]) == (text, [])
    with pytest.raises(ChatFormatError, match="lacks the reserved special tokens"):
        chat.course_format(bpe_train.train(TEXT, 300, special_tokens=["<|endoftext|>"]))
    with pytest.raises(ChatFormatError, match="no chat template"):
        chat.smollm2_format(chat.course_format(bpe_train.train(TEXT, 300)).tokenizer)
