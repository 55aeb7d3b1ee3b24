"""The multiple-choice scorer: lm-evaluation-harness's tokenization, shared-prefix == from scratch, exact sums."""

import pytest
import torch
from helpers import train_briefly
from lm_eval.api.model import TemplateLM
from tolerances import FLOAT32_MODEL, FLOAT64

from nanolm.eval import scorer
from nanolm.eval.perplexity import windows as ppl_windows
from nanolm.model.gpt import GPT, GPTConfig
from nanolm.model.kvcache import KVCache
from nanolm.model.llama import Llama, LlamaConfig


def encode(text: str) -> list[int]:
    """Bytes as tokens, with one merge ('e ' -> 256) so that a boundary can fall inside a token."""
    raw, out, i = text.encode("utf-8"), [], 0
    while i < len(raw):
        if raw[i:i + 2] == b"e ":
            out.append(256)
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return out


def _model(kind: str, dtype=torch.float32, block_size: int = 64):
    torch.manual_seed(0)
    if kind == "llama":
        m = Llama(LlamaConfig(vocab_size=257, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))
    else:
        m = GPT(GPTConfig(vocab_size=257, block_size=block_size, n_layer=2, n_head=4, n_embd=32))
    ids = torch.tensor([encode("the cat sat on the mat. the dog ate the hat. ") * 2])[:, :block_size]
    return train_briefly(m.to(dtype), ids)


CONTEXT = "Question: where did the cat sit?\nAnswer:"
CHOICES = ["on the mat", "on the hat.", "nowhere", "the dog ate the hat"]


class _HarnessTokens:
    """Just enough of an lm-evaluation-harness model to run its own _encode_pair."""

    backend = "causal"

    def tok_encode(self, text, **_):
        return encode(text)


@pytest.mark.parametrize("context, continuation", [
    ("Answer:", " yes"), ("Answer: ", "yes"), ("the ", " cat"), ("tree", " house"), ("a  \n ", "b")])
def test_encode_pair_splits_like_lm_evaluation_harness(context, continuation):
    ours = scorer.encode_pair(encode, context, continuation)
    assert ours == TemplateLM._encode_pair(_HarnessTokens(), context, continuation)


@pytest.mark.parametrize("kind", ["llama", "gpt"])
def test_shared_prefix_equals_scoring_from_scratch(kind):
    model = _model(kind)
    shared = scorer.score(model, encode, CONTEXT, CHOICES)
    full = scorer.score_full(model, encode, CONTEXT, CHOICES)
    for a, b in zip(shared, full, strict=True):
        assert a.logprob == pytest.approx(b.logprob, rel=FLOAT32_MODEL["rtol"], abs=FLOAT32_MODEL["atol"])
        assert (a.greedy, a.n_tokens, a.n_chars, a.n_bytes) == (b.greedy, b.n_tokens, b.n_chars, b.n_bytes)


@pytest.mark.parametrize("kind", ["llama", "gpt"])
def test_logprob_is_the_sum_of_next_token_log_probabilities(kind):
    model = _model(kind, torch.float64)
    for choice, got in zip(CHOICES, scorer.score(model, encode, CONTEXT, CHOICES), strict=True):
        ctx, cont = scorer.encode_pair(encode, CONTEXT, " " + choice)
        seq = ctx + cont
        want = 0.0
        for t in range(len(ctx), len(seq)):  # one full forward per token: slow and obviously right
            logits, _ = model(torch.tensor([seq[:t]]))
            want += torch.log_softmax(logits[0, -1], -1)[seq[t]].item()
        assert got.logprob == pytest.approx(want, rel=FLOAT64["rtol"], abs=FLOAT64["atol"])
        assert got.n_tokens == len(cont) and got.n_chars == len(choice)
        assert got.n_bytes == len(choice.encode()) and got.loss == pytest.approx(-want / len(cont))


def test_greedy_is_true_exactly_for_what_the_model_would_write():
    model = _model("llama")
    ids = model.generate(torch.tensor([encode(CONTEXT)]), 6, temperature=0)[0, -6:].tolist()
    written = bytes(i for i in ids if i < 256).decode("utf-8", "replace")
    if encode(CONTEXT + written)[len(encode(CONTEXT)):] != ids:
        pytest.fail(f"the fixture model wrote {ids}, which does not re-encode to itself; pick another context")
    other = written[:-1] + ("x" if written[-1] != "x" else "y")
    got = scorer.score(model, encode, CONTEXT, [written, other], delimiter="")
    assert [c.greedy for c in got] == [True, False]


