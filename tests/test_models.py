"""nanolm.eval.models: every model the course uses, loaded with its tokenizer in one call.

`smollm2` is built once from the real GGUF file (about 15-30 s) into a temporary checkpoints folder and checked
three ways: our load gives exactly the logits of the model read straight from the GGUF file; transformers'
from_pretrained opens the same folder and gives the same logits (measured max difference: 0.0 for prompts of
several tokens; see the test for one token); transformers' tokenizer and chat template from the folder agree
with ours. The course's own models use tiny fixtures.
"""

from __future__ import annotations

import time

import pytest
import torch
from real_model import smollm2_path
from tolerances import FLOAT32_MODEL

from nanolm.core import artifacts
from nanolm.eval import models
from nanolm.model import gguf_llama, gpt, hf, llama
from nanolm.model.gpt import GPT, GPTConfig
from nanolm.model.llama import Llama, LlamaConfig
from nanolm.text import bpe, bpe_train
from nanolm.text.charset import CharTokenizer

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROFILE = "smoke"
# "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n" in the file's tokenizer
CHAT = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
TEXTS = ["The capital of France is Paris.", "def f(x):\n    return x ** 2  # square\n", "Ünïcödé — 東京 🚀 3.14159",
         "   leading spaces and\ttabs\n\n\nnewlines", "user typed <|im_start|> here"]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 12 times 7?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}],
]






def _prompts() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.tensor([CHAT]), torch.randint(0, 49152, (1, 1), generator=g),
            torch.randint(0, 49152, (2, 17), generator=g)]


# ----------------------------------------------------------------------------- smollm2, built once


@pytest.fixture(scope="module")
def smollm2_root(tmp_path_factory):
    """A checkpoints folder holding the real smollm2 artifact (saved once for this module)."""
    root = tmp_path_factory.mktemp("checkpoints")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOLM_CHECKPOINTS", str(root))
        start = time.perf_counter()
        models.save_smollm2(smollm2_path(), notebook="09_modern_architecture", profile=PROFILE)
        print(f"\nsave_smollm2: {time.perf_counter() - start:.1f} s")
    return root


@pytest.fixture
def smollm2(smollm2_root, monkeypatch):
    """The folder of the shared smollm2 artifact, with NANOLM_CHECKPOINTS pointing at its root."""
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(smollm2_root))
    return smollm2_root / PROFILE / "smollm2"


@pytest.fixture(scope="module")
def reference():
    """Our Llama read straight from the GGUF file (dequantized by nanolm.core.gguf)."""
    return gguf_llama.load_llama(smollm2_path())[0]


def test_smollm2_folder_is_an_artifact_and_a_hugging_face_folder(smollm2):
    art = artifacts.load("smollm2", profile=PROFILE, lazy=lambda fn: fn.endswith(".safetensors"))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "nanolm_tokenizer.json"} <= set(art.files())
    assert art.manifest["notebook"] == "09_modern_architecture"
    assert art.config["model"] == "llama-hf" and art.config["source"] == "smollm2 GGUF"
    assert art.config["n_layer"] == 30 and art.config["tie_embeddings"] is True
    cfg = art.json("config.json")
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 2)  # the file's, not defaults
    size = (smollm2 / "model.safetensors").stat().st_size
    assert size < 134_600_000 * 4 + 1_000_000, "float32, the tied embedding stored once"
    print(f"\nartifact on disk: {sum(p.stat().st_size for p in smollm2.iterdir()) / 1e6:.1f} MB")


def test_load_gives_the_logits_of_the_gguf_model_exactly(smollm2, reference):
    start = time.perf_counter()
    loaded = models.load("smollm2", profile=PROFILE)
    print(f"\nload('smollm2'): {time.perf_counter() - start:.2f} s")
    assert loaded.kind == "llama-hf" and loaded.name == "smollm2" and not loaded.model.training
    with torch.no_grad():
        for idx in _prompts():
            assert torch.equal(loaded.model(idx)[0], reference(idx)[0])


def test_transformers_loads_the_folder_with_the_same_logits(smollm2, reference):
    from transformers import AutoModelForCausalLM

    folder = models.hf_folder("smollm2", profile=PROFILE)
    assert folder == smollm2
    start = time.perf_counter()
    theirs = AutoModelForCausalLM.from_pretrained(folder).eval()
    print(f"\nfrom_pretrained(folder): {time.perf_counter() - start:.2f} s")
    assert theirs.dtype == torch.float32 and theirs.config.tie_word_embeddings
    with torch.no_grad():
        for idx in _prompts():
            got, want = theirs(idx).logits, reference(idx)[0]
            if idx.size(1) > 1:  # bit for bit, as measured on an Intel Xeon and an AMD EPYC
                diff = (got - want).abs().max().item()
                assert diff == 0.0, f"max |logit difference| {diff} (measured: 0.0)"
            else:  # one token: matrix-vector products, where some CPUs' kernels round our fused gate/up product
                torch.testing.assert_close(got, want, **FLOAT32_MODEL)  # and HF's two separate ones differently


