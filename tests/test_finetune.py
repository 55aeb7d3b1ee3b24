"""nanolm.adapt.finetune: loss masks, batches, the arXiv split, and LoRA fine-tuning of a tiny Llama.

The tiny Llama reads characters (id = ord(c)); its token embedding is drawn with std 0.1 instead of
0.02, so that its tied head can reach confident logits at all (with std 0.02 a frozen head caps what
LoRA can learn: logits stay below ~1.3). It then learns a fixed mapping word -> "reversed word is length".
"""

import math

import pytest
import tolerances
import torch
import torch.nn.functional as F

from nanolm.adapt import finetune as ft
from nanolm.adapt.lora import apply_lora
from nanolm.model.llama import Llama, LlamaConfig
from nanolm.text import corpus

V, BLOCK = 128, 64
WORDS = ["cat", "dog", "bird", "fish", "lion", "wolf", "bear", "frog"]


def encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def decode(ids) -> str:
    return "".join(chr(i) for i in ids)


def tiny_llama(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, n_kv_head=2, n_embd=64))
    torch.nn.init.normal_(model.tok_emb.weight, std=0.1)  # tied head: see the module docstring
    return model


def mapping_examples() -> list[tuple[str, str]]:
    return [(ft.PROMPT.format(title=w), f" {w[::-1]} is {len(w)}") for w in WORDS]


# ----------------------------------------------------------------------------- masks and batches


def test_labels_are_masked_exactly_on_the_prompt():
    prompt, target = "Title: cat\nAbstract:", " tac"
    [(ids, labels)] = ft.encode_examples([(prompt, target)], encode, BLOCK, eos_id=0)
    p, t = encode(prompt), encode(target) + [0]
    assert ids == (p + t)[:-1]  # the model reads everything but the last token
    assert labels == [-100] * (len(p) - 1) + t  # and predicts exactly the target and eos
    assert labels[len(p) - 2] == -100 and labels[len(p) - 1] == t[0]  # the last prompt position predicts t0


def test_truncation_keeps_block_size_tokens():
    prompt, target = "Title: x\nAbstract:", " abcdefghij"
    p = encode(prompt)
    block = len(p) + 3
    [(ids, labels)] = ft.encode_examples([(prompt, target)], encode, block, eos_id=0)
    assert len(ids) == len(labels) == block
    assert labels[len(p) - 1:] == encode(" abc")  # 4 target tokens predicted; the rest and eos cut off
    [(ids, labels)] = ft.encode_examples([(prompt, target)], encode, len(p), eos_id=None)
    assert labels == [-100] * (len(p) - 1) + encode(" ")  # the smallest block: one target token


def test_padding_gets_label_minus_100():
    enc = ft.encode_examples([("ab:", " x"), ("abcdef:", " xyz")], encode, BLOCK, eos_id=1)
    x, y = ft.collate(enc)
    assert x.shape == y.shape == (2, len(enc[1][0]))
    n0 = len(enc[0][0])
    assert (y[0, n0:] == -100).all() and (x[0, n0:] == 0).all()
    assert y[0, :n0].tolist() == enc[0][1] and y[1].tolist() == enc[1][1]


def test_masked_loss_is_the_mean_over_target_tokens():
    model = tiny_llama().eval()
    enc = ft.encode_examples(mapping_examples()[:3], encode, BLOCK, eos_id=0)
    x, y = ft.collate(enc)
    logp = F.log_softmax(model(x)[0].double(), dim=-1)  # (B, T, V)
    terms = [-logp[b, i, y[b, i]] for b in range(len(enc)) for i in range(y.shape[1]) if y[b, i] != -100]
    assert len(terms) == sum(len(encode(t)) + 1 for _, t in mapping_examples()[:3])
    hand = torch.stack(terms).mean()
    torch.testing.assert_close(ft.masked_loss(model, x, y).double(), hand, **tolerances.FLOAT32)


def test_evaluate_weighs_every_target_token_the_same():
    model = tiny_llama()
    enc = ft.encode_examples(mapping_examples(), encode, BLOCK, eos_id=0)
    nll, count = 0.0, 0
    for ids, labels in enc:  # one example at a time, no padding
        logits = model(torch.tensor([ids]))[0][0].double()
        mask = torch.tensor(labels) != -100
        nll += F.cross_entropy(logits[mask], torch.tensor(labels)[mask], reduction="sum").item()
        count += int(mask.sum())
    assert ft.evaluate(model, enc, batch_size=3) == pytest.approx(nll / count, rel=1e-6)
    assert model.training  # evaluate restores the mode it found


