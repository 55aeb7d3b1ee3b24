"""nanolm.text.bpe and nanolm.text.corpus: round trips, plain == fast training, special-token policy,
save/load, and exact id parity with tiktoken (our export, GPT-2 and cl100k_base, offline)."""

import random

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanolm.core import data
from nanolm.text import bpe, bpe_train, corpus, pretokenize, reference

SHAKESPEARE = data.read_text("tinyshakespeare", "input.txt")
WIKI = data.read_text("wikitext2", "wiki.test.raw")
UNICODE_CODE = (
    "Grüße, naïve café! Ça va? 東京は晴れ。 Привет, мир! مرحبا 👋🏽👨‍👩‍👧 🚀🔥 ＡＢＣ ½ ⅓ ① x² \u00a0nbsp\u2003em\n"
    "def f(x: int) -> int:\n    if x > 10_000:\n\treturn x ** 2  # don't, I'LL, we've\r\n"
    "    s = '''tabs\t\tand   spaces    '''\n\n\n   \n12345678901234 3.14159 -42 $1,000,000\n"
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tok():
    """A small trained tokenizer (GPT-4 pattern, 512 ids incl. the 8 specials)."""
    return bpe_train.train(SHAKESPEARE[:20_000] + UNICODE_CODE, 512)


@pytest.fixture(scope="module")
def gpt2():
    return reference.reference_tokenizer("gpt2"), reference.reference_tiktoken("gpt2")


@pytest.fixture(scope="module")
def cl100k():
    return reference.reference_tokenizer("cl100k_base"), reference.reference_tiktoken("cl100k_base")


# ----------------------------------------------------------------------------- round trips

whitespace = st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2003\u3000", max_size=200)
emoji = st.text(alphabet="👋🏽👨‍👩‍👧🚀🔥😀🇫🇷\u200d\ufe0f", max_size=50)
mixed = st.lists(st.one_of(st.text(max_size=40), whitespace, emoji,
                           st.sampled_from(["<|endoftext|>", "'s", "'LL", "123456", "    ", "\r\n"])),
                 max_size=20).map("".join)


@FAST
@given(st.one_of(st.text(), mixed, whitespace, emoji))
def test_encode_decode_round_trip(tok, s):
    ids = tok.encode(s)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s
    assert tok.decode(tok.encode(s, allowed_special="all")) == s


@settings(max_examples=10, deadline=None)
@given(st.text(min_size=2000, max_size=6000))
def test_round_trip_long_inputs(tok, s):
    assert tok.decode(tok.encode(s)) == s


def test_round_trip_long_runs(tok):
    for s in [" " * 5000, "\n" * 3000 + "x", "9" * 4000, "a" * 3000, "ab" * 2000, "é" * 1500, "😀" * 800]:
        assert tok.decode(tok.encode(s)) == s


@FAST
@given(st.lists(st.integers(min_value=0, max_value=511), max_size=300))
def test_decode_any_valid_ids_never_raises(tok, ids):
    out = tok.decode(ids)
    assert isinstance(out, str)
    assert tok.decode_bytes(ids) == b"".join(tok.token_bytes(i) for i in ids)


def test_decode_replaces_invalid_utf8(tok):
    first_byte_of_euro = tok.byte_ids[0xE2]
    assert tok.decode([first_byte_of_euro]) == "\ufffd"


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("text", [
    "ab cd",                 # every pair seen once: a pure tie
    "aaaaaaa aaa aa",        # overlapping pairs
    "ab ab cd cd ef ef",     # ties between counts > 1
    "low lower lowest newer wider new " * 3,
    SHAKESPEARE[:3000],
    UNICODE_CODE,
])
def test_plain_and_fast_learn_the_same_merges(text):
    for pattern in ("gpt2", "gpt4"):
        assert bpe_train.train_plain(text, 60, pattern) == bpe_train.train_fast(text, 60, pattern)


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet="ab c\n", max_size=200), st.integers(1, 30))
def test_plain_and_fast_agree_on_random_small_alphabets(text, n):
    assert bpe_train.train_plain(text, n) == bpe_train.train_fast(text, n)


def test_tie_break_is_highest_count_then_smallest_bytes():
    # "ab" and "cd" each occur once: the smaller bytes (a, b) win, then (c, d).
    assert bpe_train.train_plain("cd\nab", 2) == [(97, 98), (99, 100)]
    # a higher count beats smaller bytes
    assert bpe_train.train_fast("ab\ncd\ncd", 1) == [(99, 100)]


# ----------------------------------------------------------------------------- independent references
# train_plain and train_fast share merge_pair, so comparing them with each other cannot catch a bug in it.
# Below: merges derived by hand, and a naive trainer written here from the rule alone (bytes, not ids).


