"""Greedy completion until a stop string, token or length: cut where a harness cuts."""

import pytest
import torch
from helpers import train_briefly

from nanolm.eval.complete import complete, cut
from nanolm.model.llama import Llama, LlamaConfig

TEXT = "ab. ab. ab. Question: cd. ab. ab."


def test_cut_takes_the_earliest_stop_string():
    assert cut("x = 1\ndef g():\n#", ["\n#", "\ndef"]) == ("x = 1", "\ndef")
    assert cut("no stop here", ["Question:"]) == ("no stop here", None)
    assert cut("abc", ["", "c"]) == ("ab", "c")  # an empty stop string never matches


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Llama(LlamaConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32))
    return train_briefly(m, torch.tensor([list(TEXT.encode())]), steps=80)


def _run(model, **kw):
    return complete(model, lambda s: list(s.encode()), lambda ids: bytes(ids).decode("utf-8", "replace"), "ab.", **kw)


def test_complete_is_the_greedy_continuation_cut_at_the_stop(model):
    free = _run(model, max_new_tokens=20)
    assert free.stopped_by == "length" and free.tokens == 20
    greedy = model.generate(torch.tensor([list(b"ab.")]), 20, temperature=0)[0, 3:].tolist()
    assert free.text == bytes(greedy).decode("utf-8", "replace")
    stop = free.text[4:6]  # a string the model will write
    got = _run(model, max_new_tokens=20, until=[stop])
    assert got.stopped_by == stop and got.text == free.text[:free.text.find(stop)]


def test_a_stop_token_ends_it_and_is_not_part_of_the_text(model):
    free = _run(model, max_new_tokens=20)
    first = free.text[2]
    before = free.text[:free.text.index(first)]  # the text up to the first time the model writes that byte
    got = _run(model, max_new_tokens=20, stop_ids={ord(first)})
    assert got.stopped_by == "stop token" and got.text == before and got.tokens == len(before) + 1
