"""Reference vocabularies: GPT-2's and GPT-4's (cl100k_base), read offline from data/ (never downloaded here).

They load into our `Tokenizer` (the parity tests and notebook 04 compare its ids with tiktoken's) and
into tiktoken itself, built from the same files.
"""

from __future__ import annotations

from ..core import data
from .bpe import Tokenizer
from .pretokenize import PATTERNS, TokenizerError

# GPT-2 and GPT-4 vocabularies from data/ (never downloaded here): name -> (dataset, pattern, specials).
_REFERENCES = {
    "gpt2": ("gpt2_bpe", "gpt2", {"<|endoftext|>": 50256}),
    "cl100k_base": ("cl100k", "gpt4", {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                                       "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                                       "<|endofprompt|>": 100276}),
}


def reference_ranks(name: str) -> dict[bytes, int]:
    """Mergeable ranks of 'gpt2' or 'cl100k_base', read offline from data/ with tiktoken.load."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe

    if name not in _REFERENCES:
        raise TokenizerError(f"unknown reference tokenizer {name!r}; known: {', '.join(_REFERENCES)}")
    dataset = _REFERENCES[name][0]
    files = data.registry()[dataset]["files"]
    if name == "gpt2":
        return data_gym_to_mergeable_bpe_ranks(
            str(data.path(dataset, "vocab.bpe")), str(data.path(dataset, "encoder.json")),
            vocab_bpe_hash=files["vocab.bpe"]["sha256"], encoder_json_hash=files["encoder.json"]["sha256"],
        )
    return load_tiktoken_bpe(str(data.path(dataset, "cl100k_base.tiktoken")),
                             expected_hash=files["cl100k_base.tiktoken"]["sha256"])


def reference_tiktoken(name: str):
    """tiktoken's own 'gpt2' or 'cl100k_base' Encoding, built offline from the files in data/."""
    import tiktoken

    _, pattern, specials = _REFERENCES.get(name, (None, None, None))
    ranks = reference_ranks(name)
    return tiktoken.Encoding(name, pat_str=PATTERNS[pattern], mergeable_ranks=ranks,
                             special_tokens=dict(specials))


def reference_tokenizer(name: str) -> Tokenizer:
    """Our Tokenizer holding the 'gpt2' or 'cl100k_base' vocabulary (bytes permuted as theirs are)."""
    ranks = reference_ranks(name)
    _, pattern, specials = _REFERENCES[name]
    return Tokenizer.from_ranks(ranks, pattern, specials, name=name)
