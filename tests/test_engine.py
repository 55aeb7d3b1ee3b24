"""The engine: greedy output equal to model.generate for every request of a batch, continuous vs static
batching, stop conditions, cancel, per-request adapters, and tool calls run mid-generation (scripted sampler)."""

import threading

import pytest
import torch
from helpers import tiny_chat

from nanolm.adapt import library, lora
from nanolm.model.llama import Llama
from nanolm.use import engine as engine_mod
from nanolm.use import tools
from nanolm.use.engine import Engine, Request
from nanolm.use.runner import SlotCache, forward_rows


@pytest.fixture(scope="module")
def fmt():
    return tiny_chat()[0]


@pytest.fixture(scope="module")
def model():
    return tiny_chat()[1]


def prompts(fmt, n):
    return [fmt.render([{"role": "user", "content": q}], add_generation_prompt=True).ids
            for q in ["What is 2+2?", "Hello!", "The answer is", "Ünïcödé 🙂", "It is 4.", "assistant"][:n]]


def end_id(fmt):
    return fmt.tokenizer.special(fmt.end)


def reference(model, prompt, n, end):
    out = model.generate(torch.tensor([prompt]), n, temperature=0.0, stop={end})[0, len(prompt):].tolist()
    return out[:out.index(end)] if end in out else out


