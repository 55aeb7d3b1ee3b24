"""The course's syllabus: each notebook, what it builds, and the artifacts it saves and loads."""

from __future__ import annotations

from typing import NamedTuple


class Phase(NamedTuple):
    stem: str
    builds: str
    saves: tuple[str, ...] = ()
    loads: tuple[str, ...] = ()


SYLLABUS = [
    Phase("00_math", "vectors by hand vs NumPy, shapes, numerical gradients, softmax/cross-entropy/KL, SVD, AdamW and LR schedule"),
    Phase("01_autograd", "a scalar autograd engine, graph drawing, an MLP on two moons"),
    Phase("02_neural_networks", "perceptron, hand-written backprop, optimizers, init, BatchNorm, MNIST"),
    Phase("03_sequence_models", "bigram, MLP, WaveNet, RNN/LSTM/GRU with BPTT, seq2seq", ("shakespeare-char",)),
    Phase("04_tokenization", "char/word/byte-level BPE, tiktoken parity, Word2Vec, positional encodings", ("bpe-tokenizer",)),
    Phase("05_attention", "Bahdanau/Luong, scaled dot-product and multi-head attention, masks", (), ("shakespeare-char",)),
    Phase("06_transformer", "LayerNorm, encoder/decoder blocks, a toy translation transformer, ablations"),
    Phase("07_gpt", "decoder-only GPT, sampling, character Shakespeare, masked vs causal LM, HF GPT-2 parity", ("gpt-char",), ("shakespeare-char",)),
    Phase("08_pretraining", "token shards, a real training loop, checkpoint/resume, scaling laws, context length", ("gpt-base", "token-shards"), ("bpe-tokenizer",)),
    Phase("09_modern_architecture", "RoPE, RMSNorm, SwiGLU, GQA, KV cache, sliding-window attention, MLA, MoE, FlashAttention; SmolLM2 read from its GGUF file into our Llama", ("base", "smollm2"), ("bpe-tokenizer", "gpt-base", "token-shards")),
    Phase("10_evaluation", "a log-probability scorer checked item by item against lm-evaluation-harness; HellaSwag, ARC, GSM8K, HumanEval in a limited process; perplexity three ways; contamination; a leaderboard", ("eval-report",), ("gpt-char", "gpt-base", "base", "smollm2")),
    Phase("11_lora", "LoRA and DoRA from scratch equal to PEFT, merging, NF4 bit-identical to bitsandbytes, QLoRA, a real fine-tune of SmolLM2", ("adapters/",), ("base", "smollm2")),
    Phase("12_continual_learning", "forgetting, rehearsal, EWC, LoRA-per-task with a router", ("cl-model", "adapter-library"), ("smollm2", "adapters/")),
    Phase("13_alignment", "chat format with loss masks, SFT, DPO, a reward model, GRPO", ("chat", "adapters/smollm2-chat"),
          ("base", "smollm2")),
    Phase("14_tools_and_rag", "tool calls, calculator, Python sandbox, retrieval, ReAct", ("chat-tools", "rag-index"), ("chat", "smollm2", "adapter-library")),
    Phase("15_distributed_training", "memory accounting, activation checkpointing, DDP, ZeRO, FSDP, pipeline and "
          "tensor parallelism on torchrun and Accelerate", (), ("base", "token-shards")),
    Phase("16_serving", "inference engine (continuous batching, streaming, tools, adapters), int8 decoding, "
          "OpenAI-compatible server, web UI, load, /learn with LoRA", (),
          ("smollm2", "chat-tools", "adapter-library", "rag-index", "chat")),
]
BY_STEM = {p.stem: p for p in SYLLABUS}


def producer_of(artifact: str) -> str | None:
    """The notebook that saves `artifact` ('adapters/code' matches the 'adapters/' family)."""
    for p in SYLLABUS:  # an exact name first: adapters/smollm2-chat is 13's, other adapters/ are 11's
        if artifact in p.saves:
            return p.stem
    for p in SYLLABUS:
        for name in p.saves:
            if name.endswith("/") and artifact.startswith(name):
                return p.stem
    return None