def test_a_long_context_keeps_its_right_end_like_the_harness():
    model = _model("llama", block_size=32)
    long_ctx = "the cat sat on the mat and the dog sat on the log and " * 3 + "Answer:"
    got = scorer.score(model, encode, long_ctx, ["the mat", "a hat"])
    ctx, conts = encode(long_ctx), [encode(" the mat"), encode(" a hat")]
    kept = ctx[-(32 - max(map(len, conts))):]
    for c, cont in zip(got, conts, strict=True):
        logits, _ = model(torch.tensor([kept + cont[:-1]]))
        lp = torch.log_softmax(logits[0, len(kept) - 1:], -1)
        want = lp.gather(1, torch.tensor(cont)[:, None]).sum().item()
        assert c.logprob == pytest.approx(want, rel=FLOAT32_MODEL["rtol"], abs=FLOAT32_MODEL["atol"])


@pytest.mark.parametrize("fn", [scorer.score, scorer.score_full])
def test_a_continuation_longer_than_the_context_is_scored_through_sliding_windows(fn):
    model = _model("llama", dtype=torch.float64, block_size=16)
    context, choice = "Q: say it twice.\nA:", "the cat sat on the mat and the dog ate the hat"
    got = fn(model, encode, context, [choice, "no"])
    seq = encode(context)[-16:]
    cont = scorer.encode_pair(encode, context, " " + choice)[1]
    assert len(cont) >= 16  # longer than the context window
    seq = seq + cont
    want = 0.0
    for t in range(len(seq) - len(cont), len(seq)):
        spans = [(a, e) for a, e, f in ppl_windows(len(seq), 16, 8) if f <= t < e]  # the window that scores t
        a, _ = spans[0]
        logits, _ = model(torch.tensor([seq[a:t]]))
        want += torch.log_softmax(logits[0, -1], -1)[seq[t]].item()
    assert got[0].logprob == pytest.approx(want, rel=FLOAT64["rtol"], abs=FLOAT64["atol"])
    assert got[0].n_tokens == len(cont)


def test_metrics_pick_differently_when_lengths_differ():
    short = scorer.Choice(logprob=-6.0, greedy=False, n_tokens=2, n_chars=4, n_bytes=4)
    long = scorer.Choice(logprob=-9.0, greedy=False, n_tokens=6, n_chars=12, n_bytes=16)
    assert scorer.pick([short, long], "acc") == 0  # -6 > -9
    assert scorer.pick([short, long], "acc_norm") == 1  # -0.75 per char > -1.5
    assert scorer.pick([short, long], "acc_token") == 1  # -1.5 per token > -3
    assert scorer.pick([short, long], "acc_bytes") == 1  # -0.5625 per byte > -1.5
    assert scorer.pick([long, long], "acc") == 0  # ties go to the first
    with pytest.raises(ValueError, match="metric must be one of"):
        scorer.pick([short], "f1")


def test_bad_items_get_clear_errors():
    model = _model("llama", block_size=16)
    with pytest.raises(ValueError, match="a context is needed"):
        scorer.score(model, encode, "", ["a"])
    with pytest.raises(ValueError, match="at least one choice"):
        scorer.score(model, encode, "Q:", [])


def test_only_a_batch_one_cache_is_repeated():
    cache = KVCache(1, 4)
    cache.update(0, torch.zeros(2, 1, 1, 3), torch.zeros(2, 1, 1, 3))
    with pytest.raises(ValueError, match="batch-1"):
        cache.repeat(3)
    one = KVCache(1, 4)
    one.update(0, torch.arange(3.0).view(1, 1, 1, 3), torch.ones(1, 1, 1, 3))
    one.repeat(2)
    assert one.buffers[0][0].shape == (2, 1, 4, 3) and torch.equal(one.buffers[0][0][1, 0, 0], torch.arange(3.0))
    with pytest.raises(ValueError, match="n >= 1"):
        one.repeat(0)
