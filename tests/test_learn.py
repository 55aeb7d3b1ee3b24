"""nanolm.adapt.learn and nanolm.adapt.library: made-up facts, learning an adapter, the retention verdict,
and a library of adapters with a router saved as one artifact.

The tiny Llama reads characters (id = ord(c) % V); its token embedding is drawn with std 0.1 so that its
tied head can reach confident logits (see test_finetune.py).
"""

import copy

import pytest
import torch

from nanolm.adapt import learn, library
from nanolm.adapt.adapters import base_sha256
from nanolm.adapt.lora import apply_lora, base_tensors, lora_state
from nanolm.adapt.router import Router, prompt_features
from nanolm.core.artifacts import ArtifactError
from nanolm.eval import scorer
from nanolm.model.llama import Llama, LlamaConfig

V = 128
SAVE = dict(notebook="12_continual_learning", profile="smoke")


def encode(text: str) -> list[int]:
    return [ord(c) % V for c in text]


def decode(ids) -> str:
    return "".join(chr(i) for i in ids)


def tiny_llama(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(vocab_size=V, block_size=64, n_layer=1, n_head=2, n_kv_head=1, n_embd=64))
    torch.nn.init.normal_(model.tok_emb.weight, std=0.1)
    return model.eval()


def _learn(model, examples, seed=0, **kw):
    return learn.learn(model, examples, steps=kw.pop("steps", 40), lr=1e-2, batch_size=4, block_size=64,
                       encode=encode, eos_id=0, r=8, alpha=16, seed=seed, print_fn=None, **kw)


# ----------------------------------------------------------------------------- made-up facts


def _words(facts):
    return {w.lower() for f in facts for w in (*f.subject.split(), f.answer)}


def test_made_up_facts_are_deterministic_distinct_and_not_real():
    sets = {(kind, seed): learn.made_up_facts(8, seed, kind) for kind in learn.KINDS for seed in (0, 1, 2)}
    assert learn.made_up_facts(8, 1, "capital") == sets["capital", 1]  # the same on every call
    for (kind, seed), facts in sets.items():
        words = _words(facts)
        assert len(words) == sum(len(f.subject.split()) + 1 for f in facts)  # no word used twice in a set
        assert not words & learn.REAL and all(w.isalpha() for w in words)
        for other, facts2 in sets.items():
            if other != (kind, seed):
                assert not words & _words(facts2), (kind, seed, other)  # disjoint across kinds and seeds
    with pytest.raises(ValueError, match="kind"):
        learn.made_up_facts(3, 0, "planet")


def test_the_probe_is_never_a_teaching_wording():
    for kind in learn.KINDS:
        facts = learn.made_up_facts(6, 0, kind)
        prompts = {p for p, _ in learn.teaching_examples(facts)}
        assert len(learn.teaching_examples(facts)) == 6 * len(facts[0].templates) >= 6 * 3
        items = learn.probe_items(facts, n_choices=4, seed=0)
        for fact, item in zip(facts, items, strict=True):
            assert item.context == fact.question() and item.context not in prompts
            assert fact.subject in item.context and fact.answer not in item.context
            assert item.choices[item.gold] == fact.answer and len(set(item.choices)) == 4
            assert set(item.choices) <= {f.answer for f in facts}
            assert fact.sentence() == "".join(fact.examples()[0])
    assert len({it.gold for it in learn.probe_items(learn.made_up_facts(12, 0, "capital"))}) > 1  # gold moves


# ----------------------------------------------------------------------------- the verdict


def test_sign_test_against_hand_values():
    assert learn.sign_test(0, 6) == pytest.approx(2 * 0.5 ** 6)
    assert learn.sign_test(6, 0) == pytest.approx(2 * 0.5 ** 6)
    assert learn.sign_test(1, 5) == pytest.approx(2 * (1 + 6) / 64)
    assert learn.sign_test(3, 3) == 1.0 and learn.sign_test(0, 0) == 1.0
    assert learn.sign_test(0, 1) == 1.0  # min(1, 2 * 0.5)


def test_retention_check_pairs_items():
    before = [True] * 10 + [False] * 10
    lost_all = learn.retention_check(before, [False] * 20)  # 10 lost, 0 gained: p = 2 / 1024
    assert (lost_all.lost, lost_all.gained, lost_all.kept) == (10, 0, False)
    assert lost_all.p_value == pytest.approx(2 * 0.5 ** 10) and lost_all.before.value == 0.5
    one = learn.retention_check(before, [False] + [True] * 9 + [False] * 10)
    assert (one.lost, one.gained, one.kept) == (1, 0, True)  # one item lost says nothing (p = 1)
    swapped = learn.retention_check(before, [not b for b in before])  # 10 lost, 10 gained: no change overall
    assert swapped.kept and swapped.p_value == 1.0
    capped = learn.retention_check(before, [False] + [True] * 9 + [False] * 10, max_drop=0.01)
    assert not capped.kept  # a 5-point drop is over max_drop
    assert "lost 10, gained 0" in str(lost_all) and lost_all.as_dict()["kept"] is False
    with pytest.raises(ValueError, match="paired"):
        learn.retention_check([True], [True, False])


# ----------------------------------------------------------------------------- learning


def test_fresh_state_is_how_apply_lora_starts():
    model = apply_lora(tiny_llama(), r=8, alpha=16, seed=3)
    fresh = learn.fresh_state(model, 3)
    assert all(torch.equal(fresh[k], v) for k, v in lora_state(model).items()) and fresh.keys() == lora_state(model).keys()


