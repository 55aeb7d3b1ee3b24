"""Notebook 13's glue: preference examples from a chat format, the DPO loop, chat replies, HH transcripts, the strip."""

import matplotlib
import pytest
import torch
from real_model import smollm2_path

from nanolm.adapt import dpo, finetune, reward
from nanolm.core import plotting
from nanolm.eval import complete
from nanolm.model.llama import Llama, LlamaConfig
from nanolm.text import bpe_train, chat, gguf_tokenizer

matplotlib.use("Agg")
TEXT = "The user asks and the assistant answers. What is 2+2? It is 4. Hello! How can I help? " * 20
ASK = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def course():
    return chat.course_format(bpe_train.train(TEXT, 300))


@pytest.fixture(scope="module")
def smol():
    return chat.smollm2_format(gguf_tokenizer.load_tokenizer(smollm2_path()))


@pytest.mark.parametrize("name", ["course", "smol"])
def test_chat_example_scores_only_the_last_reply_and_its_end(name, request):
    fmt = request.getfixturevalue(name)
    history = [*ASK, {"role": "assistant", "content": "It is 4."}, {"role": "user", "content": "And 3+3?"}]
    ids, labels = dpo.chat_example(fmt, history, "It is 6.")
    full = fmt.render([*history, {"role": "assistant", "content": "It is 6."}])
    assert ids == full.ids[:-1] and len(labels) == len(ids)
    scored = [t for t in labels if t != finetune.IGNORE]
    assert fmt.tokenizer.decode(scored) == "It is 6." + fmt.end  # not the earlier "It is 4."
    n_prompt = len(fmt.render(history, add_generation_prompt=True).ids)
    assert all(t == finetune.IGNORE for t in labels[: n_prompt - 1])


def test_pair_logprobs_and_a_dpo_loop_that_learns_the_preference(course):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=course.tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32))
    pairs = [(dpo.chat_example(course, ASK, "It is 4."), dpo.chat_example(course, ASK, "Hello!"))] * 3
    ref_c, ref_r = dpo.pair_logprobs(model, pairs)
    x, y = finetune.collate([pairs[0][0]])
    assert torch.allclose(ref_c[0], dpo.sequence_logprobs(model(x)[0], y)[0], atol=1e-5)
    hist = dpo.train(model, pairs, ref_c, ref_r, steps=15, batch_size=2, lr=1e-2, beta=0.5)
    assert hist["loss"][0] == pytest.approx(0.6931, abs=1e-3)  # at the reference: log 2
    assert hist["loss"][-1] < 0.3 and hist["margins"][-1] > 0 and hist["accuracy"][-1] == 1.0
    pol_c, pol_r = dpo.pair_logprobs(model, pairs)
    assert (pol_c - ref_c).min() > (pol_r - ref_r).max()
    with pytest.raises(ValueError, match="one reference log-prob per pair"):
        dpo.train(model, pairs, ref_c[:1], ref_r, steps=1, batch_size=2, lr=1e-2)


def test_chat_reply_is_the_greedy_turn_up_to_the_end_token(course):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=course.tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32))
    ex = [course.to_example([*ASK, {"role": "assistant", "content": "It is 4."}])]
    finetune.train(model, ex * 4, steps=60, batch_size=4, lr=1e-2, log_every=60, seed=0, print_fn=None)
    content, calls, ids = complete.chat_reply(model, course, ASK, 20)
    assert (content, calls) == ("It is 4.", []) and ids[-1] == course.tokenizer.special(course.end)
    content, calls, ids = complete.chat_reply(model, course, ASK, 2)  # cut short: no end token, the text so far
    assert len(ids) == 2 and course.end not in content


def test_transcript_messages_alternate_and_refuse_other_text():
    prompt = "Human: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant:"
    assert reward.transcript_messages(prompt) == [{"role": "user", "content": "Hi there"},
                                                  {"role": "assistant", "content": "Hello!"},
                                                  {"role": "user", "content": "How are you?"}]
    with pytest.raises(ValueError, match="ends with 'Assistant:'"):
        reward.transcript_messages("Human: Hi\n\nAssistant: Hello")


def test_token_strip_draws_one_box_per_token_coloured_by_mask():
    fig, ax = plotting.subplots()
    plotting.token_strip(ax, ["a", "b\n", "a very long token"], [0, 1, 1], per_row=2)
    boxes = ax.patches
    assert len(boxes) == 3 and [b.get_facecolor() != boxes[0].get_facecolor() for b in boxes] == [False, True, True]
    assert [t.get_text() for t in ax.texts] == ["a", "b\\n", "a very lo…"]
    with pytest.raises(ValueError, match="3 pieces but 2"):
        plotting.token_strip(ax, ["a", "b", "c"], [0, 1])
