"""nanolm.text.chat_template: ChatML rendered in plain Python equals transformers' apply_chat_template with the
SmolLM2 GGUF file's template (default system prompt included), and its tokens equal the reference's."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from real_model import smollm2_path

from nanolm.core import gguf
from nanolm.text import chat_template, gguf_tokenizer
from nanolm.text.chat_template import ChatML, ChatTemplateError

DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def template():
    return gguf.read(smollm2_path()).metadata["tokenizer.chat_template"]


@pytest.fixture(scope="module")
def ref():
    """transformers' tokenizer built from the same GGUF file (offline: the file is local)."""
    import transformers
    path = smollm2_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


def expected(ref, messages, add_generation_prompt):
    return ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


CONVERSATIONS = {
    "one turn": [user("What is the capital of France?")],
    "one turn, system": [system("Answer in one word."), user("What is the capital of France?")],
    "many turns": [user("Hi!"), assistant("Hello! How can I help?"), user("What is 12 times 7?"),
                   assistant("84."), user("And 13 times 7?")],
    "many turns, system": [system("You are terse."), user("Hi"), assistant("Hi."), user("Bye"), assistant("Bye.")],
    "system only": [system("Nothing else.")],
    "system later": [user("first"), system("a late system message"), assistant("ok")],
    "tool role": [user("2+2?"), {"role": "tool", "content": "4"}, assistant("It is 4.")],
    "awkward content": [user("line 1\nline 2\n\n  {{ not jinja }} {% if %} <|im_end|> 'quotes' \"dq\" \\ "),
                        assistant(""), user("Grüße 東京 🙂 \t tabs\r\n")],
}


def test_default_system_prompt_is_read_from_the_file(template):
    chat = ChatML.from_template(template)
    assert chat.default_system == DEFAULT and DEFAULT in template
    assert chat_template.smollm2() == chat


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("name", CONVERSATIONS)
def test_render_equals_apply_chat_template(ref, name, generation_prompt):
    messages = CONVERSATIONS[name]
    text = chat_template.render(messages, add_generation_prompt=generation_prompt)
    assert text == expected(ref, messages, generation_prompt)
    assert text.endswith("<|im_start|>assistant\n") == generation_prompt
    assert text.startswith("<|im_start|>system\n" + ("" if messages[0]["role"] == "system" else DEFAULT))


@pytest.mark.parametrize("generation_prompt", [False, True])
def test_system_argument_replaces_the_default(ref, generation_prompt):
    messages = CONVERSATIONS["many turns"]
    text = chat_template.render(messages, add_generation_prompt=generation_prompt, system="Be brief.")
    assert text == expected(ref, [system("Be brief."), *messages], generation_prompt)
    assert DEFAULT not in text


def test_rendered_text_tokenizes_as_the_reference(ref):
    """The text, encoded with special tokens allowed, gives the ids of apply_chat_template(tokenize=True)."""
    tok = gguf_tokenizer.load_tokenizer(smollm2_path())
    for messages in CONVERSATIONS.values():
        text = chat_template.render(messages, add_generation_prompt=True)
        ids = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert tok.encode(text, allowed_special="all") == ids


ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
MESSAGES = st.lists(st.fixed_dictionaries({"role": ROLES, "content": st.text(max_size=30)}), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES, st.booleans())
def test_any_conversation_equals_apply_chat_template(ref, messages, generation_prompt):
    assert chat_template.render(messages, generation_prompt) == expected(ref, messages, generation_prompt)


def test_other_templates_and_bad_conversations_fail_clearly(template):
    with pytest.raises(ChatTemplateError, match="not the ChatML template"):
        ChatML.from_template(template.replace("add_generation_prompt", "add_gen"))
    with pytest.raises(ChatTemplateError, match="not the ChatML template"):
        ChatML.from_template("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ChatTemplateError, match="empty conversation"):
        chat_template.render([])
    with pytest.raises(ChatTemplateError, match="string 'content'"):
        chat_template.render([{"role": "user"}])
    with pytest.raises(ChatTemplateError, match="opens with a system message"):
        chat_template.render([system("a"), user("b")], system="c")
    assert ChatML.from_template(template.replace(DEFAULT, "Be kind.")).default_system == "Be kind."