def test_merges_computed_by_hand():
    # GPT-2 pattern: "hug hug pug pun bun" -> pre-tokens "hug" " hug" " pug" " pun" " bun" (leading space kept).
    # Pair counts: ug 3; hu, " p", pu, un 2; " h", " b", bu 1.
    #  1. (u, g) 3 times                                  -> 256 "ug"
    #     now h ug | _ h ug | _ p ug | _ p u n | _ b u n: (h,ug) 2, (_,p) 2, (u,n) 2 tie; b" " < b"h" < b"u"
    #  2. (" ", p)                                        -> 257 " p"
    #  3. (h, ug): b"h" < b"u"                            -> 258 "hug"
    #  4. (u, n), the only pair left counted twice        -> 259 "un"
    #     now all pairs once: (_,hug) (_,b) (" p",ug) (" p",un) (b,un); smallest left bytes b" ", then right b"b"
    #  5. (" ", b)                                        -> 260 " b"
    #  6. (" ", hug)                                      -> 261 " hug"
    #  7. (" b", un): b" b" < b" p"                       -> 262 " bun"
    #  8. (" p", ug): b"ug" < b"un"                       -> 263 " pug"
    #  9. (" p", un)                                      -> 264 " pun"; then every pre-token is one token: stop
    expected = [(117, 103), (32, 112), (104, 256), (117, 110), (32, 98), (32, 258), (260, 259), (257, 256), (257, 259)]
    # "aaaaa" (one pre-token): (a,a) merges left to right -> aa aa a; (aa,a) beats (aa,aa) as b"a" < b"aa";
    # then aa aaa -> one token.
    overlapping = [(97, 97), (256, 97), (256, 257)]
    for trainer in (bpe_train.train_plain, bpe_train.train_fast):
        assert trainer("hug hug pug pun bun", 20, "gpt2") == expected
        assert trainer("aaaaa", 20, "gpt2") == overlapping


def naive_bpe(text: str, n: int, pattern: str) -> list[tuple[int, int]]:
    """BPE from its definition, on bytes objects: count adjacent pairs, merge the most frequent (ties: smallest
    (left bytes, right bytes)) left to right, never make a token whose bytes already are one."""
    words = [[bytes([b]) for b in piece.encode("utf-8")] for piece in regex.findall(PAT[pattern], text)]
    ids = {bytes([i]): i for i in range(256)}
    merges = []
    while len(merges) < n:
        counts = {}
        for w in words:
            for a, b in zip(w, w[1:], strict=False):
                counts[a, b] = counts.get((a, b), 0) + 1
        best = min(((-c, a, b) for (a, b), c in counts.items() if a + b not in ids), default=None)
        if best is None:
            return merges
        _, a, b = best
        merges.append((ids[a], ids[b]))
        ids[a + b] = len(ids)
        new_words = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if w[i] == a and i + 1 < len(w) and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words.append(out)
        words = new_words
    return merges


def _pat_strs():
    """tiktoken's own pattern strings for GPT-2 and cl100k (its source, not ours)."""
    import tiktoken_ext.openai_public as oai

    real = oai.load_tiktoken_bpe
    oai.load_tiktoken_bpe = lambda *a, **k: {}  # cl100k_base() would download its ranks: only its pattern is needed
    try:
        return {"gpt2": oai.r50k_pat_str, "gpt4": oai.cl100k_base()["pat_str"]}
    finally:
        oai.load_tiktoken_bpe = real


PAT = _pat_strs()


def test_our_patterns_are_tiktokens():
    assert pretokenize.PATTERNS["gpt2"] == PAT["gpt2"] and pretokenize.PATTERNS["gpt4"] == PAT["gpt4"]


@pytest.mark.parametrize("text", ["hug hug pug pun bun", "abcabc bcab cabca abc", "aaaaa aaa aa a",
                                  SHAKESPEARE[:1500], UNICODE_CODE])
def test_trainers_equal_the_naive_reference(text):
    for pattern in ("gpt2", "gpt4"):
        ref = naive_bpe(text, 80, pattern)
        assert bpe_train.train_plain(text, 80, pattern) == ref
        assert bpe_train.train_fast(text, 80, pattern) == ref


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="abcé \n", max_size=150), st.integers(1, 40), st.sampled_from(["gpt2", "gpt4"]))
def test_trainers_equal_the_naive_reference_on_random_corpora(text, n, pattern):
    ref = naive_bpe(text, n, pattern)
    assert bpe_train.train_plain(text, n, pattern) == ref
    assert bpe_train.train_fast(text, n, pattern) == ref


