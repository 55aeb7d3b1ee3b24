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


@pytest.mark.parametrize("trainer", ["fast", "plain"])
def test_train_passes_its_pattern_and_specials_on(trainer):
    """GPT-2's pattern splits "123456" into one pre-token, GPT-4's into "123" "456": the merges must follow the
    pattern asked for, and the tokenizer must carry it and the special tokens asked for."""
    text = "123456 123456 It'S It'S"
    for pattern in ("gpt2", "gpt4"):
        tok = bpe_train.train(text, 256 + 12 + 1, pattern=pattern, special_tokens=("<|end|>",), trainer=trainer)
        assert tok.merges == naive_bpe(text, 12, pattern) and tok.pattern == pattern
        assert tok.special_tokens == {"<|end|>": 256 + len(tok.merges)}
    assert naive_bpe(text, 12, "gpt2") != naive_bpe(text, 12, "gpt4")


# ----------------------------------------------------------------------------- exact behaviour (mutation tests)
# A tiny vocabulary where every result can be worked out by hand, and a naive encoder from the rule alone.

TINY_MERGES = [(97, 97), (256, 97), (97, 98), (98, 97), (258, 259)]  # aa, aaa, ab, ba, abba


def naive_encode_piece(vocab: list[bytes], piece: bytes, shortcut: bool = True) -> list[int]:
    """tiktoken's rule on bytes: the whole piece if it is a token, else merge the adjacent pair whose bytes have
    the lowest id, leftmost first."""
    ids = {b: i for i, b in enumerate(vocab)}
    if shortcut and piece in ids:
        return [ids[piece]]
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while True:
        found = [(ids[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 1) if parts[i] + parts[i + 1] in ids]
        if not found:
            return [ids[p] for p in parts]
        _, i = min(found)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


@pytest.fixture(scope="module")
def tiny():
    return bpe.Tokenizer.from_merges(TINY_MERGES, "gpt4", ["<|b|>", "<|a|>"])


def test_tiny_vocabulary_ids_by_hand(tiny):
    """Catches wrong ids for merges/specials and a wrong vocab_size, special() or token_bytes()."""
    assert tiny.vocab[256:] == [b"aa", b"aaa", b"ab", b"ba", b"abba"]
    assert tiny.special_tokens == {"<|b|>": 261, "<|a|>": 262} and tiny.vocab_size == 263
    assert tiny.special("<|a|>") == 262 and tiny.token_bytes(262) == b"<|a|>"
    assert tiny.token_bytes(0) == b"\x00" and tiny.token_bytes(260) == b"abba" and tiny.token_bytes(261) == b"<|b|>"
    assert tiny.name == "nanolm-bpe" and tiny.merges == TINY_MERGES
    assert repr(tiny) == "Tokenizer('nanolm-bpe', pattern='gpt4', vocab_size=263, specials=2)"
    for bad in (-1, 263, 1000):
        with pytest.raises(bpe.TokenizerError, match=f"token id {bad} is not in this vocabulary \\(size 263\\)"):
            tiny.token_bytes(bad)
    with pytest.raises(bpe.TokenizerError, match="'<|c|>' is not a special token"):
        tiny.special("<|c|>")


def test_tiny_encoding_by_hand(tiny):
    """Catches merging the wrong pair: lowest id first, leftmost among equal ids, the whole-piece shortcut."""
    assert tiny.encode_ordinary("aaaa") == [256, 256]  # (a,a) leftmost twice: aa aa; (aa,aa) is no token
    assert tiny.encode_ordinary("aaa") == [257]  # whole piece
    assert tiny._bpe(b"aaaaa") == [256, 257]  # aa a a a -> aa aa a (256 < 257) -> aa aaa
    assert tiny.encode_ordinary("abab") == [258, 258]  # ab ab (ba in the middle has a larger id)
    assert tiny.encode_ordinary("abba") == [260]
    assert tiny.encode_ordinary("xabbay") == [120, 260, 121]
    assert tiny.encode_ordinary("b") == [98] and tiny.encode_ordinary("") == []


def test_tiny_encoding_equals_naive_reference_short_and_long(tiny):
    """Catches a wrong merge order in _bpe or the heap path (_bpe_heap), at every length around _LONG_PIECE."""
    rng = random.Random(1)
    for n in [*range(1, 70), 120, 333]:
        for _ in range(4):
            s = "".join(rng.choice("ab") for _ in range(n))
            piece = s.encode()
            assert tiny.encode_ordinary(s) == naive_encode_piece(tiny.vocab, piece), s
            no_shortcut = naive_encode_piece(tiny.vocab, piece, shortcut=False)
            assert tiny._bpe_heap([tiny.byte_ids[b] for b in piece]) == no_shortcut, s


def test_heap_path_equals_naive_reference_on_a_trained_vocabulary(tok):
    """Catches heap bookkeeping bugs (links, stale entries) on a realistic vocabulary with many merges."""
    rng = random.Random(2)
    for n in (2, 3, 5, 49, 200):
        for _ in range(10):
            piece = "".join(rng.choice("the ") for _ in range(n)).encode()
            ids = [tok.byte_ids[b] for b in piece]
            assert tok._bpe_heap(ids) == naive_encode_piece(tok.vocab, piece, shortcut=False)


def test_whole_piece_shortcut_and_permuted_ranks():
    """Catches a missing whole-piece shortcut and wrong from_ranks ids (tiktoken encodes 'abc' as one token)."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {bytes([b]): (b + 7) % 256 for b in range(256)} | {b"abc": 256}
    ours = bpe.Tokenizer.from_ranks(ranks, "gpt4", {"<|x|>": 300})
    ref = tiktoken.Encoding("t", pat_str=PAT["gpt4"], mergeable_ranks=ranks, special_tokens={"<|x|>": 300})
    for s in ("abc", "abcd", "x abc abcabc", "<|x|>abc"):
        assert ours.encode(s, allowed_special="all") == ref.encode(s, allowed_special="all"), s
    assert ours.encode_ordinary("abc") == [256] and ours.encode_ordinary("abcd") == [104, 105, 106, 107]
    assert ours.name == "ranks" and ours.vocab_size == 301 and ours.token_bytes(300) == b"<|x|>"
    enc = ours.to_tiktoken()  # specials not contiguous: no explicit_n_vocab
    assert enc is ours.to_tiktoken() and enc.name == "ranks"
    assert enc.encode("x abc<|x|>", allowed_special="all") == ref.encode("x abc<|x|>", allowed_special="all")


def test_constructor_rejects_bad_vocabularies():
    """Catches accepting duplicate bytes, missing single bytes, taken special ids or a bad rank permutation."""
    base = [bytes([i]) for i in range(256)]
    with pytest.raises(bpe.TokenizerError, match="^two token ids share the same bytes; a BPE vocabulary needs unique bytes$"):
        bpe.Tokenizer([*base, b"a"])
    with pytest.raises(bpe.TokenizerError, match="lacks 1 single bytes \\(e.g. 255\\)"):
        bpe.Tokenizer([*base[:255], b"ab"])
    with pytest.raises(bpe.TokenizerError, match="'<|x|>' has id 255"):
        bpe.Tokenizer(base, special_tokens={"<|x|>": 255})
    with pytest.raises(bpe.TokenizerError, match="already taken"):
        bpe.Tokenizer(base, special_tokens={"<|x|>": 256, "<|y|>": 256})
    ok = bpe.Tokenizer(base, special_tokens={"<|x|>": 256, "<|y|>": 258})
    assert ok.vocab_size == 259 and ok.merges is None and ok.decode([256, 97, 258]) == "<|x|>a<|y|>"
    with pytest.raises(bpe.TokenizerError, match="not a permutation of 0..1 \\(rank 2\\)"):
        bpe.Tokenizer.from_ranks({b"a": 0, b"b": 2}, "gpt4")
    with pytest.raises(bpe.TokenizerError, match="rank -1"):
        bpe.Tokenizer.from_ranks({b"a": 0, b"b": -1}, "gpt4")
    with pytest.raises(bpe.TokenizerError, match="rank 0"):
        bpe.Tokenizer.from_ranks({b"a": 0, b"b": 0}, "gpt4")


def test_from_merges_checks_each_merge_refers_to_an_existing_token():
    """Catches off-by-one bounds in from_merges: id 255 exists at the first merge, 256 and -1 do not."""
    assert bpe.Tokenizer.from_merges([(255, 0), (256, 256)], special_tokens=[]).vocab[257] == b"\xff\x00\xff\x00"
    assert bpe.Tokenizer.from_merges([(0, 255)], special_tokens=[]).vocab[256] == b"\x00\xff"
    for bad in [(256, 0), (0, 256), (-1, 0), (0, -1)]:
        with pytest.raises(bpe.TokenizerError, match=f"merge 0 \\({bad[0]}, {bad[1]}\\) refers"):
            bpe.Tokenizer.from_merges([bad])
    assert bpe.num_merges(264, 8) == 0
    with pytest.raises(bpe.TokenizerError, match="vocab_size 263 is below 256 bytes \\+ 8 special tokens"):
        bpe.num_merges(263, 8)


def test_special_token_splitting_exact(tiny):
    """Catches a wrong split around specials (ids, order, empty parts) and the longest-special-first rule."""
    assert tiny.encode("aa<|a|><|b|>ab<|a|>", allowed_special="all") == [256, 262, 261, 258, 262]
    assert tiny.encode("<|a|>", allowed_special={"<|a|>"}) == [262]
    assert tiny.encode("<|b|>aa", allowed_special={"<|a|>"}) == tiny.encode_ordinary("<|b|>") + [256]
    nested = bpe.Tokenizer.from_merges([], special_tokens=["<|e|>", "<|e|>x", "x<|e|>"])
    assert nested.encode("<|e|>x<|e|>", allowed_special="all") == [257, 256]
    with pytest.raises(bpe.TokenizerError, match="disallowed_special is 'text' or 'raise', not 'drop'"):
        tiny.encode("a", disallowed_special="drop")
    with pytest.raises(bpe.TokenizerError, match="not special tokens of this tokenizer: \\['<|c|>'\\]"):
        tiny.encode("a", allowed_special=["<|c|>", "<|a|>"])
    assert tiny.encode("<|a|><|b|>", allowed_special={"<|a|>"}, disallowed_special="text")[0] == 262
    with pytest.raises(bpe.TokenizerError, match="special token '<\\|b\\|>', which is not allowed here; pass "
                       "allowed_special=\\{'<\\|b\\|>'\\} to encode it as a special token, or "
                       "disallowed_special='text' to encode it as ordinary text$"):
        tiny.encode("<|a|><|b|>", allowed_special={"<|a|>"}, disallowed_special="raise")
    assert tiny.encode("<|a|>", allowed_special={"<|a|>"}, disallowed_special="raise") == [262]
    with pytest.raises(bpe.TokenizerError, match="^allowed_special is 'none', 'all' or a set of tokens, not 'some'$"):
        tiny.encode("a", allowed_special="some")


def test_decode_bytes_errors_name_the_bad_id(tiny):
    """Catches decode_bytes accepting bad ids, or its error path failing on iterators and non-int ids."""
    assert tiny.decode_bytes(iter([97, 262, 260])) == b"a<|a|>abba"
    assert tiny.decode_bytes((98,)) == b"b" and tiny.decode([0xE2, 0x82, 0xAC]) == "€"
    assert tiny.decode([0xE2], errors="ignore") == ""
    for ids, bad in [(iter([97, 263]), "263"), ([0, -1], "-1"), ([97, None], "None"), ((0, 900), "900")]:
        with pytest.raises(bpe.TokenizerError, match=f"token id {bad} is not in this vocabulary \\(size 263\\)"):
            tiny.decode_bytes(ids)
    no_specials = bpe.Tokenizer([bytes([i]) for i in range(256)])
    with pytest.raises(bpe.TokenizerError, match="token id 256 is not in this vocabulary \\(size 256\\)"):
        no_specials.decode_bytes([0, 256])


def test_cache_never_exceeds_its_limit(tiny, monkeypatch):
    """Catches a cache that grows without bound (the clear at the limit skipped or off by one)."""
    t = bpe.Tokenizer.from_merges(TINY_MERGES, "gpt4", [])
    monkeypatch.setattr(bpe, "_CACHE_LIMIT", 3)
    for word in ("a", "b", "c", "d", "e"):
        t.encode_ordinary(word)
        assert len(t._cache) <= 3
    assert t.encode_ordinary(" aaa") == [32, 257] and t._cache[" aaa"] == (32, 257)


def test_cache_is_used():
    """Catches a cache that is filled but never read: each distinct pre-token is merged once."""
    t = bpe.Tokenizer.from_merges(TINY_MERGES, "gpt4", [])
    calls = []
    real = t._bpe
    t._bpe = lambda piece: calls.append(piece) or real(piece)
    assert t.encode_ordinary("abab abab abab") == [258, 258, 32, 258, 258, 32, 258, 258]
    assert calls == [b"abab", b" abab"]


def test_dumps_exact_text_and_loads_round_trip():
    """Catches any change in the file format: header, specials sorted by id, ASCII-escaped JSON, merges."""
    t = bpe.Tokenizer.from_merges([(97, 98), (256, 99)], "gpt2", ["<|z|>", "<|é a|>"])
    assert t.dumps() == ('nanolm-bpe v1\npattern gpt2\nspecials 2\n258 "<|z|>"\n259 "<|\\u00e9 a|>"\n'
                         "merges 2\n97 98\n256 99\n")
    back = bpe.Tokenizer.loads(t.dumps() + "\n  \n")
    assert (back.merges, back.special_tokens, back.pattern) == (t.merges, t.special_tokens, "gpt2")
    empty = bpe.Tokenizer.loads("nanolm-bpe v1\npattern gpt4\nspecials 0\nmerges 0")
    assert empty.vocab_size == 256 and empty.merges == [] and empty.special_tokens == {}
    with pytest.raises(bpe.TokenizerError,
                       match="^only tokenizers with a merge list \\(trained or loaded\\) can be saved as text$"):
        bpe.Tokenizer(t.vocab).dumps()


@pytest.mark.parametrize("text, message", [
    ("", "not a nanolm BPE tokenizer file: the first line should be 'nanolm-bpe v1'"),
    ("nanolm-bpe v1", "truncated: expected 'pattern ...' at line 2"),
    ("nanolm-bpe v1\npattern gpt4 x", "line 2 should be 'pattern ...', not 'pattern gpt4 x'"),
    ("nanolm-bpe v1\npattern", "line 2 should be 'pattern ...', not 'pattern'"),
    ("nanolm-bpe v1\npattern gpt4\nspecials 1", "truncated: expected a special token at line 4"),
    ("nanolm-bpe v1\npattern gpt4\nspecials 0\nmerges 1", "truncated: expected a merge at line 5"),
    ("nanolm-bpe v1\npattern gpt4\nspecials 0\nmerges 1\n97", "cannot parse line 5: '97'"),
    ("nanolm-bpe v1\npattern gpt4\nspecials 0\nmerges 1\n97 98 99", "cannot parse line 5: '97 98 99'"),
    ("nanolm-bpe v1\npattern gpt4\nspecials 1\n256 <|x|>\nmerges 0", "cannot parse line 4: '256 <|x|>'"),
    ("nanolm-bpe v1\npattern gpt4\nspecials 1\n300 \"<|x|>\"\nmerges 0", "^tokenizer file: special-token ids do not follow the merges$"),
    ("nanolm-bpe v1\npattern gpt4\nspecials 1\n256\t\"<|x|>\"\nmerges 0", "cannot parse line 4"),
    ("nanolm-bpe v1\npattern gpt4\nspecials 0\nmerges 0\n\nx", "unexpected text after the last merge \\(line 5\\)"),
])
def test_loads_rejects_exact(text, message):
    """Catches loads() accepting a malformed file or failing with an error other than a clear TokenizerError."""
    with pytest.raises(bpe.TokenizerError, match=message):
        bpe.Tokenizer.loads(text)


def test_truncated_keeps_special_order_and_bounds(tiny):
    """Catches truncated() off by one at the full size, or losing the specials' id order."""
    same = tiny.truncated(263)
    assert same.merges == TINY_MERGES and same.special_tokens == tiny.special_tokens
    smaller = tiny.truncated(260)
    assert smaller.merges == TINY_MERGES[:2] and smaller.special_tokens == {"<|b|>": 258, "<|a|>": 259}
    with pytest.raises(bpe.TokenizerError, match="only 5 merges; cannot grow to 264"):
        tiny.truncated(264)
    with pytest.raises(bpe.TokenizerError, match="^truncated\\(\\) needs a tokenizer with a merge list \\(trained or loaded\\)$"):
        bpe.Tokenizer(tiny.vocab).truncated(256)


def test_load_reads_utf8_whatever_the_locale(tiny, tmp_path, monkeypatch):
    """Catches Tokenizer.load reading the file in the locale's encoding (not always UTF-8) instead of UTF-8."""
    import codecs
    import pathlib

    asked, real = [], pathlib.Path.read_text

    def spy(self, encoding=None, errors=None):
        asked.append(encoding)
        return real(self, encoding=encoding, errors=errors)

    tiny.save(tmp_path / "t.bpe")
    monkeypatch.setattr(pathlib.Path, "read_text", spy)
    assert bpe.Tokenizer.load(tmp_path / "t.bpe").merges == TINY_MERGES
    assert len(asked) == 1 and asked[0] is not None and codecs.lookup(asked[0]).name == "utf-8"


def test_tokenizer_artifact_round_trip(tiny, tmp_path):
    """Catches a wrong artifact config or name in bpe.save/bpe.load."""
    art = bpe.save("tiny-tok", tiny, notebook="04_tokenization", profile="smoke", config={"extra": 1},
                   metrics={"m": 2.0}, root=tmp_path)
    assert art.config == {"vocab_size": 263, "pattern": "gpt4", "special_tokens": {"<|b|>": 261, "<|a|>": 262},
                          "extra": 1}
    assert art.metrics == {"m": 2.0} and art.text(bpe.FILENAME) == tiny.dumps()
    assert art.manifest["notebook"] == "04_tokenization"
    back = bpe.load("tiny-tok", profile="smoke", root=tmp_path)
    assert back.name == "tiny-tok-smoke" and back.merges == TINY_MERGES and back.special_tokens == tiny.special_tokens
    with pytest.raises(bpe.TokenizerError, match="^only a tokenizer with a merge list \\(trained or loaded\\) can be saved$"):
        bpe.save("x", bpe.Tokenizer(tiny.vocab), notebook="04_tokenization", profile="smoke", root=tmp_path)