def test_learn_trains_only_the_adapter_and_memorises():
    model = tiny_llama()
    base = {k: v.clone() for k, v in base_tensors(model).items()}
    examples = [(f"{w}:", f" {w[::-1]}") for w in ("cat", "dog", "bird", "fish")]
    out = _learn(model, examples, steps=40)
    losses = out["record"]["losses"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 / 2  # the loss falls by more than half
    assert all(torch.equal(base[k], v) for k, v in base_tensors(model).items())  # base weights untouched
    assert out["model"] is model and not model.training
    assert all(torch.equal(out["adapter"][k], v) for k, v in lora_state(model).items())
    assert any(v.abs().sum() > 0 for k, v in out["adapter"].items() if k.endswith(".B"))
    again = _learn(model, examples, steps=1, start=out["adapter"])  # continue from the adapter, not afresh
    moved = max((again["adapter"][k] - v).abs().max().item() for k, v in out["adapter"].items())
    assert 0 < moved < 0.1
    with pytest.raises(ValueError, match="at least one"):
        _learn(model, [])


def test_replay_examples_join_the_training_set():
    model = tiny_llama()
    out = _learn(model, [("a:", " b")], replay=[("c:", " d"), ("e:", " f")], steps=2)
    assert (out["n_new"], out["n_replay"]) == (1, 2)


# ----------------------------------------------------------------------------- the library


def _two_adapters():
    """A tiny model with LoRA, two learned adapters (letters ab vs digits) and a router fitted on their prompts."""
    model = tiny_llama()
    a = _learn(model, [("abab:", " x"), ("baba:", " y")], steps=10, seed=1)["adapter"]
    b = _learn(model, [("1212:", " z"), ("2121:", " w")], steps=10, seed=2)["adapter"]
    return model, {"letters": a, "digits": b}


def _fit_router(model, lib):
    library.use(model, lib, library.BASE)
    prompts = {"letters": ["abab", "bbaa", "aabb", "abba"], "digits": ["1212", "2211", "1122", "1221"],
               "base": ["....", ",,..", ".,.,", ",.,."]}
    texts = [p for ps in prompts.values() for p in ps]
    labels = [k for k, ps in prompts.items() for _ in ps]
    return Router.fit(prompt_features(model, [encode(t) for t in texts]), labels)


def _logits(model, text):
    with torch.no_grad():
        return model(torch.tensor([encode(text)]))[0]


def test_use_switches_adapters_and_base_is_the_base_model():
    model, states = _two_adapters()
    plain = tiny_llama()
    lib = library.build(model, states, base="tiny")
    library.use(model, lib, library.BASE)
    assert torch.equal(_logits(model, "abab:"), _logits(plain, "abab:"))  # B = 0: exactly the base
    library.use(model, lib, "letters")
    assert all(torch.equal(lora_state(model)[k], v) for k, v in states["letters"].items())
    assert not torch.equal(_logits(model, "abab:"), _logits(plain, "abab:"))
    with pytest.raises(ValueError, match="no adapter"):
        library.use(model, lib, "french")
    with pytest.raises(ValueError, match="adapter name"):
        library.build(model, {"base": states["letters"]}, base="tiny")


def test_library_round_trip_restores_identical_outputs(tmp_path):
    model, states = _two_adapters()
    lib = library.build(model, states, base="tiny")
    library.set_router(lib, _fit_router(model, lib))
    art = library.save("adapter-library", lib, model, root=tmp_path, **SAVE)
    assert {"letters.adapter_model.safetensors", "digits.adapter_config.json", "router.safetensors"} <= set(art.files())
    want = {}
    for name in lib.names:
        library.use(model, lib, name)
        want[name] = _logits(model, "abab:12")
    fresh = tiny_llama()  # the same base without any LoRA: library.load puts it on
    lib2, art2 = library.load("adapter-library", fresh, profile="smoke", root=tmp_path)
    assert lib2.names == lib.names and art2.config["base"] == "tiny" and lib2.router.names == lib.router.names
    assert torch.equal(_logits(fresh, "abab:12"), want["base"])  # loaded on "base"
    for name in lib.names:
        library.use(fresh, lib2, name)
        assert torch.equal(_logits(fresh, "abab:12"), want[name]), name
    assert torch.equal(lib2.router.state()["centroids"], lib.router.state()["centroids"])


def test_library_refuses_another_base_and_a_changed_file(tmp_path):
    model, states = _two_adapters()
    lib = library.build(model, states, base="tiny")
    art = library.save("adapter-library", lib, model, root=tmp_path, **SAVE)
    other = tiny_llama(seed=1)
    assert base_sha256(other) != lib.base_sha256
    with pytest.raises(ValueError, match="other weights"):
        library.load("adapter-library", other, profile="smoke", root=tmp_path)
    path = art.path / "digits.adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        library.load("adapter-library", tiny_llama(), profile="smoke", root=tmp_path)


def test_routing_picks_the_right_adapter_on_separable_prompts():
    model, states = _two_adapters()
    lib = library.build(model, states, base="tiny")
    library.set_router(lib, _fit_router(model, lib))
    assert library.route(model, lib, encode, ["baab", "2112", ".,,."]) == ["letters", "digits", "base"]
    name, choices = library.routed_score(model, lib, encode, "abab:", ["x", "y"])
    assert name == "letters" and len(choices) == 2
    assert choices == scorer.score(model, encode, "abab:", ["x", "y"])  # scored with "letters" active
    name, done = library.routed_generate(model, lib, encode, decode, "1221:", 3)
    assert name == "digits" and isinstance(done.text, str)
    with pytest.raises(ValueError, match="not in the library"):
        library.set_router(lib, Router.fit(torch.randn(2, 64), ["letters", "french"]))
    no_router = library.build(model, states, base="tiny")
    with pytest.raises(ValueError, match="no router"):
        library.route(copy.deepcopy(model), no_router, encode, ["abab"])
