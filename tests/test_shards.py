"""nanolm.text.shards: encoding round trip, the held-out split, uint16 refusal, the artifact, and the loaders."""

import json

import numpy as np
import pytest
import torch

from nanolm.core import artifacts
from nanolm.text import bpe, bpe_train, corpus, shards

EOT = shards.EOT
TEXT = (
    "Once upon a time there was a little robot. It liked to count: 1, 2, 3!\n\n"
    "def add(a, b):\n    return a + b\n\n"
    "A: hi, how are you?\nB: fine, thanks. And you?\n"
    "Ünïcödé, 中文 and emoji 🙂 are bytes too.\n"
) * 20


@pytest.fixture(scope="module")
def tok():
    return bpe_train.train(TEXT, 320)


def test_split_documents_is_corpus_split_at_document_level():
    docs = [f"doc {i}\n" + "word " * (i % 13 + 1) + "\n\nsecond paragraph" for i in range(200)]
    for frac in (0.05, 0.2):
        train, val = shards.split_documents(docs, frac)
        train_text, val_text = corpus.split(corpus.DOC_SEP.join(docs), frac)
        assert corpus.DOC_SEP.join(train).rstrip() == train_text.rstrip()
        assert corpus.DOC_SEP.join(val).strip() == val_text.strip()
        assert 0 < len(val) < len(docs) and len(train) + len(val) in (len(docs), len(docs) + 1)
    one = ["line\n" * 1000]  # a single document (like Shakespeare) is cut in two
    train, val = shards.split_documents(one, 0.05)
    assert len(train) == len(val) == 1 and train[0] + val[0] == one[0]


def test_encoding_round_trip_and_separators(tok):
    docs = [TEXT[:300], "a literal <|endoftext|> inside a document stays text", "", TEXT[500:900]]
    ids = shards.encode_documents(tok, docs)
    assert ids.dtype == np.dtype("<u2")
    assert tok.decode(ids.tolist()) == EOT.join(docs)
    assert int((ids == tok.special(EOT)).sum()) == len(docs) - 1  # only the separators are the EOT id


def test_build_encodes_the_real_mix(tok):
    built = shards.build(tok, cap_bytes=20_000, domains=("shakespeare", "arxiv"))
    for d, parts in built.items():
        train_docs, val_docs = shards.split_documents(corpus.documents(d, 20_000))
        assert tok.decode(parts["train"].tolist()) == EOT.join(train_docs)
        assert tok.decode(parts["val"].tolist()) == EOT.join(val_docs)
        assert 0.02 < parts["val"].size / (parts["train"].size + parts["val"].size) < 0.1


def test_uint16_overflow_is_refused():
    assert shards.to_uint16([0, 65535]).tolist() == [0, 65535]
    with pytest.raises(shards.ShardError, match="65536 does not fit"):
        shards.to_uint16([1, 65536])
    with pytest.raises(shards.ShardError, match="does not fit"):
        shards.to_uint16([-1])
    big = bpe.Tokenizer([bytes([i]) for i in range(256)], special_tokens={EOT: 70_000})
    assert big.vocab_size == 70_001
    with pytest.raises(shards.ShardError, match="vocab_size 70001 does not fit into uint16"):
        shards.encode_documents(big, ["hello"])
    ok = bpe.Tokenizer([bytes([i]) for i in range(256)], special_tokens={EOT: 65_535})
    assert shards.encode_documents(ok, ["a", "b"]).tolist() == [97, 65535, 98]


def _save_small(tok, profile="smoke"):
    built = {"two": {"train": shards.encode_documents(tok, [TEXT[2000:3000]]),
                     "val": shards.encode_documents(tok, [TEXT[3000:3300]])},
             "one": {"train": shards.encode_documents(tok, [TEXT[:600], TEXT[600:1500]]),
                     "val": shards.encode_documents(tok, [TEXT[1500:1800]])}}
    shards.save(shards.ARTIFACT, built, tok, notebook="08_pretraining", profile=profile, config={"note": "test"})
    return built


def test_save_load_memmaps_read_only(tok):
    built = _save_small(tok)
    loaded = shards.load(profile="smoke", tokenizer=tok)
    assert loaded.domains == ["two", "one"]  # the order they were saved in, not sorted
    assert loaded.eot_id == tok.special(EOT)
    for d in built:
        for split in shards.SPLITS:
            arr = getattr(loaded, split)[d]
            assert isinstance(arr, np.memmap) and not arr.flags.writeable
            np.testing.assert_array_equal(arr, built[d][split])
    assert loaded.tokens("val") == {d: built[d]["val"].size for d in built}
    assert loaded.artifact.config["tokenizer"]["sha256"] == shards.tokenizer_identity(tok)["sha256"]
    other = bpe_train.train(TEXT, 300)
    with pytest.raises(shards.ShardError, match="another tokenizer"):
        loaded.check_tokenizer(other)


def test_tampered_shard_is_refused(tok):
    _save_small(tok)
    path = artifacts.artifact_dir(shards.ARTIFACT, "smoke") / shards.filename("one", "train")
    raw = bytearray(path.read_bytes())
    raw[10] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(artifacts.ArtifactError, match="sha256 differs"):
        shards.load(profile="smoke")


def test_shards_are_read_once_through_their_memmap(tok, monkeypatch):
    """The shard files are hashed through the memmap that serves them, never read into memory on top."""
    from pathlib import Path

    built = _save_small(tok)
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: pytest.fail(f"{p.name} was read into memory")
                        if p.suffix == ".bin" else real(p))
    loaded = shards.load(profile="smoke")
    np.testing.assert_array_equal(loaded.train["one"], built["one"]["train"])
    assert all(f.endswith(".bin") or f == shards.INDEX for f in loaded.artifact.files())
    assert not any(f.endswith(".bin") for f in loaded.artifact._blobs), "no shard bytes are held"


