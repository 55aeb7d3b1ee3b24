"""Our multiple-choice scores against lm-evaluation-harness itself, item by item, on a small model.

The model is a small random Llama in transformers' format with SmolLM2's real tokenizer (built from the
GGUF file by transformers), so the harness runs its own code path (HFLM, its task configs, its
tokenization) on the course's data files, and ours runs nanolm's Llama with nanolm's GGUF tokenizer.
lm-eval is installed by `make test`; where it is missing the test says so and skips.
"""

import json

import pytest
import torch
from real_model import smollm2_path

from nanolm.core import gguf
from nanolm.eval import harness, scorer, tasks
from nanolm.model import hf
from nanolm.text.gguf_tokenizer import GGUFTokenizer

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed; `make test` installs it")

N = 6  # items per task
LL_TOL = 1e-4  # |ours - harness| of a summed log-likelihood, float32 (measured ~1e-5 on smollm2 itself)


@pytest.fixture(scope="module")
def small_hf_folder(tmp_path_factory):
    """A 2-layer random Llama with SmolLM2's vocabulary and tokenizer, saved as a Hugging Face folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("small-llama")
    path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.2, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)  # wide weights: peaked, distinct log-likelihoods
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ours(small_hf_folder):
    from safetensors.torch import load_file

    config = json.loads((small_hf_folder / "config.json").read_text())
    model = hf.llama_from_hf_state(config, load_file(small_hf_folder / "model.safetensors")).eval()
    return model, GGUFTokenizer(gguf.read(smollm2_path()).metadata)


@pytest.fixture(scope="module")
def reference(small_hf_folder):
    return harness.loglikelihoods(small_hf_folder, {t: N for t in tasks.TASKS}, batch_size=4)


@pytest.mark.parametrize("task", tasks.TASKS)
def test_same_prompts_same_loglikelihoods_same_answers(task, ours, reference):
    model, tok = ours
    samples = reference[task]
    assert [s["doc_id"] for s in samples] == list(range(N))
    for item, sample in zip(tasks.items(task, N), samples, strict=True):
        assert sample["arguments"] == [(item.context, " " + c) for c in item.choices]  # prompts and preprocessing
        got = scorer.score(model, tok.encode, item.context, item.choices)
        for mine, (ll, greedy) in zip(got, sample["lls"], strict=True):
            assert mine.logprob == pytest.approx(ll, abs=LL_TOL) and mine.greedy == greedy
        assert float(scorer.pick(got, "acc") == item.gold) == sample["acc"]
        assert float(scorer.pick(got, "acc_norm") == item.gold) == sample["acc_norm"]


def test_an_unknown_task_is_refused(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        harness.write_tasks(tmp_path, ["mmlu"])
