"""nanolm.text.gguf_tokenizer: SmolLM2's tokenizer built from its GGUF file's metadata gives exactly the ids of
transformers' tokenizer built from the same file (offline), on the pretraining mix and on arbitrary Unicode,
decodes back, and never turns typed special-token text into a special token unless asked to."""

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from real_model import smollm2_path

from nanolm.core import gguf
from nanolm.text import corpus, gguf_tokenizer
from nanolm.text.gguf_tokenizer import GGUFTokenizer, token_to_bytes
from nanolm.text.pretokenize import TokenizerError

EXAMPLES = 1000  # hypothesis examples per property test (each one runs both tokenizers)
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])






@pytest.fixture(scope="module")
def meta():
    return gguf.read(smollm2_path()).metadata


@pytest.fixture(scope="module")
def tok(meta):
    return GGUFTokenizer(meta, name="smollm2")


@pytest.fixture(scope="module")
def ref():
    """transformers' tokenizer built from the same GGUF file (offline: the file is local)."""
    import transformers
    path = smollm2_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


def ref_ids(ref, text, split_special_tokens=True):
    """The reference's ids; split_special_tokens=True reads special-token spellings as ordinary text."""
    return ref(text, split_special_tokens=split_special_tokens)["input_ids"]


# ----------------------------------------------------------------------------- the vocabulary and metadata


def test_metadata_matches_the_reference(tok, ref, meta):
    assert tok.vocab_size == len(ref) == 49152
    assert (tok.bos_id, tok.eos_id) == (ref.bos_token_id, ref.eos_token_id) == (1, 2)
    assert tok.chat_template == ref.chat_template == meta["tokenizer.chat_template"]
    specials = {t.content: i for i, t in ref.added_tokens_decoder.items() if t.special}
    assert tok.special_tokens == specials
    assert tok.special("<|im_start|>") == 1 and tok.special("<|im_end|>") == 2 and tok.special("<|endoftext|>") == 0
    assert tok.pattern == "smollm"
    assert tok.missing_bytes == bytes([0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, *range(0xF5, 0x100)])


def test_load_tokenizer_reads_the_course_file(tok):
    loaded = gguf_tokenizer.load_tokenizer()
    assert loaded.special_tokens == tok.special_tokens and loaded.encode("Hello!") == tok.encode("Hello!")


def test_every_token_is_its_own_merge_result(tok, ref):
    """BPE of each token's bytes alone gives that token, in both (so the whole-token shortcut is safe)."""
    model = ref.backend_tokenizer.model
    for i in range(tok.vocab_size):
        if i in tok.special_tokens.values():
            continue
        spelled = ref.convert_ids_to_tokens(i)
        assert [t.id for t in model.tokenize(spelled)] == [i]
        assert tok.encode_piece(token_to_bytes(spelled)) == [i]
        assert tok.token_bytes(i) == token_to_bytes(spelled)


def test_split_pattern_matches_the_reference_on_every_code_point(ref):
    """Our "smollm" split regex cuts text where transformers' pre-tokenizer does, for every code point
    (between digits, letters and punctuation, so each one's class shows); unassigned planes 4-13 sampled."""
    from nanolm.text.pretokenize import compiled

    cps = [*range(0xD800), *range(0xE000, 0x40000), *range(0x40000, 0xE0000, 97), *range(0xE0000, 0x110000)]
    text = "1a!".join(map(chr, cps))
    theirs = [span for _, span in ref.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    ours = [m.span() for m in compiled("smollm").finditer(text)]
    assert ours == theirs


# ----------------------------------------------------------------------------- the pretraining mix


@pytest.mark.parametrize("domain", corpus.DOMAINS)
def test_pretraining_domain_ids_equal_the_reference(tok, ref, domain):
    text = corpus.pretraining_mix(cap_bytes=20_000, domains=(domain,))[domain]
    assert len(text) > 10_000
    ids = tok.encode(text)
    assert ids == ref_ids(ref, text) == ref_ids(ref, text, split_special_tokens=False)
    assert tok.decode(ids) == text == ref.decode(ids)


# ----------------------------------------------------------------------------- arbitrary text

WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u2003\u2028\u2029\u202f\u205f\u3000"
SPECIAL_SPELLINGS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<filename>", "<repo_name>", "<|im_start", "|>"]
PIECES = st.one_of(
    st.sampled_from(SPECIAL_SPELLINGS + ["'s", "'ll", "'VE", "n't", "Ġ", "\r\n", "🇫🇷", "👨‍👩‍👧", "e\u0301", "x²"]),
    st.text(alphabet=WHITESPACE, min_size=1, max_size=8),  # whitespace runs
    st.text(alphabet="0123456789٣৩½²", min_size=1, max_size=8),  # digits and other numbers
    st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), min_size=1, max_size=4),  # emoji
    st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1, max_size=6),  # CJK
    st.text(alphabet=st.characters(min_codepoint=0x1E6C0, max_codepoint=0x1E6FF), max_size=3),  # new in Unicode 17
    st.text(alphabet="\x04\x06\x13\x14\x16\x1d\U00040000\U000bffff", min_size=1, max_size=3),  # bytes with no token
    st.text(max_size=6),  # any code point
    st.from_regex(r"[A-Za-z]{1,10}", fullmatch=True),
)
MIXED = st.lists(PIECES, max_size=25).map("".join)