def test_shard_of_the_wrong_size_is_refused(tok):
    _save_small(tok)
    path = artifacts.artifact_dir(shards.ARTIFACT, "smoke") / shards.filename("two", "val")
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(artifacts.ArtifactError, match="sha256 differs"):
        shards.load(profile="smoke")


def _position_coded(start, n=20_000, eot=65_535, seed=0):
    """Tokens start, start+1, ... with EOT separators sprinkled in: a token reveals where a window began."""
    rng = np.random.default_rng(seed)
    arr = np.arange(start, start + n, dtype=np.uint16)
    arr[np.cumsum(rng.integers(5, 200, size=n // 5))[: n // 300]] = eot
    return arr


def _locate(arrs, row):
    """(domain, offset) of a window, from its first token that is not an EOT."""
    k = 0 if row[0] != 65_535 else 1
    for d, a in arrs.items():
        if a[0] <= row[k] < a[0] + a.size:
            return d, int(row[k] - a[0]) - k
    raise AssertionError(f"row {row[:3]} is from no array")


def test_windows_are_slices_and_y_is_x_shifted():
    arrs = {"a": _position_coded(0, seed=1), "b": _position_coded(30_000, seed=2)}
    src = shards.RandomWindows(arrs, batch_size=16, block_size=32, seed=3)
    for i in range(5):
        x, y = src.next_batch()
        assert x.shape == y.shape == (16, 32) and x.dtype == y.dtype == torch.int64
        torch.testing.assert_close(x[:, 1:], y[:, :-1], rtol=0, atol=0)
        found = []
        for row in torch.cat([x, y[:, -1:]], 1).numpy():
            d, off = _locate(arrs, row)
            np.testing.assert_array_equal(arrs[d][off:off + 33], row)
            found.append(d)
        assert found == src.domains_at(i)


def test_bos_aligned_windows_start_right_after_an_eot():
    eot = 65_535
    arrs = {"a": _position_coded(0, seed=1), "b": _position_coded(30_000, seed=2)}
    src = shards.RandomWindows(arrs, batch_size=64, block_size=16, seed=0, bos_aligned=True, eot_id=eot)
    starts = set()
    for _ in range(10):
        x, y = src.next_batch()
        for row in torch.cat([x, y[:, -1:]], 1).numpy():
            d, off = _locate(arrs, row)
            assert row[0] != eot and (off == 0 or arrs[d][off - 1] == eot)
            np.testing.assert_array_equal(arrs[d][off:off + 17], row)
            starts.add((d, off))
    assert len(starts) > 50 and {d for d, _ in starts} == {"a", "b"}  # many documents of both domains
    with pytest.raises(ValueError, match="eot_id"):
        shards.RandomWindows(arrs, 4, 16, bos_aligned=True)


def test_determinism_weights_and_exact_resume():
    arrs = {"a": np.arange(5_000, dtype=np.uint16), "b": np.arange(10_000, 30_000, dtype=np.uint16)}
    one = shards.RandomWindows(arrs, 8, 24, seed=7)
    two = shards.RandomWindows(arrs, 8, 24, seed=7)
    other = shards.RandomWindows(arrs, 8, 24, seed=8)
    batches = [one.next_batch()[0] for _ in range(6)]
    assert all(torch.equal(b, two.next_batch()[0]) for b in batches)
    assert not torch.equal(batches[0], other.next_batch()[0])
    # resume: a fresh loader given the (JSON round-tripped) state continues with identical batches
    state = json.loads(json.dumps(one.state_dict()))
    ahead = [one.next_batch() for _ in range(4)]
    fresh = shards.RandomWindows(arrs, 8, 24, seed=0)
    fresh.load_state_dict(state)
    for x, y in ahead:
        fx, fy = fresh.next_batch()
        assert torch.equal(fx, x) and torch.equal(fy, y)
    with pytest.raises(ValueError, match="block_size"):
        shards.RandomWindows(arrs, 8, 32).load_state_dict(state)
    # domains are drawn in proportion to tokens by default, or by the given weights
    from_b = np.mean([(one.next_batch()[0][:, 0] >= 10_000).float().mean().item() for _ in range(200)])
    assert abs(from_b - 0.8) < 0.05  # b holds 20k of 25k tokens
    only_a = shards.RandomWindows(arrs, 8, 24, weights={"a": 1.0, "b": 0.0})
    assert all((only_a.next_batch()[0] < 5_000).all() for _ in range(20))
    with pytest.raises(ValueError, match="unknown domains"):
        shards.RandomWindows(arrs, 8, 24, weights={"c": 1.0})


def test_fixed_windows_are_deterministic_and_disjoint():
    arr = np.arange(10_000, dtype=np.uint16)
    val = shards.FixedWindows(arr, batch_size=4, block_size=50, max_batches=10)
    assert len(val) == 10 and val.tokens_per_pass == 4 * 50 * 10
    first = [val.next_batch() for _ in range(len(val))]
    second = [val.next_batch() for _ in range(len(val))]  # wraps around: the very same pass again
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))
    starts = torch.cat([x[:, 0] for x, _ in first]).numpy()
    assert (np.diff(starts) >= 50).all() and starts[-1] > 9_000  # non-overlapping, spread over the shard
    val.next_batch()
    state = val.state_dict()
    nxt = val.next_batch()
    val.load_state_dict(state)
    assert torch.equal(val.next_batch()[0], nxt[0])
    with pytest.raises(ValueError, match="fewer than"):
        shards.FixedWindows(arr[:100], batch_size=4, block_size=50)