def test_rows_at_their_own_positions_equal_the_model(model):
    cache = SlotCache(model, slots=3, max_len=64)
    a, b = torch.randint(300, (1, 9)), torch.randint(300, (1, 4))
    torch.testing.assert_close(forward_rows(model, a, cache, [2]), model(a)[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(forward_rows(model, b, cache, [0]), model(b)[0], rtol=0, atol=1e-12)
    nxt = torch.tensor([[5], [7]])
    both = forward_rows(model, nxt, cache, [2, 0])[:, -1]  # two rows, positions 9 and 4, one batch
    torch.testing.assert_close(both[0], model(torch.cat([a, nxt[:1]], 1))[0][0, -1], rtol=0, atol=1e-12)
    torch.testing.assert_close(both[1], model(torch.cat([b, nxt[1:]], 1))[0][0, -1], rtol=0, atol=1e-12)
    assert cache.lengths.tolist() == [5, 0, 10]


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_every_request_of_a_batch_equals_generate(model, fmt, batching):
    eng = Engine(model, fmt.tokenizer, end_id(fmt), slots=3, max_len=128, batching=batching)
    lengths = [12, 5, 20, 8, 15]
    handles = [eng.submit(Request(p, max_tokens=n)) for p, n in zip(prompts(fmt, 5), lengths, strict=True)]
    eng.run_until_idle()
    for h, p, n in zip(handles, prompts(fmt, 5), lengths, strict=True):
        events = list(h)
        done = events[-1]
        want = reference(model, p, n, end_id(fmt))
        assert done.data["usage"]["completion_tokens"] == len(want) + (done.data["finish_reason"] == "stop")
        assert "".join(e.text for e in events if e.kind == "text") == done.data["text"]
        assert done.data["text"] == fmt.tokenizer.decode(want)
    assert eng.busy_slots() == 0 and eng.stats["finished"] == 5


def test_continuous_batching_needs_fewer_steps_than_static(model, fmt):
    steps = {}
    for batching in ("continuous", "static"):
        eng = Engine(model, fmt.tokenizer, -1, slots=2, max_len=128, batching=batching)  # -1: no end token
        for n in (30, 2, 2, 2):
            eng.submit(Request(prompts(fmt, 1)[0], max_tokens=n))
        eng.run_until_idle()
        steps[batching] = eng.stats["steps"]
    assert steps["continuous"] < steps["static"]  # the short ones refill the freed slot at once


def test_seeded_sampling_does_not_depend_on_the_batch(model, fmt):
    p = prompts(fmt, 1)[0]
    alone = Engine(model, fmt.tokenizer, -1, slots=1).generate(Request(p, max_tokens=10, temperature=1.0, seed=3))
    eng = Engine(model, fmt.tokenizer, -1, slots=3)
    h = eng.submit(Request(p, max_tokens=10, temperature=1.0, seed=3))
    eng.submit(Request(prompts(fmt, 2)[1], max_tokens=10, temperature=0.8, top_k=5, seed=4))
    eng.run_until_idle()
    assert list(h)[-1].data["text"] == alone[0]


def test_stop_strings_max_tokens_and_cancel(model, fmt):
    eng = Engine(model, fmt.tokenizer, -1, slots=2)
    p = prompts(fmt, 1)[0]
    text, _ = eng.generate(Request(p, max_tokens=12))
    stop = text[3:5]
    cut, data = eng.generate(Request(p, max_tokens=12, stop=(stop,)))
    assert cut == text[:text.index(stop)] and data["finish_reason"] == "stop"
    assert eng.generate(Request(p, max_tokens=4))[1]["finish_reason"] == "length"
    h = eng.submit(Request(p, max_tokens=100))
    for _ in range(3):
        eng.step()
    assert eng.busy_slots() == 1
    h.cancel()
    eng.step()
    assert eng.busy_slots() == 0 and list(h)[-1].data["finish_reason"] == "cancelled"


def test_bad_requests_are_refused_with_what_to_change(model, fmt):
    eng = Engine(model, fmt.tokenizer, end_id(fmt), slots=1, max_len=64)
    p = prompts(fmt, 1)[0]
    with pytest.raises(ValueError, match="exceed the context of 64 tokens"):
        eng.submit(Request(p, max_tokens=60))
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        eng.submit(Request(p, max_tokens=0))
    with pytest.raises(ValueError, match=r"unknown adapter 'x'; available: \['base'\]"):
        eng.submit(Request(p, max_tokens=8, adapter="x"))
    with pytest.raises(ValueError, match="no tools"):
        eng.submit(Request(p, max_tokens=8, tools=True))
    with pytest.raises(ValueError, match="batching must be one of"):
        Engine(model, fmt.tokenizer, 0, batching="dynamic")


def test_each_request_runs_on_its_own_adapter(model, fmt):
    m = Llama(model.config).double().eval()
    m.load_state_dict(model.state_dict())
    lora.apply_lora(m, r=2, alpha=4, seed=0)
    states = {}
    for name, scale in (("one", 0.5), ("two", -0.5)):
        with torch.no_grad():
            states[name] = {n: torch.randn_like(t) * scale for n, t in lora.lora_state(m).items()}
    lib = library.build(m, states, base="tiny")
    p = prompts(fmt, 1)[0]
    want = {}
    for name in ("one", "two", "base"):
        library.use(m, lib, name)
        want[name] = fmt.tokenizer.decode(reference(m, p, 8, end_id(fmt)))
    assert len(set(want.values())) == 3  # the adapters change the answer
    eng = Engine(m, fmt.tokenizer, end_id(fmt), slots=3, library=lib)
    handles = {name: eng.submit(Request(p, max_tokens=8, adapter=name)) for name in ("one", "two", "base")}
    eng.run_until_idle()
    assert {name: list(h)[-1].data["text"] for name, h in handles.items()} == want


def test_a_new_adapter_is_named_while_it_moves_into_the_library(model, fmt):
    """Adapters added together (a restarted server loading its store) move from pending to the library in one
    step: a request checked from another thread in the middle of that move sees every one of them. (A reader
    that saw the first one in the library and the second neither pending nor there answered 'unknown adapter'.)"""
    m = Llama(model.config).eval()
    m.load_state_dict(model.state_dict())
    lora.apply_lora(m, r=2, alpha=4, seed=0)
    eng = Engine(m, fmt.tokenizer, end_id(fmt), slots=2, library=library.build(m, {}, base="tiny"))
    seen, readers = [], []

    class MidMove(dict):  # after the first adapter lands, another thread asks which adapters exist
        def __setitem__(self, key, value):
            super().__setitem__(key, value)
            if not readers:
                readers.append(threading.Thread(target=lambda: seen.append(eng.adapters())))
                readers[0].start()
                readers[0].join(0.2)

    eng.library.adapters = MidMove(eng.library.adapters)
    for name in ("facts-only", "made-up-facts"):
        eng.add_adapter(name, lora.lora_state(m))
    eng.step()
    readers[0].join(5)
    assert seen and {"facts-only", "made-up-facts"} <= set(seen[0])
    assert {"facts-only", "made-up-facts"} <= set(eng.library.names)


def test_tool_calls_run_mid_generation(model, fmt, monkeypatch):
    """A scripted sampler writes a calculator call, then an answer; the engine runs the call, forces its result
    into the slot and continues; the call is not shown as text but as tool events."""
    ask = [{"role": "user", "content": "What is 12 times 7?"}]
    before = fmt.render(ask, add_generation_prompt=True).ids
    call = {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": "12*7"}]}
    after = fmt.render([*ask, call]).ids
    end = end_id(fmt)
    turn1 = after[len(before): len(after) - after[::-1].index(end)]
    turn2 = fmt.tokenizer.encode("It is 84.") + [end]
    script = iter(turn1 + turn2)
    monkeypatch.setattr(engine_mod, "sample_next", lambda *a, **k: torch.tensor([[next(script)]]))
    eng = Engine(model, fmt.tokenizer, end, slots=2, fmt=fmt, toolbox=tools.Toolbox([tools.calculator()]))
    h = eng.submit(Request(before, max_tokens=64, tools=True, messages=ask))
    eng.run_until_idle()
    events = list(h)
    kinds = [e.kind for e in events]
    assert kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("text")
    result = next(e for e in events if e.kind == "tool_result")
    assert result.text == "84" and result.data["ok"]
    done = events[-1].data
    assert done["text"] == "It is 84." and done["finish_reason"] == "stop"
    assert done["tool_calls"] == [{"name": "calculator", "arguments": "12*7", "output": "84"}]
    tool_turn = fmt.render([*ask, call, {"role": "tool", "content": "84"}], add_generation_prompt=True).ids
    assert done["usage"]["completion_tokens"] == len(turn1) + len(turn2)
    assert len(tool_turn) > len(after)  # the forced ids went through the model: the slot held them all