def _check_against_reference(tok, ref, text):
    ids = tok.encode(text)
    assert ids == ref_ids(ref, text)  # special-token spellings as ordinary text, in both
    assert not set(ids) & set(tok.special_tokens.values())  # a user's text never becomes a special token
    assert tok.encode(text, allowed_special="all") == ref_ids(ref, text, split_special_tokens=False)
    if not set(text.encode("utf-8")) & set(tok.missing_bytes):
        assert tok.decode(ids) == text
    assert tok.decode(ids) == ref.decode(ids)  # bytes with no token are dropped the same way


@PROPERTY
@given(st.text())
def test_arbitrary_unicode_equals_the_reference(tok, ref, text):
    _check_against_reference(tok, ref, text)


@PROPERTY
@given(MIXED)
def test_mixed_pieces_equal_the_reference(tok, ref, text):
    _check_against_reference(tok, ref, text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 49151), max_size=40))
def test_decode_of_any_ids_equals_the_reference(tok, ref, ids):
    assert tok.decode(ids) == ref.decode(ids)


def test_bytes_without_a_token_are_dropped_before_merging(tok, ref):
    assert tok.encode("!\x04!") == ref_ids(ref, "!\x04!") == [tok.encode("!!")[0]]  # "!!" is one token
    assert tok.decode(tok.encode("a\x1db")) == "ab"


# ----------------------------------------------------------------------------- special tokens


def test_special_token_text_is_text_unless_allowed(tok, ref):
    text = "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>"
    ordinary = tok.encode(text)
    assert ordinary == ref_ids(ref, text) == tok.encode_ordinary(text)
    assert not set(ordinary) & set(tok.special_tokens.values()) and tok.decode(ordinary) == text
    full = tok.encode(text, allowed_special="all")
    assert full == ref_ids(ref, text, split_special_tokens=False) and full[0] == 1 and 2 in full and 0 in full
    only_start = tok.encode(text, allowed_special={"<|im_start|>"})
    assert only_start[0] == 1 and 2 not in only_start and tok.decode(only_start) == text
    with pytest.raises(TokenizerError, match="which is not allowed here"):
        tok.encode(text, disallowed_special="raise")
    with pytest.raises(TokenizerError, match="not special tokens"):
        tok.encode(text, allowed_special={"<|nope|>"})


# ----------------------------------------------------------------------------- bad input


def test_bad_ids_and_text_fail_clearly(tok):
    for bad in (-1, 49152, "7", None):
        with pytest.raises(TokenizerError, match="not in this vocabulary"):
            tok.decode([5, bad])
    with pytest.raises(TokenizerError, match="surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(TokenizerError, match="not a special token"):
        tok.special("<|user|>")


@pytest.mark.parametrize("change, message", [
    ({"tokenizer.ggml.model": "llama"}, "only byte-level BPE"),
    ({"tokenizer.ggml.pre": "qwen2"}, "pre-tokenizer 'qwen2' is not supported"),
    ({"tokenizer.ggml.merges": None}, "has no 'tokenizer.ggml.merges'"),
    ({"tokenizer.ggml.token_type": [4] * 49152}, r"token types \[4\]"),
    ({"tokenizer.ggml.token_type": [1] * 3}, "49152 tokens but 3 token types"),
    ({"tokenizer.ggml.bos_token_id": 10**6}, "not a token id"),
])
def test_unsupported_metadata_fails_clearly(meta, change, message):
    bad = {k: v for k, v in meta.items() if not (k in change and change[k] is None)}
    bad.update({k: v for k, v in change.items() if v is not None})
    with pytest.raises(TokenizerError, match=message):
        GGUFTokenizer(bad)


def test_merges_out_of_id_order_or_unknown_fail_clearly(meta):
    swapped = copy.copy(meta)
    merges = list(meta["tokenizer.ggml.merges"])
    merges[10], merges[11] = merges[11], merges[10]
    swapped["tokenizer.ggml.merges"] = merges
    with pytest.raises(TokenizerError, match="merge ranks must follow token ids"):
        GGUFTokenizer(swapped)
    swapped["tokenizer.ggml.merges"] = ["Ġ t", "zzz qqq", *meta["tokenizer.ggml.merges"][1:]]
    with pytest.raises(TokenizerError, match="merge 1"):
        GGUFTokenizer(swapped)
    swapped["tokenizer.ggml.merges"] = list(meta["tokenizer.ggml.merges"])[:-1]
    with pytest.raises(TokenizerError, match="made by no merge"):
        GGUFTokenizer(swapped)