@FAST
@given(mixed)
def test_reference_vocabularies_encode_like_tiktoken(gpt2, cl100k, s):
    for ours, ref in (gpt2, cl100k):
        assert ours.encode_ordinary(s) == ref.encode_ordinary(s)
        assert ours.encode(s, allowed_special="all") == ref.encode(s, allowed_special="all")


def test_no_two_tokens_share_bytes_and_training_is_deterministic():
    a = bpe_train.train(SHAKESPEARE[:10_000], 400)
    b = bpe_train.train([SHAKESPEARE[:5_000], SHAKESPEARE[5_000:10_000]], 400)
    assert len(set(a.vocab)) == len(a.vocab)
    assert a.merges == bpe_train.train(SHAKESPEARE[:10_000], 400).merges
    assert len(b.merges) == len(a.merges)


def test_truncated_equals_training_to_the_smaller_size(tok):
    small = bpe_train.train(SHAKESPEARE[:20_000] + UNICODE_CODE, 300)
    assert tok.truncated(300).merges == small.merges
    assert tok.truncated(300).special_tokens == small.special_tokens
    assert tok.truncated(300).vocab_size == 300


def test_special_tokens_take_the_last_ids(tok):
    assert tok.vocab_size == 512
    assert [tok.special(s) for s in bpe.SPECIAL_TOKENS] == list(range(504, 512))


# ----------------------------------------------------------------------------- special tokens


def test_special_token_text_is_ordinary_text_by_default(tok):
    s = "hi<|endoftext|>there <|user|>"
    eot = tok.special("<|endoftext|>")
    ids = tok.encode(s)
    assert eot not in ids and tok.special("<|user|>") not in ids
    assert ids == tok.encode_ordinary(s) and tok.decode(ids) == s


def test_allowed_special_policy(tok):
    s = "hi<|endoftext|>there <|user|>"
    eot, user = tok.special("<|endoftext|>"), tok.special("<|user|>")
    ids = tok.encode(s, allowed_special="all")
    assert ids.count(eot) == 1 and ids.count(user) == 1 and tok.decode(ids) == s
    only_eot = tok.encode(s, allowed_special={"<|endoftext|>"})
    assert eot in only_eot and user not in only_eot
    assert tok.encode(s, allowed_special={"<|endoftext|>"}) == tok.to_tiktoken().encode(
        s, allowed_special={"<|endoftext|>"}, disallowed_special=())
    with pytest.raises(bpe.TokenizerError, match="<|user|>"):
        tok.encode(s, allowed_special={"<|endoftext|>"}, disallowed_special="raise")
    with pytest.raises(bpe.TokenizerError, match="not special tokens"):
        tok.encode(s, allowed_special={"<|nope|>"})
    with pytest.raises(bpe.TokenizerError):
        tok.encode(s, allowed_special="some")
    assert tok.encode("plain text", disallowed_special="raise") == tok.encode("plain text")


# ----------------------------------------------------------------------------- save / load / export


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / bpe.FILENAME
    tok.save(path)
    text = path.read_text("utf-8")
    assert text.startswith(bpe.FORMAT + "\npattern gpt4\n") and "pickle" not in text
    back = bpe.Tokenizer.load(path)
    assert back.merges == tok.merges and back.special_tokens == tok.special_tokens
    assert back.vocab == tok.vocab and back.pattern == tok.pattern
    assert back.encode(UNICODE_CODE, allowed_special="all") == tok.encode(UNICODE_CODE, allowed_special="all")


@FAST
@given(mixed)
def test_tiktoken_export_gives_identical_ids(tok, s):
    enc = tok.to_tiktoken()
    assert enc.encode_ordinary(s) == tok.encode_ordinary(s)
    assert enc.encode(s, allowed_special="all") == tok.encode(s, allowed_special="all")


def test_tiktoken_export_on_real_text(tok):
    enc = tok.to_tiktoken()
    assert enc.n_vocab == tok.vocab_size
    for s in (SHAKESPEARE[-4000:], WIKI[:4000], UNICODE_CODE):
        assert enc.encode_ordinary(s) == tok.encode_ordinary(s)


def test_long_pieces_use_the_heap_path_with_the_same_result(cl100k):
    ours, ref = cl100k
    rng = random.Random(0)
    for s in [" " * 300, "\n" * 200, "a" * 500, "ab" * 300, "".join(rng.choice("ab") for _ in range(400)),
              "".join(rng.choice("xyz") for _ in range(2000))]:
        piece = s.encode()
        ids = [ours.byte_ids[b] for b in piece]
        assert len(ids) > bpe._LONG_PIECE
        assert ours._bpe_heap(list(ids)) == ref._encode_single_piece(piece) or ours._id_of.get(piece) is not None
        assert ours.encode_ordinary(s) == ref.encode_ordinary(s)