def test_tokenizer_and_chat_template_agree_with_transformers(smollm2):
    from transformers import AutoTokenizer

    loaded = models.load("smollm2", profile=PROFILE)
    theirs = AutoTokenizer.from_pretrained(models.hf_folder("smollm2", profile=PROFILE))
    ours = loaded.tokenizer
    for text in TEXTS:
        theirs_ids = theirs(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert ours.encode(text) == theirs_ids, text
        assert ours.decode(ours.encode(text)) == text
    for conversation in CONVERSATIONS:
        for gen in (False, True):
            text = loaded.chat.render(conversation, add_generation_prompt=gen)
            assert text == theirs.apply_chat_template(conversation, tokenize=False, add_generation_prompt=gen)
            assert ours.encode(text, allowed_special="all") == theirs(text, add_special_tokens=False)["input_ids"]


def test_a_changed_weights_file_is_refused(smollm2):
    weights = smollm2 / "model.safetensors"
    at = weights.stat().st_size // 2
    with open(weights, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 1]))
    try:
        with pytest.raises(artifacts.ArtifactError, match="model.safetensors does not match its manifest"):
            models.load("smollm2", profile=PROFILE)
        with pytest.raises(artifacts.ArtifactError, match="model.safetensors does not match its manifest"):
            models.hf_folder("smollm2", profile=PROFILE)
    finally:
        with open(weights, "r+b") as f:
            f.seek(at)
            f.write(byte)
    assert models.hf_folder("smollm2", profile=PROFILE) == smollm2


def test_a_missing_model_names_the_notebook_to_run():
    with pytest.raises(artifacts.ArtifactError, match="09_modern_architecture"):
        models.load("smollm2", profile=PROFILE)
    with pytest.raises(artifacts.ArtifactError, match="07_gpt"):
        models.load("gpt-char", profile=PROFILE)


# ----------------------------------------------------------------------------- the course's own models


def _bpe() -> bpe.Tokenizer:
    tok = bpe.Tokenizer.from_merges(bpe_train.train_plain("the cat sat on the mat; the hat " * 20, 12))
    bpe.save("bpe-tokenizer", tok, notebook="04_tokenization", profile=PROFILE)
    return tok


def _check(loaded: models.Loaded, model: torch.nn.Module, tok, kind: str, text: str) -> None:
    assert loaded.kind == kind and loaded.chat is None and not loaded.model.training
    ids = loaded.tokenizer.encode(text)
    assert ids == tok.encode(text) and loaded.tokenizer.decode(ids) == text
    idx = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(loaded.model(idx)[0], model.eval()(idx)[0])


def test_gpt_char_loads_with_its_character_vocabulary():
    text = "to be or not to be"
    tok = CharTokenizer.from_text(text)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    gpt.save("gpt-char", model, notebook="07_gpt", profile=PROFILE, files={"vocab.json": tok.to_json()})
    _check(models.load("gpt-char", profile=PROFILE), model, tok, "gpt", text)


def test_gpt_base_and_base_load_with_the_bpe_tokenizer():
    tok = _bpe()
    torch.manual_seed(0)
    small_gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    small_llama = Llama(LlamaConfig(vocab_size=tok.vocab_size + 3, block_size=32, n_layer=1, n_head=2, n_embd=16))
    gpt.save("gpt-base", small_gpt, notebook="08_pretraining", profile=PROFILE)
    llama.save("base", small_llama, notebook="09_modern_architecture", profile=PROFILE)
    _check(models.load("gpt-base", profile=PROFILE), small_gpt, tok, "gpt", "the cat sat")
    _check(models.load("base", profile=PROFILE), small_llama, tok, "llama", "the hat sat on the mat")


def test_a_tokenizer_the_model_has_no_rows_for_is_refused():
    tok = _bpe()
    small = GPT(GPTConfig(vocab_size=tok.vocab_size - 1, block_size=8, n_layer=1, n_head=1, n_embd=8))
    gpt.save("gpt-base", small, notebook="08_pretraining", profile=PROFILE)
    with pytest.raises(artifacts.ArtifactError, match="not made together"):
        models.load("gpt-base", profile=PROFILE)


def test_what_is_not_a_model_or_not_an_hf_folder_is_refused():
    artifacts.save("eval-report", notebook="10_evaluation", profile=PROFILE, config={"model": "report"})
    with pytest.raises(artifacts.ArtifactError, match="holds no model this loader knows"):
        models.load("eval-report", profile=PROFILE)
    gpt.save("gpt-base", GPT(GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=1, n_embd=8)),
             notebook="08_pretraining", profile=PROFILE)
    with pytest.raises(artifacts.ArtifactError, match="not a Hugging Face model folder"):
        models.hf_folder("gpt-base", profile=PROFILE)


# ----------------------------------------------------------------------------- model.hf: from a config and state dict


def test_llama_from_hf_state_round_trips_a_small_llama():
    torch.manual_seed(0)
    ours = Llama(LlamaConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                             rope_theta=5e4, norm_eps=1e-6)).eval()
    theirs = hf.to_hf(ours)
    config = theirs.config.to_dict()
    assert hf.llama_config_from_hf(config) == ours.config
    back = hf.llama_from_hf_state(config, theirs.state_dict())
    idx = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert torch.equal(back(idx)[0], ours(idx)[0])
    state = {k: v for k, v in theirs.state_dict().items() if k != "lm_head.weight"}  # tied: stored once
    assert hf.llama_from_hf_state(config, state).tensors().keys() == ours.tensors().keys()


def test_llama_from_hf_refuses_what_ours_cannot_run():
    torch.manual_seed(0)
    theirs = hf.to_hf(Llama(LlamaConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)))
    config, state = theirs.config.to_dict(), theirs.state_dict()
    scaled = {**config, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}
    with pytest.raises(ValueError, match="only default RoPE"):
        hf.llama_config_from_hf(scaled)
    with pytest.raises(ValueError, match="not a Llama config"):
        hf.llama_config_from_hf({**config, "model_type": "mistral"})
    with pytest.raises(ValueError, match="attention_bias"):
        hf.llama_config_from_hf({**config, "attention_bias": True})
    missing = {k: v for k, v in state.items() if "q_proj" not in k}
    with pytest.raises(ValueError, match="missing.*q_proj"):
        hf.llama_from_hf_state(config, missing)
    with pytest.raises(ValueError, match="unexpected.*extra"):
        hf.llama_from_hf_state(config, {**state, "model.extra.weight": torch.zeros(1)})