def test_batches_are_full_seeded_and_cover_every_example():
    enc = ft.encode_examples(mapping_examples(), encode, BLOCK)
    a, b = ft.batches(enc, 4, seed=3), ft.batches(enc, 4, seed=3)
    first = [next(a) for _ in range(6)]
    for (x1, y1), (x2, y2) in zip(first, [next(b) for _ in range(6)], strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape[0] == 4
    seen = {tuple(x[i][x[i] != 0].tolist()) for x, _ in first[:2] for i in range(4)}  # one epoch = 2 batches
    assert seen == {tuple(ids) for ids, _ in enc}


# ----------------------------------------------------------------------------- the arXiv split


def test_arxiv_split_is_deterministic_deduplicated_and_disjoint():
    train, val = ft.abstract_examples("train"), ft.abstract_examples("val")
    ft._arxiv_split.cache_clear()
    assert ft.abstract_examples("train") == train and ft.abstract_examples("val") == val
    assert ft.abstract_examples("val", n=5) == val[:5]
    titles = [p for p, _ in train + val]
    assert len(set(titles)) == len(titles)  # deduplicated within and across the splits
    assert 900 < len(train) < 1000 and 30 < len(val) < 100
    prompt, target = val[0]
    assert prompt.startswith("Title: ") and prompt.endswith("\nAbstract:") and target.startswith(" ")


def test_val_documents_were_never_in_pretraining_training_text():
    pretrained = corpus.pretraining_splits(domains=("arxiv",))["train"]["arxiv"]
    val = ft.abstract_examples("val")
    assert not [p for p, t in val if t.strip() in pretrained or p[7:-10] in pretrained]
    train = ft.abstract_examples("train")
    assert sum(t.strip() in pretrained for _, t in train) >= len(train) - 1  # the one cut at the mark aside


# ----------------------------------------------------------------------------- training


def test_lora_learns_a_fixed_mapping_and_changes_only_adapters():
    model = apply_lora(tiny_llama(), r=8, alpha=16, seed=0)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".adapters." not in k}
    enc = ft.encode_examples(mapping_examples(), encode, BLOCK, eos_id=0)
    before = ft.evaluate(model, enc, 8)
    lines: list[str] = []
    out = ft.train(model, enc, steps=30, batch_size=8, lr=1e-2, log_every=10, seed=0, print_fn=lines.append)
    after = ft.evaluate(model, enc, 8)
    assert after < before / 3 and after < math.log(V) / 2  # measured: 6.90 -> 1.69 nats (a factor 4.1)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())  # base weights bit-identical
    assert len(lines) == 3 and lines[-1].startswith("step 30/30 | loss ")
    assert " tok/s | " in lines[0] and lines[0].endswith(" s")
    assert len(out["losses"]) == 30 and out["seconds_per_step"] > 0 and out["tokens_per_s"] > 0


def test_train_reports_the_memory_of_a_step():
    model = apply_lora(tiny_llama(), r=4, alpha=8, seed=0)
    enc = ft.encode_examples(mapping_examples(), encode, BLOCK)
    mem = ft.train(model, enc, steps=2, batch_size=4, lr=1e-3, log_every=1, seed=0, print_fn=None)["memory"]
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    weights = {p.data_ptr(): p.numel() * 4 for p in list(model.parameters()) + list(model.buffers())}
    assert mem["grads"] == trainable and mem["optimizer"] == 2 * trainable  # AdamW: exp_avg, exp_avg_sq
    assert mem["weights"] == sum(weights.values())  # the tied head once
    assert mem["activations"] > 0 and mem["total"] == sum(mem[k] for k in ("weights", "grads", "optimizer",
                                                                            "activations"))


def test_generate_abstract_is_the_greedy_continuation():
    model = tiny_llama().eval()
    text = ft.generate_abstract(model, encode, decode, "  cat ", max_new_tokens=6, eos_id=None, until=())
    ids = encode(ft.PROMPT.format(title="cat"))
    for _ in range(6):
        ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert text == decode(ids[-6:]).strip()


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match="at least one"):
        ft.encode_examples([], encode, BLOCK)
    with pytest.raises(ValueError, match="block_size is 5"):
        ft.encode_examples([("Title: cat\nAbstract:", " tac")], encode, 5)
    with pytest.raises(ValueError, match="at least one token"):
        ft.encode_examples([("Title:", "")], encode, BLOCK)
    with pytest.raises(ValueError, match="split must be"):
        ft.abstract_examples("test")
    with pytest.raises(ValueError, match="no trainable parameters"):
        ft.train(tiny_llama().requires_grad_(False), ft.encode_examples(mapping_examples(), encode, BLOCK),
                 steps=1, batch_size=2, lr=1e-3, log_every=1, seed=0)
    with pytest.raises(ValueError, match="no target token"):
        ft.masked_loss(tiny_llama(), torch.zeros(1, 3, dtype=torch.long), torch.full((1, 3), -100))
    with pytest.raises(ValueError, match="at least one"):
        ft.evaluate(tiny_llama(), [], 2)


def test_record_appends_every_step_and_prints_every_log_every_and_the_last(capsys):
    from nanolm.adapt.finetune import record

    history = {}
    for k in range(1, 6):
        record(history, {"loss": k / 10, "acc": 1.0}, k, 5, 2, lambda h: f"loss {h['loss'][-1]:.2f}")
    assert history == {"loss": [0.1, 0.2, 0.3, 0.4, 0.5], "acc": [1.0] * 5}
    assert capsys.readouterr().out == "step 2/5 | loss 0.20\nstep 4/5 | loss 0.40\nstep 5/5 | loss 0.50\n"
    record(history, {"loss": 0.0}, 6, 6, 0, lambda h: "never")  # log_every 0: silent
    assert capsys.readouterr().out == ""