# ----------------------------------------------------------------------------- parity with GPT-2 and GPT-4


@pytest.mark.parametrize("which", ["gpt2", "cl100k"])
def test_parity_with_tiktoken_on_real_text(which, gpt2, cl100k):
    ours, ref = gpt2 if which == "gpt2" else cl100k
    assert ours.vocab_size == ref.n_vocab
    for s in (SHAKESPEARE[:3000], WIKI[10_000:13_000], UNICODE_CODE):
        ids = ours.encode_ordinary(s)
        assert ids == ref.encode_ordinary(s)
        assert ours.decode(ids) == ref.decode(ids) == s
    eot = "<|endoftext|>"
    assert ours.encode(f"a{eot}b", allowed_special="all") == ref.encode(f"a{eot}b", allowed_special="all")


def test_reference_byte_order_is_permuted(gpt2):
    ours, ref = gpt2
    assert ours.byte_ids[ord("!")] == 0 and ours.byte_ids[0] != 0  # GPT-2 puts printable bytes first
    assert ours.encode_ordinary("!") == ref.encode_ordinary("!") == [0]


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_give_clear_errors(tok):
    with pytest.raises(bpe.TokenizerError, match="unknown split pattern 'gpt5'"):
        bpe_train.train("hello", 300, pattern="gpt5")
    with pytest.raises(bpe.TokenizerError, match="below 256"):
        bpe_train.train("hello", 200)
    with pytest.raises(bpe.TokenizerError, match="not in this vocabulary"):
        tok.decode([0, 512])
    with pytest.raises(bpe.TokenizerError, match="not in this vocabulary"):
        tok.decode([-1])
    with pytest.raises(bpe.TokenizerError, match="surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(bpe.TokenizerError, match="unknown reference"):
        reference.reference_tokenizer("gpt5")


@pytest.mark.parametrize("mangle, message", [
    (lambda t: "hello\n" + t, "not a nanolm BPE tokenizer file"),
    (lambda t: t.replace("pattern gpt4", "pattern gpt5"), "unknown split pattern"),
    (lambda t: t.replace("pattern gpt4", "patern gpt4"), "line 2 should be"),
    (lambda t: "\n".join(t.splitlines()[:-20]), "truncated"),
    (lambda t: t.replace("\nmerges ", "\nmerges x", 1), "cannot parse line 12|line 12 should be"),
    (lambda t: t.replace("\n504 ", "\n504x ", 1), "cannot parse line 4"),
    (lambda t: t.rstrip("\n").rsplit("\n", 1)[0] + "\n9999 3\n", "does not exist yet"),
    (lambda t: t + "1 2\n", "unexpected text"),
])
def test_corrupt_tokenizer_file(tok, mangle, message):
    with pytest.raises(bpe.TokenizerError, match=message):
        bpe.Tokenizer.loads(mangle(tok.dumps()))


def test_load_tokenizer_missing_artifact_names_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLM_CHECKPOINTS", str(tmp_path))
    with pytest.raises(Exception, match="04_tokenization"):
        bpe.load(profile="smoke")


# ----------------------------------------------------------------------------- corpus


def test_pretraining_mix_is_deterministic_capped_and_splits_cleanly():
    mix = corpus.pretraining_mix(cap_bytes=20_000)
    assert tuple(mix) == corpus.DOMAINS
    assert mix == corpus.pretraining_mix(cap_bytes=20_000)
    for d, text in mix.items():
        assert 10_000 < len(text.encode("utf-8")) <= 20_000, d
        train, val = corpus.split(text)
        assert train + val == text and 0.03 < len(val) / len(text) < 0.08, d
    assert mix["dialogue"].startswith("A: ") and "\nB: " in mix["dialogue"]
    assert "# file: " in mix["code"]
    splits = corpus.pretraining_splits(cap_bytes=20_000)
    assert splits["train"]["arxiv"] + splits["val"]["arxiv"] == mix["arxiv"]
    with pytest.raises(ValueError, match="unknown domain"):
        corpus.documents("poetry")


def test_train_accepts_several_texts_or_counts_and_both_trainers_agree():
    parts = [SHAKESPEARE[:3000], WIKI[:3000], UNICODE_CODE]
    fast = bpe_train.train(parts, 400)
    assert bpe_train.train(parts, 400, trainer="plain").merges == fast.merges
    assert bpe_train.train(pretokenize.pretoken_counts(parts), 400).merges == fast.merges
    with pytest.raises(bpe.TokenizerError, match="plain trainer needs text"):
        bpe_train.train(pretokenize.pretoken_counts(parts), 400, trainer="plain")
    with pytest.raises(bpe.TokenizerError, match="unknown trainer"):
        bpe_train.train(parts, 400, trainer="slow")
